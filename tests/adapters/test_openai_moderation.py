"""`openai-moderation:URL`: the OpenAI moderation API as a veto scorer, against a contract server.

There is no internet here: the server below follows OpenAI's published API reference for
`POST /v1/moderations` (request `{model, input: string | [string]}`; answer `{id, model, results:
[{flagged, categories, category_scores, category_applied_input_types}]}`, one result per input in
order; errors `{"error": {message, type, param, code}}` with 400, 401 and 429), and scores texts by
keywords so a test knows what each text gets.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters._http import RetryPolicy
from stars_guard.adapters.composite_reward import CompositeReward
from stars_guard.adapters.openai_moderation_reward import OMNI_CATEGORIES, OpenAIModerationReward
from stars_guard.capabilities import reward_capabilities
from stars_guard.engine import resolve_safety_floor
from stars_guard.errors import RewardError
from stars_guard.specs import build_reward
from tests.doubles.backends import EOS, ScriptedBackend
from tests.doubles.rewards import ScriptedReward
from tests.loopback import ThreadedServer

API_KEY = "sk-test-moderation"
LEGACY_CATEGORIES = tuple(c for c in OMNI_CATEGORIES if not c.startswith("illicit"))
MODELS = {
    "omni-moderation-latest": OMNI_CATEGORIES,
    "omni-moderation-2024-09-26": OMNI_CATEGORIES,
    "text-moderation-latest": LEGACY_CATEGORIES,
}
KEYWORDS = {"kill": ("violence", 0.92), "idiot": ("harassment", 0.81), "steal": ("illicit", 0.45)}
FLAG_AT = {"illicit": 0.4}  # per-category thresholds of the server's own `flagged` (0.5 elsewhere)


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def moderation_app(*, rate_limit_first: int = 0) -> Starlette:
    """The contract server; its first `rate_limit_first` calls answer 429 with Retry-After."""
    counter = itertools.count()
    requests: list[dict[str, Any]] = []

    async def moderations(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if next(counter) < rate_limit_first:
            return JSONResponse(
                {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": None}},
                429,
                {"Retry-After": "0"},
            )
        body = await request.json()
        requests.append(body)
        model = body.get("model", "omni-moderation-latest")
        if model not in MODELS:
            return _error(404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            return _error(
                400, "'input' must be a string or an array of strings", "invalid_request_error", None, "input"
            )
        results = []
        for text in inputs:
            scores = dict.fromkeys(MODELS[model], 0.0001)
            for word, (category, score) in KEYWORDS.items():
                if word in text.lower() and category in scores:
                    scores[category] = score
            flags = {name: score > FLAG_AT.get(name, 0.5) for name, score in scores.items()}
            results.append(
                {
                    "flagged": any(flags.values()),
                    "categories": flags,
                    "category_scores": scores,
                    "category_applied_input_types": {name: ["text"] for name in scores},
                }
            )
        return JSONResponse({"id": "modr-0001", "model": f"{model}-contract", "results": results})

    app = Starlette(routes=[Route("/v1/moderations", moderations, methods=["POST"])])
    app.state.requests = requests
    return app


@pytest.fixture
def server() -> Any:
    with ThreadedServer(moderation_app()) as running:
        yield running


def reward(url: str, **kwargs: Any) -> OpenAIModerationReward:
    return OpenAIModerationReward(url, api_key=API_KEY, **kwargs)


TEXTS = ["Water the plants.", "You idiot.", "I will kill you, idiot.", "How to steal a bike."]


def test_safety_is_one_minus_the_highest_category_score_in_one_request(server: Any) -> None:
    scores = reward(server.url + "/v1").score_components("a question", TEXTS)
    assert scores.reward == pytest.approx([0.9999, 0.19, 0.08, 0.55])
    assert scores.components["safety"] == scores.reward
    # OpenAI's own flag: the theft text is under 0.5 but over the server's illicit threshold.
    assert scores.components["not_flagged"] == [1.0, 0.0, 0.0, 0.0]
    (sent,) = server.server.config.app.state.requests
    assert sent == {"model": "omni-moderation-latest", "input": TEXTS}


def test_per_category_components_and_the_declared_vetoes(server: Any) -> None:
    scorer = reward(server.url, per_category=True)
    capabilities = reward_capabilities(scorer)
    assert capabilities.safety_floor == 0.5 and dict(capabilities.vetoes) == {"not_flagged": 0.5}
    assert resolve_safety_floor(STARSConfig(), scorer) == 0.5
    scores = scorer.score_components("q", TEXTS[2:3])
    assert scores.components["unsafe:violence"] == [0.92] and scores.components["unsafe:harassment"] == [0.81]
    assert set(scores.components) == set(capabilities.components)


def test_several_requests_share_calls_and_keep_their_order(server: Any) -> None:
    scorer = reward(server.url, max_batch_size=3)
    results = scorer.score_many([("q1", TEXTS[:1]), ("q2", TEXTS[1:])])
    assert [r.reward for r in results] == [pytest.approx([0.9999]), pytest.approx([0.19, 0.08, 0.55])]
    assert [len(sent["input"]) for sent in server.server.config.app.state.requests] == [3, 1]


def test_the_engine_never_emits_what_the_moderation_vetoes(server: Any) -> None:
    backend = ScriptedBackend([["I will kill the weeds. ", "Pull the weeds. "], ["Then water." + EOS]])
    helpful = ScriptedReward(lambda text: 10.0 if "kill" in text else 1.0, name="helpful")  # prefers the vetoed one
    composite = CompositeReward([(helpful, 1.0)], veto=reward(server.url), veto_floor=0.5)
    result = STARSEngine(backend, composite, STARSConfig(seed=1, max_new_tokens=64, segment_size=32)).run(
        "How do I weed?"
    )
    assert "kill" not in result.text and result.text.startswith("Pull the weeds.")


def test_failures_fail_closed_with_the_servers_words(server: Any) -> None:
    wrong_key = OpenAIModerationReward(server.url, api_key="sk-wrong")
    with pytest.raises(RewardError, match="Incorrect API key provided") as caught:
        wrong_key.score("q", TEXTS[:1])
    assert caught.value.status_code == 401 and caught.value.retries == 0  # type: ignore[attr-defined]
    with pytest.raises(RewardError, match="does not exist"):
        reward(server.url, model="no-such-moderation").score("q", TEXTS[:1])
    with pytest.raises(RewardError, match="reports no 'illicit' score"):
        reward(server.url, model="text-moderation-latest", per_category=True).score("q", TEXTS[:1])


def test_rate_limits_are_retried() -> None:
    with ThreadedServer(moderation_app(rate_limit_first=2)) as limited:
        scorer = reward(limited.url, retry=RetryPolicy(max_retries=3, backoff_base_s=0.01))
        assert scorer.score("q", TEXTS[:1]) == pytest.approx([0.9999])
        assert scorer.retries == 2


def test_a_malformed_answer_fails_closed() -> None:
    async def short(request: Request) -> Response:
        return JSONResponse({"id": "modr-1", "results": []})

    app = Starlette(routes=[Route("/v1/moderations", short, methods=["POST"])])
    with ThreadedServer(app) as bad, pytest.raises(RewardError, match="for 2 inputs"):
        reward(bad.url).score("q", TEXTS[:2])


def test_a_result_without_its_flagged_decision_fails_closed() -> None:
    async def undecided(request: Request) -> Response:
        return JSONResponse({"id": "modr-1", "results": [{"category_scores": {"violence": 0.01}}]})

    app = Starlette(routes=[Route("/v1/moderations", undecided, methods=["POST"])])
    with ThreadedServer(app) as bad, pytest.raises(RewardError, match="no flagged decision"):
        reward(bad.url).score("q", TEXTS[:1])


def test_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARS_GUARD_API_KEY", API_KEY)
    built = build_reward(
        "openai-moderation:https://api.example.com/v1?model=omni-moderation-2024-09-26&per_category=true"
    )
    assert isinstance(built, OpenAIModerationReward)
    assert built.base_url == "https://api.example.com" and built.model == "omni-moderation-2024-09-26"
    assert built.per_category and built.name == "openai-moderation:omni-moderation-2024-09-26"
