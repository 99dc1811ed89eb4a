"""Swap STARSChatModel into an LCEL chain: prompt | model | parser, streamed, with its rejection rate.

    python examples/lcel_chain.py "How do I keep basil alive indoors?" --seed 7

The chain is the one you would write for any chat model; only the model line changes. Streaming
shows accepted segments only: rejected candidates never reach the parser. The rejection rate comes
from `RejectionStatsHandler`, attached like any LangChain callback handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from stars_guard import STARSChatModel
from stars_guard.langchain.callbacks import RejectionStatsHandler

DEFAULT_QUESTION = "How do I keep my houseplants alive while I am on holiday?"


def build_chain(llm: BaseChatModel) -> Runnable:
    """The usual prompt | model | parser chain; `llm` may be any chat model."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise, friendly assistant."), ("human", "{question}")]
    )
    return prompt | llm | StrOutputParser()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--seed", type=int, default=7, help="same seed, same answer")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args(argv)

    llm = STARSChatModel(max_tokens=args.max_tokens, seed=args.seed)
    stats = RejectionStatsHandler()
    chain = build_chain(llm)
    print(f"Q: {args.question}\nA: ", end="", flush=True)
    for piece in chain.stream({"question": args.question}, config={"callbacks": [stats]}):
        print(piece, end="", flush=True)  # one piece per accepted segment
    print()

    snapshot = stats.snapshot()
    candidates, segments = snapshot["candidates"], snapshot["segments"]
    print(
        f"rejection rate: {snapshot['rejection_rate']:.0%} "
        f"({candidates['rejected']} of {candidates['judged']} candidates rejected; "
        f"{segments['accepted']} segments accepted, {segments['fallback']} fallback, "
        f"refused: {'yes' if snapshot['refusals'] else 'no'})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
