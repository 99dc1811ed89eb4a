"""What drafting under a grammar costs per sampled token, against unconstrained drafting.

On the transformers backend (embedded SmolLM2, one torch thread), each prompt is drafted in rounds
of K candidates of a fixed segment length, the first candidate that can continue committed, as the
engine would. Three modes over the same prompts, K and segment length:

- unconstrained: no matcher, no mask;
- tool_call: a forced call of a tool with a JSON arguments schema (`tool_constraint`);
- json_schema: the whole answer one JSON value matching a small object schema.

Only the time inside `draft` counts (the open, which compiles the grammar, is reported apart), per
token sampled. The order of the modes rotates per repetition, so none always runs on a warmer cache.
The target: constrained <= 1.3x unconstrained per token.

    python benchmarks/constrained_bench.py --out benchmarks/results

`--budget` measures instead whether a forced five-field call completes within `max_new_tokens`:
`STARSEngine` with the transformers backend and `GuardReward` (defaults otherwise), `create_ticket`
forced, budgets 32/64/96, seeds 0-5, with the budget reserve (the closing kept in reserve and written
when the budget meets it) and without it (the drafting before the reserve existed):

    python benchmarks/constrained_bench.py --budget --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest
from stars_guard.tools import OutputConstraint, ToolSpec, schema_instruction, tool_constraint, tools_instruction

WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
    },
)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "city", "hobbies"],
}
PROMPTS = [
    "What will the weather be in Lisbon over the next three days?",
    "Tell me about a person who lives in Kyoto and likes hiking.",
    "Describe someone who could help me plan a trip to Oslo.",
]
MODES: dict[str, OutputConstraint | None] = {
    "unconstrained": None,
    "tool_call": tool_constraint([WEATHER], WEATHER.name),
    "json_schema": OutputConstraint("json_schema", schema=PERSON),
}


def messages_for(mode: str, prompt: str) -> list[dict[str, str]]:
    """The same user turn in every mode, with the system turn that tells the model the format."""
    constraint = MODES[mode]
    if constraint is None:
        return [{"role": "user", "content": prompt}]
    system = tools_instruction(constraint) if constraint.kind == "tool_calls" else schema_instruction(PERSON)
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def draft_answer(
    backend: Any, mode: str, prompt: str, seed: int, k: int, segment: int, rounds: int
) -> dict[str, float]:
    """Draft up to `rounds` rounds, committing the first candidate that can continue; time inside `draft` only."""
    request = OpenRequest(
        normalize_messages(messages_for(mode, prompt)), segment * rounds, 0.8, 0.95, seed, constraint=MODES[mode]
    )
    started = time.perf_counter()
    generation = backend.open(request)
    open_s = time.perf_counter() - started
    draft_s, tokens = 0.0, 0
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            candidates = generation.draft(k, segment)
            draft_s += time.perf_counter() - started
            tokens += sum(candidate.num_tokens for candidate in candidates)
            going = [candidate for candidate in candidates if candidate.finish_reason == "length"]
            if not going:
                break
            generation.commit(going[0])
    finally:
        generation.close()
    return {"open_s": open_s, "draft_s": draft_s, "tokens": tokens}


TICKET = ToolSpec(
    "create_ticket",
    "Create a support ticket in the issue tracker.",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "component": {"type": "string"},
            "assignee": {"type": "string"},
        },
        "required": ["title", "description", "priority", "component", "assignee"],
    },
)
TICKET_PROMPT = "The login page crashes on Safari 17 when I press Enter. Please file a ticket for the web team."


def budget_runs(out: Path, budgets: list[int], seeds: int) -> int:
    """Completed forced calls per budget, with and without the reserve (see the module docstring)."""
    from stars_guard import STARSConfig, STARSEngine
    from stars_guard.adapters import GuardReward, TransformersBackend
    from stars_guard.adapters._grammar import LazyGrammars
    from stars_guard.errors import ConstraintBudgetError
    from stars_guard.tools import split_answer

    backend, reward = TransformersBackend(), GuardReward()
    constraint = tool_constraint([TICKET], TICKET.name)
    keeper = LazyGrammars.keeper
    rows: list[dict[str, Any]] = []
    for reserve in (False, True):
        # Without the reserve no generation gets a budget keeper: the drafting as it was before.
        LazyGrammars.keeper = keeper if reserve else (lambda self, constraint, max_new_tokens: None)  # type: ignore[method-assign]
        try:
            for budget in budgets:
                for seed in range(seeds):
                    started = time.perf_counter()
                    row: dict[str, Any] = {"reserve": reserve, "max_new_tokens": budget, "seed": seed}
                    try:
                        result = STARSEngine(backend, reward, STARSConfig(max_new_tokens=budget, seed=seed)).run(
                            TICKET_PROMPT, constraint=constraint
                        )
                    except ConstraintBudgetError as exc:
                        row |= {"completed": False, "error": str(exc), "needed": exc.needed}
                    else:
                        _, calls, dropped = split_answer(result.text, [TICKET.name])
                        valid = [call for call in calls if call.error is None]
                        row |= {
                            "completed": bool(valid) and not dropped,
                            "calls": len(valid),
                            "tool_calls_dropped": result.stats.tool_calls_dropped,
                            "finish_reason": result.finish_reason,
                            "tokens_emitted": result.stats.tokens_emitted,
                            "arguments": valid[0].arguments if valid else None,
                        }
                    row["elapsed_s"] = round(time.perf_counter() - started, 2)
                    rows.append(row)
                    print(json.dumps(row, ensure_ascii=False), flush=True)
        finally:
            LazyGrammars.keeper = keeper  # type: ignore[method-assign]
    summary = {
        f"{'reserve' if reserve else 'before'} {budget}": sum(
            row["completed"] for row in rows if row["reserve"] == reserve and row["max_new_tokens"] == budget
        )
        for reserve in (False, True)
        for budget in budgets
    }
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "constrained_bench --budget", "seeds": seeds, "summary": summary, "runs": rows}
    (out / "constrained_budget.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--budget", action="store_true", help="completed forced calls per max_new_tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--segment", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.budget:
        return budget_runs(args.out, args.budgets, args.seeds)

    import torch

    from stars_guard.adapters import TransformersBackend

    torch.set_num_threads(1)
    backend = TransformersBackend()
    modes = list(MODES)
    # One untimed pass per mode: the model's first forwards and each grammar's compile happen here.
    warm = {mode: draft_answer(backend, mode, PROMPTS[0], 0, args.candidates, args.segment, 1) for mode in modes}
    print("first open (compile included):", {mode: round(value["open_s"], 3) for mode, value in warm.items()})
    totals = {mode: {"draft_s": 0.0, "tokens": 0, "open_s": []} for mode in modes}
    per_run: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]
        for index, prompt in enumerate(PROMPTS):
            for mode in order:
                seed = 100 * repeat + index
                measured = draft_answer(backend, mode, prompt, seed, args.candidates, args.segment, args.rounds)
                totals[mode]["draft_s"] += measured["draft_s"]
                totals[mode]["tokens"] += measured["tokens"]
                totals[mode]["open_s"].append(measured["open_s"])
                per_run.append({"repeat": repeat, "prompt": index, "mode": mode, **measured})
                per_token = 1000 * measured["draft_s"] / max(measured["tokens"], 1)
                print(
                    f"repeat {repeat} prompt {index} {mode:>13}: {measured['tokens']:4d} tokens, "
                    f"{per_token:.2f} ms/token"
                )
    baseline = totals["unconstrained"]["draft_s"] / totals["unconstrained"]["tokens"]
    summary = {
        mode: {
            "tokens": value["tokens"],
            "draft_s": round(value["draft_s"], 4),
            "ms_per_token": round(1000 * value["draft_s"] / value["tokens"], 4),
            "ratio_to_unconstrained": round(value["draft_s"] / value["tokens"] / baseline, 4),
            "median_open_s": round(statistics.median(value["open_s"]), 4),
            "first_open_s": round(warm[mode]["open_s"], 4),
        }
        for mode, value in totals.items()
    }
    report = {
        "benchmark": "constrained_bench",
        "backend": "transformers",
        "model": backend.model_name,
        "torch_threads": 1,
        "candidates": args.candidates,
        "segment": args.segment,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "prompts": PROMPTS,
        "target_ratio": 1.3,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "summary": summary,
        "runs": per_run,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "constrained_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Constrained drafting cost (transformers, SmolLM2-135M, 1 torch thread)",
        "",
        f"K={args.candidates}, segment {args.segment} tokens, {args.rounds} rounds per answer, "
        f"{len(PROMPTS)} prompts x {args.repeats} repeats, mode order rotated per repeat. Time inside `draft` only.",
        "",
        "| mode | tokens | ms / token | x unconstrained | open, first (s) | open, cached (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, value in summary.items():
        lines.append(
            f"| {mode} | {value['tokens']} | {value['ms_per_token']:.2f} | {value['ratio_to_unconstrained']:.3f} | "
            f"{value['first_open_s']:.3f} | {value['median_open_s']:.3f} |"
        )
    lines += ["", "Target: constrained <= 1.3x unconstrained per token.", ""]
    (args.out / "constrained_bench.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
