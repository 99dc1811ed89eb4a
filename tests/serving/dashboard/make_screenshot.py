"""Regenerate docs/dashboard.png from the real chat server under real traffic.

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.serving.dashboard.make_screenshot [--out docs/dashboard.png]

Starts `stars-guard serve`'s app on 127.0.0.1 with the embedded default model and guard reward,
sends the small prompts of `tests.serving.dashboard.live` from two concurrent clients (so requests overlap
and the in-flight line moves), then has headless Chromium render `/dashboard?window=60`. The server
runs with `safety_floor=0.7` by default, so a hostile prompt now and then ends in a refusal and
every panel has data; everything else is the default configuration.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx

from tests.serving.dashboard.live import PROMPTS, live_chat_server, send_traffic
from tests.serving.dashboard.support import rejection_from_metrics, screenshot

SIZE = "1280,1560"  # the whole page, recent-requests table included
DEFAULT_OUT = Path(__file__).resolve().parents[3] / "docs" / "dashboard.png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument(
        "--safety-floor",
        type=float,
        default=0.7,
        help="the server's STARSConfig.safety_floor: 0.7 refuses now and then, so the refusal panel has data",
    )
    args = parser.parse_args(argv)

    from stars_guard.config import STARSConfig
    from stars_guard.langchain.chat_model import default_backend, default_reward

    config = STARSConfig(safety_floor=args.safety_floor)
    with live_chat_server(default_backend(), default_reward(), config) as live:
        halves = (PROMPTS[0::2], PROMPTS[1::2])
        errors: list[BaseException] = []

        def client(prompts: tuple[str, ...]) -> None:
            try:
                send_traffic(live.url, prompts, max_tokens=args.max_tokens)
            except BaseException as exc:  # re-raised below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(half,)) for half in halves]
        for thread in threads:
            thread.start()
            time.sleep(1.5)  # staggered, so the two clients' requests overlap only in part
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        rejected, judged = rejection_from_metrics(httpx.get(f"{live.url}/metrics", timeout=10).text)
        time.sleep(2)  # a quiet tail, as on a real dashboard between bursts
        screenshot(f"{live.url}/dashboard?window=60", args.out, size=SIZE)
    print(f"{args.out}: {rejected:.0f} of {judged:.0f} candidates rejected ({rejected / judged:.1%})")


if __name__ == "__main__":
    main()
