"""A LangChain v1 agent guarded by STARS: two tools, one middleware line, and the trace with statistics.

    python examples/guarded_agent.py "What is the weather in Paris?" --seed 3

`create_agent` builds the agent as it would for any chat model; `STARSMiddleware` routes its model
calls through STARS, so tool calls are drafted under their JSON grammar and judged by the guard,
and only accepted text and whole accepted calls reach the tool node and the stream.

The model is the embedded SmolLM2-135M, asked for by name (`STARSChatModel()`). Left to choose
(`tool_choice="auto"`) it never calls a tool (0 of 10 seeds, benchmarks/agent_loop.py), so a second
small middleware asks for a call on the user's turn (`tool_choice="any"`); forced, it calls the
tool right every time and answers from the result 6 times in 10 (seed 3 is one of them). Drop
it with a model that calls tools unprompted: docs/agents.md has the recipe for a served one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from stars_guard import STARSChatModel
from stars_guard.langchain.middleware import STARSMiddleware

DEFAULT_QUESTION = "What is the weather in Paris?"
FORECASTS = {"paris": "light rain, 14 C", "london": "cloudy, 11 C", "tokyo": "sunny, 21 C"}
OUTBOX: list[dict[str, str]] = []


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return FORECASTS.get(city.strip().lower(), f"no forecast for {city}")


@tool
def send_email(to: str, body: str) -> str:
    """Send an email (this example only keeps it in an outbox)."""
    OUTBOX.append({"to": to, "body": body})
    return f"email to {to} queued"


class CallOnUserTurn(AgentMiddleware):
    """Asks for a tool call when the user has just spoken; the turn after a tool's result is free."""

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        if request.messages and isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="any")
        return handler(request)


def describe(message: BaseMessage) -> str:
    """One trace line: a call, a tool's result, or an answer, with the guard's statistics."""
    if isinstance(message, ToolMessage):
        return f"tool {message.name} -> {message.content}"
    if not isinstance(message, AIMessage):
        return f"user: {message.content}"
    stars = message.response_metadata.get("stars", {})
    stats = (
        f"[{stars.get('candidates_rejected', 0)}/{stars.get('candidates_sampled', 0)} candidates rejected, "
        f"{stars.get('candidates_vetoed', 0)} vetoed, {stars.get('tool_call_candidates', 0)} judged in tool calls"
        f"{', refused' if stars.get('refused') else ''}]"
    )
    calls = "; ".join(f"{call['name']}({call['args']})" for call in message.tool_calls)
    return f"model calls {calls} {stats}" if calls else f"model: {message.content} {stats}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--seed", type=int, default=3, help="same seed, same trace")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    guard = STARSMiddleware(STARSChatModel(max_tokens=args.max_tokens, seed=args.seed))
    agent = create_agent(
        guard.model,
        tools=[get_weather, send_email],
        system_prompt="You are a helpful assistant. Use the tools to answer.",
        middleware=[CallOnUserTurn(), guard],
    )
    result = agent.invoke({"messages": [HumanMessage(args.question)]}, {"recursion_limit": 8})
    for message in result["messages"]:
        print(describe(message))
    answers = [m for m in result["messages"] if isinstance(m, AIMessage)]
    totals = [m.response_metadata.get("stars", {}) for m in answers]
    sampled = sum(t.get("candidates_sampled", 0) for t in totals)
    rejected = sum(t.get("candidates_rejected", 0) for t in totals)
    # usage_metadata counts every token sampled; the part that never reached an answer is itemised
    tokens = sum((m.usage_metadata or {}).get("output_tokens", 0) for m in answers)
    unused = sum((m.usage_metadata or {}).get("output_token_details", {}).get("stars_rejected", 0) for m in answers)
    print(
        f"{len(answers)} model calls, {rejected} of {sampled} candidates rejected "
        f"({rejected / sampled if sampled else 0:.0%}), {tokens} tokens sampled ({unused} not in an answer), "
        f"emails sent: {len(OUTBOX)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
