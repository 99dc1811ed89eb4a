"""Closing whole constrained answers drafted by an HTTP engine within the token budget.

vLLM (`structured_outputs`) and llama-server (`json_schema`, `grammar`) hold a constraint from a
request's first token, so an answer is drafted whole and nothing can be appended under the server's
grammar afterwards. The server's grammar does not know the budget: a candidate cut by `max_tokens`
is a JSON value (or a call) left open. Such a candidate is closed here, the way the local backends
close theirs while drafting: it is cut back to the longest token prefix that leaves room for the
shortest valid closing (`stars_guard.json_closing`) and the end-of-sequence token, and the closing,
tokenised by the server's own tokenizer, is appended in token ids. The result is checked against
the constraint before it is returned; a candidate that cannot be closed raises `BackendError`,
never passes as truncated JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from stars_guard.errors import BackendError, ConstraintBudgetError
from stars_guard.json_closing import Closer, describe
from stars_guard.protocols import Candidate
from stars_guard.tools import OutputConstraint, split_answer


class WholeAnswerCloser:
    """Keeps whole answers of an HTTP engine valid within `max_new_tokens` (see the module docstring).

    `tokenize` is the server's tokenizer (text to ids, no special tokens); `end_token` the id of the
    end-of-sequence token a closed answer ends with (None when the server does not say).
    """

    def __init__(
        self,
        constraint: OutputConstraint,
        tokenize: Callable[[str], list[int]],
        max_new_tokens: int,
        end_token: int | None,
    ) -> None:
        self.constraint = constraint
        self.closer = Closer(constraint)
        self.tokenize = tokenize
        self.end_token = end_token
        self.max_new_tokens = max_new_tokens
        self._tokens: dict[str, list[int]] = {}
        self.end = 1 if self.closer.needs_end else 0
        shortest = self.closer.shortest()
        self.needed = None if shortest is None else len(self._ids(shortest)) + self.end
        if self.needed is not None and self.needed > max_new_tokens:
            raise ConstraintBudgetError(self.needed, max_new_tokens, describe(constraint))

    def close(self, candidate: Candidate, draft_tokens: int, accepted: int) -> Candidate:
        """`candidate` if the server ended it or the draft was not the answer's last (`draft_tokens`, the
        draft's limit, under the budget the answer has left after `accepted` tokens); else its longest
        prefix that closes within that budget, closed."""
        budget = self.max_new_tokens - accepted
        if candidate.finish_reason == "eos" or not self.closer.needs_end or draft_tokens < budget:
            return candidate
        if self.needed is None:
            raise BackendError(
                f"the engine's answer under this {self.constraint.kind} constraint ran out of tokens before it "
                "closed, and the schema has a feature whose closing cannot be computed (a string pattern or "
                "format, multipleOf, prefixItems, open objects): raise max_tokens or simplify the schema"
            )
        if self.end_token is None:
            raise BackendError(
                "cannot close a constrained answer the token budget cut: the server's end-of-sequence token is "
                "unknown (pass tokenizer=<the model directory the server runs>)"
            )
        ids, text, ends = list(candidate.token_ids), candidate.text, candidate.token_ends
        if len(ends) != len(ids):
            raise BackendError("cannot close a constrained answer the token budget cut: its token offsets are unknown")
        keep = min(len(ids), budget - self.end)
        while keep >= 0:
            prefix = text[: ends[keep - 1]] if keep else ""
            closing = self.closer.closing(prefix)
            if closing is None:
                keep -= 1
                continue
            closing_ids = self._ids(closing)
            if keep + len(closing_ids) + self.end <= budget:
                closed = prefix + closing
                self._check(closed)
                return Candidate(closed, (*ids[:keep], *closing_ids, self.end_token), "eos")
            keep -= 1  # a shorter prefix may close shorter (an optional field left out)
        raise BackendError(f"cannot close a constrained answer within {budget} tokens")

    def _ids(self, text: str) -> list[int]:
        if text not in self._tokens:
            self._tokens[text] = self.tokenize(text) if text else []
        return self._tokens[text]

    def _check(self, text: str) -> None:
        """The closed answer must be whole under the constraint (else a bug here: raise, never return it)."""
        whole = self.closer.closing(text) == ""
        if whole and self.constraint.kind == "json_schema":
            try:
                json.loads(text)
            except json.JSONDecodeError:
                whole = False
        elif whole:
            _, calls, dropped = split_answer(text, self.constraint.tool_names)
            whole = bool(calls) and not dropped and all(call.error is None for call in calls)
        if not whole:
            raise BackendError(f"closing a constrained answer gave text that is not a whole answer: {text[:200]!r}")
