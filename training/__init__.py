"""How the embedded guard's trained heads were made: trainers and their corpora, outside the package.

`GuardReward` (stars_guard/adapters/guard_reward.py) runs on the heads these write
(`adapters/request_harm_head.json`, `adapters/response_harm_head.json`), each of which records its
training data, the command that made it and, for the request-harm head, the floor its veto was
calibrated at. Nothing here is imported at run time and none of it ships in the wheel; run the
trainers from a checkout with the `[local,bench]` extras:

    python -m training.harm_gate train          # the request-harm gate
    python -m training.response_harm train --hh PATH
    python benchmarks/calibrate_harm_veto.py     # the answering veto's floor, written into the head
"""
