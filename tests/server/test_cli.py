"""`stars-guard serve` argument handling (the running server is tested in test_openai_client.py)."""

from __future__ import annotations

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
