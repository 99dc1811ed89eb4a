"""`ServeSettings`: one object for `create_app` and `serve`, so no setting is lost between them.

Regression: `serve()` repeated `create_app`'s arguments and silently dropped `open_paths` and
`retry_after_s`; now it hands the whole settings object over, and a misspelt name is an error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.testclient import TestClient

from stars_guard.overrides import OverridePolicy
from stars_guard.serving.app import create_app, serve
from stars_guard.serving.errors import OpenAIError
from stars_guard.serving.settings import ServeSettings
from tests.serving.doubles import ServerBackend, marker_reward, test_config


def served_app(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    """The app `serve(...)` would run, with uvicorn left out."""
    import uvicorn

    ran: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.update(app=app, **options))
    serve(ServerBackend(), marker_reward(), test_config(), host="127.0.0.1", port=9, **kwargs)
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 9)
    return ran["app"]


def test_serve_hands_every_setting_to_the_app(monkeypatch):
    policy = OverridePolicy(allowed={"temperature"})
    settings = ServeSettings(
        api_key="k",
        max_concurrent=3,
        max_queue=5,
        request_timeout_s=7.5,
        max_body_bytes=4096,
        retry_after_s=9,
        override_policy=policy,
        open_paths=("/health", "/dashboard"),
    )
    app = served_app(monkeypatch, settings=settings, dashboard=False)
    assert app.state.settings == settings and app.state.override_policy is policy
    health = app.state.service.health()
    assert (health["max_concurrent"], health["max_queue"]) == (3, 5)


def test_keyword_changes_override_the_settings_and_the_dashboard_is_added_after_them(monkeypatch):
    app = served_app(monkeypatch, settings=ServeSettings(max_queue=2), open_paths=["/health", "/dashboard"])
    assert app.state.settings.max_queue == 2 and app.state.settings.open_paths == ("/health", "/dashboard")
    paths = [getattr(route, "path", "") for route in app.routes]
    assert "/v1/chat/completions" in paths and any(path.startswith("/dashboard") for path in paths)
    with TestClient(app) as client:  # the open path really is open, though a key is required elsewhere
        assert client.get("/dashboard").status_code == 200


def test_open_paths_reach_the_auth_middleware():
    app = create_app(ServerBackend(), marker_reward(), test_config(), api_key="k", open_paths=("/health", "/v1/models"))
    with TestClient(app) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/metrics").status_code == 401


def test_retry_after_reaches_the_429():
    app = create_app(ServerBackend(), marker_reward(), test_config(), max_concurrent=1, max_queue=0, retry_after_s=7)
    service = app.state.service

    async def second_request() -> OpenAIError:
        await service.admit(1.0)  # the only slot
        with pytest.raises(OpenAIError) as refused:
            await service.admit(1.0)
        return refused.value

    error = asyncio.run(second_request())
    assert (error.status, error.code, error.headers["Retry-After"]) == (429, "rate_limit_exceeded", "7")
    assert service.counts["queue_full"] == 1


@pytest.mark.parametrize("call", [create_app, serve])
def test_a_misspelt_setting_is_an_error_not_ignored(call):
    with pytest.raises(TypeError, match="max_concurent"):
        call(ServerBackend(), marker_reward(), test_config(), max_concurent=4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_queue": -1}, "max_queue"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"open_paths": "/health"}, "open_paths"),
    ],
)
def test_bad_settings_fail_when_built(changes, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(**changes)


def test_settings_are_frozen_and_keep_sequences_as_tuples():
    settings = ServeSettings(open_paths=["/health"], observers=iter([]))
    assert settings.open_paths == ("/health",) and settings.observers == ()
    assert settings.policy == OverridePolicy() and settings.changed() is settings
    with pytest.raises(AttributeError):
        settings.max_queue = 1  # type: ignore[misc]
