"""The evaluation harness (`stars-guard bench`): STARS against vanilla, Best-of-N and CARDS.

Every method runs on the same backend, reward, prompts, seeds and `max_new_tokens`; answers are
scored by the steering reward and by an independent Bradley-Terry judge that no method optimises.
"""
