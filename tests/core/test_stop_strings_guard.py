"""A client's stop strings cut the model's text only: never the refusal, never silently.

An adversarial pass sent `stop: ["I can", "I'm", "I am", "Sorry"]` with harmful requests: two
answers came back empty with `finish_reason: stop` and `refused: false`, as if nothing had
happened (the model's own decline was cut to nothing). The refusal message itself must survive any
stop list, a refused answer must say so whatever `stop` is, and a stop string that cuts an answer
to nothing must be counted and named in the statistics.
"""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from stars_guard import STARSConfig, STARSEngine
from stars_guard.serving.app import create_app
from tests.doubles import EOS, KeywordReward, ScriptedBackend, ScriptedReward
from tests.serving.doubles import streamed_answer

REFUSAL = "I'm sorry, but I can't help with that."
REFUSAL_WORDS = ["I can", "I'm", "I am", "Sorry", "sorry", "help", "that."]
CONFIG = STARSConfig(
    max_new_tokens=32,
    segment_size=16,
    refusal_message=REFUSAL,
    threshold_mode="absolute",
    reward_threshold=0.5,
    alpha=1.0,
    safety_floor=0.5,
)


def test_stop_strings_never_cut_the_refusal_message() -> None:
    backend = ScriptedBackend([], then=["BAD step one "])
    result = STARSEngine(backend, KeywordReward("BAD"), CONFIG).run("q", stop=REFUSAL_WORDS)
    assert result.text == REFUSAL and result.finish_reason == "refusal"
    assert result.stats.refused and result.stats.refusal_reason == "veto"
    assert result.stats.ended_by == "refusal" and result.stats.stop_string_cuts == 0


def test_after_accepted_text_the_refusal_still_ends_the_answer_whole() -> None:
    backend = ScriptedBackend([["Fine so far. "]], then=["BAD more "])
    result = STARSEngine(backend, KeywordReward("BAD"), CONFIG).run("q", stop=REFUSAL_WORDS)
    assert result.text == "Fine so far. " + REFUSAL and result.stats.refused


def test_a_stop_string_that_cuts_the_answer_to_nothing_is_counted_and_named() -> None:
    backend = ScriptedBackend([["I'm not going to write that." + EOS]])
    result = STARSEngine(backend, ScriptedReward(lambda text: 1.0), CONFIG).run("q", stop=["I'm"])
    assert result.text == "" and result.finish_reason == "stop" and not result.stats.refused
    assert result.stats.stop_string_cuts == 1 and result.stats.stop_cut_to_empty == 1
    assert result.stats.ended_by == "stop_string"


def test_ended_by_tells_eos_from_a_stop_string_and_the_token_budget() -> None:
    def run(rounds: list[list[str]], **kwargs: Any) -> Any:
        return STARSEngine(ScriptedBackend(rounds), ScriptedReward(lambda text: 1.0), CONFIG).run("q", **kwargs)

    eos = run([["Done." + EOS]])
    assert (eos.text, eos.stats.ended_by, eos.stats.stop_string_cuts) == ("Done.", "eos", 0)
    cut = run([["Done. STOP here"]], stop=["STOP"])
    assert (cut.text, cut.stats.ended_by, cut.stats.stop_cut_to_empty) == ("Done. ", "stop_string", 0)
    long = run([["a" * 16], ["b" * 16]])
    assert long.finish_reason == "length" and long.stats.ended_by == "max_new_tokens"


def test_the_service_answers_content_filter_with_the_whole_refusal_whatever_stop_says() -> None:
    app = create_app(ScriptedBackend([], then=["BAD step one "]), KeywordReward("BAD"), CONFIG)
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": REFUSAL_WORDS[:4]}
    with TestClient(app) as client:
        answer = client.post("/v1/chat/completions", json=body).json()
        choice = answer["choices"][0]
        assert choice["message"]["content"] == REFUSAL and choice["finish_reason"] == "content_filter"
        assert answer["stars"]["refused"] is True and answer["stars"]["ended_by"] == "refusal"
        stream = client.post("/v1/chat/completions", json={**body, "stream": True}).text
    assert streamed_answer(stream) == (REFUSAL, "content_filter")
