"""`stars-guard serve` argument handling (the running server is tested in test_openai_client.py)."""

from __future__ import annotations

from typing import Any

import pytest

from stars_guard.cli import build_parser, main


def test_serve_defaults_bind_loopback_with_bounded_queue():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.backend, args.reward) == ("127.0.0.1", 8000, "local", "default")
    assert (args.max_concurrent, args.max_queue, args.request_timeout, args.api_key) == (8, 32, 120.0, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--max-queue", "-1"], "--max-queue"),
        (["--request-timeout", "0"], "--request-timeout"),
        (["--segment-size", "0"], "segment_size"),
        (["--backend", "nope"], "unknown backend spec"),
    ],
)
def test_bad_serve_flags_fail_before_loading_models(flags, message, capsys):
    assert main(["serve", *flags]) == 2
    assert message in capsys.readouterr().err


def test_allow_override_is_repeatable_and_defaults_to_none():
    assert build_parser().parse_args(["serve"]).allow_override == []
    args = build_parser().parse_args(["serve", "--allow-override", "temperature", "--allow-override", "top_p"])
    assert args.allow_override == ["temperature", "top_p"]


def test_an_unknown_allow_override_field_exits_2_naming_it(capsys):
    assert main(["serve", "--allow-override", "temprature"]) == 2
    err = capsys.readouterr().err
    assert "--allow-override" in err and "temprature" in err and "temperature" in err  # the known fields
    assert "Traceback" not in err


def test_serve_hands_the_allowed_fields_to_the_app(monkeypatch, capsys):
    import stars_guard.serving.app
    import stars_guard.specs
    from stars_guard.overrides import OverridePolicy
    from tests.serving.doubles import ServerBackend, marker_reward

    served: dict[str, Any] = {}
    monkeypatch.setattr(stars_guard.specs, "build_backend", lambda spec: ServerBackend())
    monkeypatch.setattr(stars_guard.specs, "build_reward", lambda spec: marker_reward())

    def fake_serve(*args: Any, settings: Any, **kwargs: Any) -> None:
        served.update(kwargs, **vars(settings))  # the one settings object, flattened for the checks below

    monkeypatch.setattr(stars_guard.serving.app, "serve", fake_serve)
    assert main(["serve", "--allow-override", "temperature", "--allow-override", "max_new_tokens"]) == 0
    assert served["override_policy"] == OverridePolicy(allowed={"temperature", "max_new_tokens"})
    assert any("temperature" in line for line in served["announce"])
    assert main(["serve"]) == 0
    assert served["override_policy"] == OverridePolicy()


@pytest.mark.parametrize("seed", ["18446744073709551616", "9223372036854775808", "-1", "seven"])
def test_chat_seed_out_of_range_exits_2_with_a_clear_message(seed, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["chat", "hello", "--seed", seed])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "9223372036854775807" in err and "Traceback" not in err


def test_chat_seed_in_range_parses():
    assert build_parser().parse_args(["chat", "hello", "--seed", "9223372036854775807"]).seed == 2**63 - 1
