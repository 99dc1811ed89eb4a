"""How often a LangChain v1 agent on STARS completes the tool loop, under `tool_choice="auto"` and forced.

    python benchmarks/agent_loop.py --seeds 10 --out benchmarks/results

One run: `create_agent(model, [get_weather], middleware=[..., STARSMiddleware(model)])` is asked
"What is the weather in Paris?". It passes when the agent (1) calls `get_weather` with valid
arguments for the question (`{"city": "Paris"}`, any case or spacing) and (2) ends with an answer,
no call in it, that uses the tool's result (names the rain or the 14 C of "light rain, 14 C").
An answer that only parrots the result back in its `<tool_response>` block is counted apart
(`echoed_result`), not as a pass.
"auto" leaves the choice to the model on every turn; "forced" asks for a call on the user's turn
(`tool_choice="any"`, as examples/guarded_agent.py does) and leaves the turn after the result free.

The default model is the embedded SmolLM2-135M (`--backend` takes any backend spec, e.g.
`llama-server:http://127.0.0.1:8080` for a tool-trained model). Each seed runs both modes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from stars_guard import STARSChatModel
from stars_guard.langchain.middleware import STARSMiddleware

QUESTION = "What is the weather in Paris?"
SYSTEM = "You are a helpful assistant. Use the tools to answer."
FORECAST = "light rain, 14 C"
RESULT_WORDS = ("rain", "14")
STEPS = ("called", "valid_args", "answered", "uses_result", "echoed_result")


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return FORECAST if city.strip().lower() == "paris" else f"no forecast for {city}"


class CallOnUserTurn(AgentMiddleware):
    """Asks for a tool call when the user has just spoken; the turn after a tool's result is free."""

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        if request.messages and isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="any")
        return handler(request)


def judge(messages: list[BaseMessage]) -> dict[str, bool]:
    """The three steps of a completed loop, each checked on the agent's transcript."""
    calls = [call for m in messages if isinstance(m, AIMessage) for call in m.tool_calls]
    called = any(call["name"] == "get_weather" for call in calls)
    valid = any(
        call["name"] == "get_weather"
        and set(call["args"]) == {"city"}
        and isinstance(call["args"]["city"], str)
        and call["args"]["city"].strip().lower() == "paris"
        for call in calls
    )
    ran = any(isinstance(m, ToolMessage) and m.content == FORECAST for m in messages)
    last = messages[-1]
    text = str(last.content) if isinstance(last, AIMessage) and not last.tool_calls else ""
    mentions = ran and any(word in text.lower() for word in RESULT_WORDS)
    echoed = "<tool_response>" in text or "<tool_call>" in text  # the transport format parroted back
    answered = bool(text.strip()) and not echoed
    return {
        "called": called,
        "valid_args": valid,
        "answered": answered,
        "uses_result": answered and mentions,
        "echoed_result": echoed and mentions,
    }


def run_once(backend: str | None, mode: str, seed: int, max_tokens: int) -> dict[str, Any]:
    model = STARSChatModel(backend=backend, seed=seed, max_tokens=max_tokens)
    middleware: list[AgentMiddleware] = [CallOnUserTurn()] if mode == "forced" else []
    agent = create_agent(model, [get_weather], system_prompt=SYSTEM, middleware=[*middleware, STARSMiddleware(model)])
    started = time.perf_counter()
    try:
        messages = agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 8})["messages"]
        error = None
    except Exception as exc:  # the recursion limit: the model kept calling tools
        messages, error = [], f"{type(exc).__name__}: {str(exc)[:120]}"
    steps = judge(messages) if messages else dict.fromkeys(STEPS, False)
    passed = steps["valid_args"] and steps["uses_result"]
    last = messages[-1] if messages else None
    return {
        "mode": mode,
        "seed": seed,
        "passed": passed,
        **steps,
        "error": error,
        "model_calls": sum(isinstance(m, AIMessage) for m in messages),
        "final": str(last.content)[:200] if isinstance(last, AIMessage) else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--backend", default=None, help="a backend spec (default: the embedded SmolLM2-135M)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--modes", default="auto,forced")
    parser.add_argument("--out", type=Path, default=None, help="folder for agent_loop.json")
    args = parser.parse_args(argv)

    runs = []
    for seed in range(args.seeds):
        for mode in args.modes.split(","):
            run = run_once(args.backend, mode, seed, args.max_tokens)
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    summary = {}
    for mode in args.modes.split(","):
        mine = [run for run in runs if run["mode"] == mode]
        summary[mode] = {
            "runs": len(mine),
            "passed": sum(run["passed"] for run in mine),
            **{step: sum(run[step] for run in mine) for step in STEPS},
            "mean_seconds": round(sum(run["seconds"] for run in mine) / max(1, len(mine)), 1),
        }
    print(f"{'mode':8} {'pass':>7} {'called':>7} {'valid':>7} {'answer':>7} {'uses':>7} {'echoed':>7} {'s/run':>7}")
    for mode, row in summary.items():
        n = row["runs"]
        counts = " ".join(f"{row[key]:>3}/{n:<3}" for key in ("passed", *STEPS))
        print(f"{mode:8} {counts} {row['mean_seconds']:>7}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"backend": args.backend or "local", "max_tokens": args.max_tokens, "summary": summary, "runs": runs}
        (args.out / "agent_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
