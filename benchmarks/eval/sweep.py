"""Engine-default sweep for issue 5: STARS variants against vanilla and BoN-16 on one set of prompts.

Cheaper than `stars-guard bench` for a search: vanilla's answers and BoN-16's 16 drafts per prompt
do not depend on the steering reward, so they are drafted once (cached under --cache) and BoN-16
is re-selected under each reward. Each STARS variant is one JSON line of config overrides.

    OMP_NUM_THREADS=1 python benchmarks/eval/sweep.py --num-prompts 12 --reward guard \\
        --variant 'base={}' --variant 'best={"round_selection": "best"}'

Prints one row per variant: mean final reward, tokens sampled as a share of BoN-16's, judge
win-rate against vanilla (bootstrap 95%), rejection rate. Rows are appended to --log (JSONL).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench.harness import load_prompts
from stars_guard.bench.judge import BTJudge
from stars_guard.bench.statistics import bootstrap_ci, pairwise_outcomes
from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest


def build_reward(name: str) -> Any:
    """`guard` (the plain GuardReward) or `guard-refusal` (refusal-aware)."""
    from stars_guard.adapters.guard_reward import GuardReward

    return GuardReward(refusal_aware=name == "guard-refusal")


def drafts_cache(backend: Any, prompts: list[str], max_new_tokens: int, path: Path) -> dict[str, Any]:
    """Vanilla answers and 16 whole-answer drafts per prompt (seed i for prompt i), cached in a file."""
    if path.is_file():
        return json.loads(path.read_text())
    config = STARSConfig()
    vanilla, bon = [], []
    for seed, prompt in enumerate(prompts):
        result = STARSEngine(backend, _NullReward(), STARSConfig.plain_sampling(max_new_tokens)).run(prompt, seed=seed)
        vanilla.append({"text": result.text, "tokens": result.stats.tokens_sampled})
        generation = backend.open(
            OpenRequest(
                normalize_messages(prompt),
                max_new_tokens=max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=seed,
            )
        )
        try:
            drafts = generation.draft(8, max_new_tokens) + generation.draft(8, max_new_tokens)
        finally:
            generation.close()
        bon.append([{"text": draft.text, "tokens": draft.num_tokens} for draft in drafts])
    data = {"prompts": prompts, "vanilla": vanilla, "bon16": bon}
    path.write_text(json.dumps(data))
    return data


class _NullReward:
    name = "null"

    def score(self, prompt: str, responses: list[str]) -> list[float]:
        return [0.0] * len(responses)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--reward",
        default="guard",
        choices=["guard", "guard-refusal"],
        help="guard: relevance-only GuardReward; guard-refusal: the refusal-aware default",
    )
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON config overrides")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stars-sweep"))
    parser.add_argument("--log", type=Path, default=Path("/tmp/stars-sweep/log.jsonl"))
    args = parser.parse_args()

    from stars_guard.specs import build_backend

    args.cache.mkdir(parents=True, exist_ok=True)
    prompts, _ = load_prompts(None, args.num_prompts)
    backend = build_backend("local")
    reward = build_reward(args.reward)
    judge = BTJudge()
    cache = drafts_cache(
        backend, prompts, args.max_new_tokens, args.cache / f"drafts-{len(prompts)}-{args.max_new_tokens}.json"
    )

    vanilla_texts = [item["text"] for item in cache["vanilla"]]
    bon_texts, bon_tokens = [], 0
    for prompt, drafts in zip(prompts, cache["bon16"], strict=True):
        scores = reward.score(prompt, [draft["text"] for draft in drafts])
        bon_texts.append(drafts[int(np.argmax(scores))]["text"])
        bon_tokens += sum(draft["tokens"] for draft in drafts)
    vanilla_judge = judge.score(prompts, vanilla_texts)

    def summarise(name: str, texts: list[str], tokens: int, rejected: int, judged: int, extra: dict) -> dict:
        final = [float(reward.score(prompt, [text])[0]) for prompt, text in zip(prompts, texts, strict=True)]
        wins = pairwise_outcomes(judge.score(prompts, texts), vanilla_judge)
        low, high = bootstrap_ci(list(wins), seed=0, resamples=2000)
        row = {
            "reward": args.reward,
            "n": len(prompts),
            "name": name,
            "mean_reward": round(float(np.mean(final)), 4),
            "token_share": round(tokens / bon_tokens, 4),
            "judge_win": round(float(wins.mean()), 3),
            "judge_ci": [round(low, 3), round(high, 3)],
            "rejection_rate": round(rejected / judged, 3) if judged else 0.0,
            **extra,
        }
        print(
            f"{name:28s} reward {row['mean_reward']:.4f}  tokens {row['token_share']:.1%}  "
            f"judge {row['judge_win']:.2f} [{low:.2f}, {high:.2f}]  rejection {row['rejection_rate']:.2f}",
            flush=True,
        )
        with args.log.open("a") as log:
            log.write(json.dumps(row) + "\n")
        return row

    summarise("vanilla", vanilla_texts, sum(item["tokens"] for item in cache["vanilla"]), 0, 0, {})
    summarise("bon-16", bon_texts, bon_tokens, 0, 0, {})
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        values = json.loads(overrides or "{}")
        config = STARSConfig.build(**{"max_new_tokens": args.max_new_tokens, **values})
        started = time.perf_counter()
        results = [STARSEngine(backend, reward, config).run(prompt, seed=seed) for seed, prompt in enumerate(prompts)]
        summarise(
            name,
            [result.text for result in results],
            sum(result.stats.tokens_sampled for result in results),
            sum(result.stats.candidates_rejected for result in results),
            sum(result.stats.candidates_sampled for result in results),
            {"config": values, "wall_s": round(time.perf_counter() - started, 1)},
        )


if __name__ == "__main__":
    main()
