"""`ServedGuardReward`: P(safe) from a guard model (Llama Guard 3, ShieldGemma, Granite Guardian,
Qwen3Guard, WildGuard) served on an OpenAI-compatible `/v1/completions` (vLLM, llama-server).

Teams that run a guard at scale serve it on the engine that serves their LLM and read the verdict's
probability from the logprobs of the guard's first answer token (Llama Guard's card defines its
unsafe score that way). This scorer does the same for every candidate segment:

- each (conversation, partial answer) is rendered as plain text in the family's own prompt format
  (`stars_guard.adapters._guard_prompts`, the partial answer as the judged assistant turn) and sent
  to `/v1/completions`, so the server's chat template is not used;
- one request carries a list of prompts (vLLM and llama-server both take one), with
  `max_tokens: 1, temperature: 0, logprobs: N` (WildGuard, whose response verdict is the third
  line of its answer, generates up to 32 tokens and is read where that line's verdict starts);
- at the verdict position, the probability of each class (safe, unsafe, Qwen3Guard's
  controversial) is the summed probability of the top-N entries that spell one of its verdict
  words (case and surrounding spaces aside), normalised over the classes. A verdict word that is
  several tokens in the server's tokenizer is read by its first token, learned once through the
  server's `/tokenize`, when that first token differs from every other class's; where it does not,
  the scorer refuses to build a reading it cannot tell apart;
- `safety` is P(safe) (for a family judging several policies one prompt each, the least safe);
  where no verdict word is among the top-N logprobs (or their mass is under `min_verdict_mass`,
  0.5 by default),
  the guard's answer cannot be read and the call fails closed with a `RewardError`, as does every
  HTTP failure (`stars_guard.adapters._http`) and a request's spent deadline.
- with `report_categories` (Llama Guard), one more batched request writes each answer up to
  `unsafe\\nS` and reads the category numbers there: `unsafe:S<n>` = P(unsafe) * P(S<n> | unsafe),
  the first category the guard would name.

Each family ships the floor its card's decision rule gives (`RewardCapabilities.safety_floor`):
0.5 on P(safe), the point where the guard's own greedy verdict flips between its two words.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stars_guard.adapters import _guard_prompts
from stars_guard.adapters._guard_prompts import CONTROVERSIAL, SAFE, UNSAFE, GuardFamily
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.capabilities import RewardCapabilities
from stars_guard.errors import ConfigError, RewardError, StarsGuardError
from stars_guard.messages import ChatMessage, as_conversation
from stars_guard.protocols import RewardScores
from stars_guard.specs import server_root

WILDGUARD_MAX_TOKENS = 32  # its two first lines ("Harmful request: ...", "Response refusal: ...") and the verdict


# The least probability the verdict words must hold at the verdict position. Their shares are
# renormalised among themselves, so without a floor a stray "safe" at logprob -12, where the guard
# was about to write something else entirely (an injected answer), would read as P(safe) = 1: under
# half, the guard's answer is not a verdict and the scorer fails closed.
DEFAULT_MIN_VERDICT_MASS = 0.5


@dataclass(frozen=True)
class VerdictWord:
    """How the server's tokenizer spells one verdict word: its token count and the text read for it."""

    verdict: str  # the class: safe, unsafe, controversial
    word: str
    tokens: int | None  # None: the server has no /tokenize, so only whole-word tokens are read
    read_as: str  # the (normalised) token text counted for this class at the verdict position


@dataclass(frozen=True)
class Verdict:
    """One prompt's reading: each class's normalised probability and the raw mass they had."""

    probabilities: dict[str, float]
    mass: float


def _norm(text: str) -> str:
    return text.strip().lower()


def verdict_probabilities(
    top: Sequence[tuple[str, float]], readings: dict[str, set[str]], *, where: str, min_mass: float = 0.0
) -> Verdict:
    """Each class's probability from the top logprobs at the verdict position (see the module docstring).

    `top` holds (token text, logprob) pairs, `readings` each class to the normalised token texts read for
    it. Fails closed (RewardError) when no verdict token is there or their mass is under `min_mass`.
    """
    mass = dict.fromkeys(readings, 0.0)
    for text, logprob in top:
        if logprob is None or not math.isfinite(logprob):
            continue
        key = _norm(text)
        for verdict, texts in readings.items():
            if key in texts:
                mass[verdict] += math.exp(logprob)
    total = sum(mass.values())
    words = " / ".join(sorted({t for texts in readings.values() for t in texts}))
    if total <= 0.0:
        raise RewardError(
            f"{where}: none of the verdict tokens ({words}) is among the {len(top)} top logprobs at the verdict "
            "position, so the guard's answer cannot be read (failing closed)"
        )
    if total < min_mass:
        raise RewardError(
            f"{where}: the verdict tokens ({words}) hold only {total:.3g} of the probability at the verdict "
            f"position, under min_verdict_mass={min_mass:g} (failing closed)"
        )
    return Verdict({verdict: value / total for verdict, value in mass.items()}, total)


def safe_probability(verdict: Verdict, controversial: str) -> float:
    """P(safe); Qwen3Guard's Controversial counts as unsafe (strict) or as safe (loose)."""
    safe = verdict.probabilities.get(SAFE, 0.0)
    if controversial == "safe":
        safe += verdict.probabilities.get(CONTROVERSIAL, 0.0)
    return min(1.0, max(0.0, safe))


class ServedGuardReward:
    """Scores partial answers with a served guard model (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        family: str,
        model: str | None = None,
        categories: Sequence[str] | None = None,
        controversial: str = "unsafe",
        top_logprobs: int = 20,
        max_batch_size: int = 64,
        min_verdict_mass: float = DEFAULT_MIN_VERDICT_MASS,
        report_categories: bool = False,
        safety_floor: float | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if controversial not in ("unsafe", "safe"):
            raise ConfigError(f"controversial must be 'unsafe' or 'safe' (got {controversial!r})")
        if controversial != "unsafe" and family != "qwen3guard":
            raise ConfigError("controversial= applies to the qwen3guard family only")
        if top_logprobs < 2:
            raise ConfigError(f"top_logprobs must be at least 2 (got {top_logprobs})")
        self.family: GuardFamily = _guard_prompts.family(family, categories)
        if report_categories and not self.family.category_tokens:
            raise ConfigError(
                f"report_categories applies to families that name a category ({self.family.name} does not)"
            )
        self.report_categories = report_categories
        self.base_url = server_root(base_url)
        self.client = HTTPClient(
            self.base_url,
            error_type=RewardError,
            service=f"guard model ({self.family.name}, /v1/completions)",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self.model = model
        self.controversial = controversial
        self.top_logprobs = top_logprobs
        self.max_batch_size = max(1, max_batch_size)
        self.min_verdict_mass = min_verdict_mass
        self._floor = self.family.default_floor if safety_floor is None else safety_floor
        self._words: list[VerdictWord] | None = None
        self._lock = threading.Lock()
        self.retries = 0

    @property
    def name(self) -> str:
        return f"guard:{self.family.name}:{self.model or self.base_url}"

    @property
    def policy_components(self) -> tuple[str, ...]:
        return tuple(f"unsafe:{policy}" for policy in self.family.policies)

    @property
    def category_components(self) -> tuple[str, ...]:
        return tuple(f"unsafe:{code}" for code in self.family.category_tokens) if self.report_categories else ()

    @property
    def capabilities(self) -> RewardCapabilities:
        """`safety` (P(safe)) with the family's floor; P(unsafe), the verdict tokens' mass, and per
        policy its P(unsafe) where the family judges several; batched over requests."""
        extra = (CONTROVERSIAL,) if CONTROVERSIAL in self.family.verdicts else ()
        return RewardCapabilities(
            components=("safety", UNSAFE, *extra, "verdict_mass", *self.policy_components, *self.category_components),
            safety_floor=self._floor,
            batched_scoring=True,
        )

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return self.score_many([(as_conversation(conversation), responses)])[0]

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        """Every item's responses in as few requests as the batch size allows (one per chunk)."""
        prompts: list[str] = []
        for conversation, responses in items:
            turns = as_conversation(conversation)
            for response in responses:
                prompts.extend(prompt.text for prompt in self.family.prompts(turns, response))
        verdicts = self.read(prompts)
        named = self.read_categories(prompts) if self.report_categories else None
        per = max(1, len(self.family.policies))
        results: list[RewardScores] = []
        at = 0
        for _, responses in items:
            names = (
                "safety",
                UNSAFE,
                CONTROVERSIAL,
                "verdict_mass",
                *self.policy_components,
                *self.category_components,
            )
            components: dict[str, list[float]] = {name: [] for name in names}
            for _ in responses:
                group = verdicts[at : at + per]
                at += per
                safeties = [safe_probability(verdict, self.controversial) for verdict in group]
                safety = min(safeties)
                components["safety"].append(safety)
                components[UNSAFE].append(1.0 - safety)
                components[CONTROVERSIAL].append(max(v.probabilities.get(CONTROVERSIAL, 0.0) for v in group))
                components["verdict_mass"].append(min(verdict.mass for verdict in group))
                for name, value in zip(self.policy_components, safeties, strict=False):
                    components[name].append(1.0 - value)
                if named is not None:  # P(unsafe) * P(this category | unsafe)
                    for code, value in named[at - per].probabilities.items():
                        components[f"unsafe:{code}"].append((1.0 - safety) * value)
            if CONTROVERSIAL not in self.family.verdicts:
                del components[CONTROVERSIAL]
            results.append(RewardScores(list(components["safety"]), components))
        return results

    def read(self, prompts: Sequence[str]) -> list[Verdict]:
        """The verdict of each rendered prompt, in order (batched; see the module docstring)."""
        readings = self.readings()
        verdicts: list[Verdict] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = list(prompts[start : start + self.max_batch_size])
            for index, top in enumerate(self._complete(chunk)):
                where = f"guard {self.family.name} at {self.base_url} (prompt {start + index})"
                verdicts.append(verdict_probabilities(top, readings, where=where, min_mass=self.min_verdict_mass))
        return verdicts

    def read_categories(self, prompts: Sequence[str]) -> list[Verdict]:
        """Per prompt, P(category | unsafe): the answer is written up to the category's number
        (`unsafe\\nS`) and the number tokens' mass is read there, one more batched request."""
        readings = {code: {number} for code, number in self.family.category_tokens.items()}
        self.verdict_words()  # checks the numbers are single tokens
        prefix = self.family.category_prefix or ""
        named: list[Verdict] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = [prompt + prefix for prompt in prompts[start : start + self.max_batch_size]]
            for index, top in enumerate(self._complete(chunk, after=None)):
                where = f"guard {self.family.name} at {self.base_url} (category of prompt {start + index})"
                named.append(verdict_probabilities(top, readings, where=where))
        return named

    def verdict_position(self, prompts: Sequence[str]) -> list[list[tuple[str, float]]]:
        """The raw (token text, logprob) pairs at each prompt's verdict position (for `stars-guard doctor`)."""
        return self._complete(list(prompts))

    def verdict_words(self) -> list[VerdictWord]:
        """How the server's tokenizer spells each verdict word (asked once, then kept)."""
        with self._lock:
            if self._words is None:
                self._words = self._learn_words()
            return self._words

    def readings(self) -> dict[str, set[str]]:
        """Per class, the normalised token texts read for it at the verdict position."""
        readings: dict[str, set[str]] = {verdict: set() for verdict in self.family.verdicts}
        for word in self.verdict_words():
            readings[word.verdict].update({_norm(word.word), word.read_as})
        return readings

    def close(self) -> None:
        self.client.close()

    # Internals ------------------------------------------------------------------------------------

    def _learn_words(self) -> list[VerdictWord]:
        """Each verdict word's tokens through `/tokenize` (vLLM and llama-server both have it); a word
        of several tokens is read by its first non-blank token, which must differ between classes."""
        words: list[VerdictWord] = []
        for verdict, spellings in self.family.verdicts.items():
            for spelling in spellings:
                try:
                    ids = self._tokenize(spelling)
                except StarsGuardError as exc:
                    if getattr(exc, "status_code", None) in (404, 405, 501):
                        words.append(VerdictWord(verdict, spelling, None, _norm(spelling)))
                        continue
                    raise
                words.append(VerdictWord(verdict, spelling, len(ids), self._first_piece(ids, spelling)))
        for code, number in self.family.category_tokens.items() if self.report_categories else ():
            if len(self._tokenize(number)) != 1:
                raise RewardError(
                    f"guard {self.family.name} at {self.base_url}: the category number {number!r} ({code}) is several "
                    "tokens in this server's tokenizer, so the category cannot be read (report_categories needs the "
                    "guard's own tokenizer, where each is one token)"
                )
        owners: dict[str, str] = {}
        for word in words:
            owner = owners.setdefault(word.read_as, word.verdict)
            if owner != word.verdict or not word.read_as:
                raise RewardError(
                    f"guard {self.family.name} at {self.base_url}: the verdict words {owner!r} and {word.verdict!r} "
                    f"start with the same token {word.read_as!r} in this server's tokenizer, so their probabilities "
                    "cannot be told apart (is this the guard model the family expects?)"
                )
        return words

    def _tokenize(self, text: str) -> list[int]:
        body: dict[str, Any] = {"prompt": text, "content": text, "add_special_tokens": False, "add_special": False}
        if self.model:
            body["model"] = self.model
        result = self.client.post("/tokenize", body)
        tokens = result.data.get("tokens") if isinstance(result.data, dict) else None
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
            raise RewardError(f"guard at {self.base_url}: /tokenize returned {str(result.data)[:200]} for {text!r}")
        return tokens

    def _first_piece(self, ids: list[int], spelling: str) -> str:
        """The normalised text of the word's first token with any text (a leading lone space token is skipped)."""
        if len(ids) == 1:
            return _norm(spelling)
        for count in range(1, len(ids) + 1):
            body: dict[str, Any] = {"tokens": ids[:count]}
            if self.model:
                body["model"] = self.model
            data = self.client.post("/detokenize", body).data
            text = (data.get("prompt") or data.get("content")) if isinstance(data, dict) else None
            if not isinstance(text, str):
                raise RewardError(f"guard at {self.base_url}: /detokenize returned {str(data)[:200]}")
            if _norm(text):
                return _norm(text)
        return _norm(spelling)

    def _complete(self, prompts: list[str], after: str | None = "") -> list[list[tuple[str, float]]]:
        """One `/v1/completions` call for `prompts`: per prompt, the top logprobs at the verdict position
        (the first generated token, or the one after `after`; "": the family's own)."""
        if after == "":
            after = self.family.verdict_after
        body: dict[str, Any] = {
            "prompt": prompts,
            "max_tokens": 1 if after is None else WILDGUARD_MAX_TOKENS,
            "temperature": 0,
            "logprobs": self.top_logprobs,
        }
        if self.model:
            body["model"] = self.model
        result = self.client.post("/v1/completions", body)
        self.retries += result.retries
        choices = result.data.get("choices") if isinstance(result.data, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts):
            raise RewardError(
                f"guard at {self.base_url} returned {str(result.data)[:200]} for {len(prompts)} prompts "
                "(a /v1/completions that takes a list of prompts is needed)"
            )
        indices = [choice.get("index") if isinstance(choice, dict) else None for choice in choices]
        if sorted(index for index in indices if isinstance(index, int)) != list(range(len(prompts))):
            raise RewardError(  # a choice judged against another candidate's verdict would be a silent pass
                f"guard at {self.base_url} returned choices with indices {indices}, not one for each of "
                f"the {len(prompts)} prompts"
            )
        ordered = sorted(choices, key=lambda choice: choice["index"])
        try:
            return [self._verdict_position(choice, after) for choice in ordered]
        except (KeyError, TypeError, ValueError) as exc:  # a malformed answer: fail closed, as a reward error
            raise RewardError(f"guard at {self.base_url} returned a malformed completion: {exc!r}") from exc

    def _verdict_position(self, choice: Any, after: str | None) -> list[tuple[str, float]]:
        tokens, tops = _positions(choice, self.base_url)
        if after is None:
            return tops[0]
        text = ""
        for index, token in enumerate(tokens):
            if text.rstrip(" ").endswith(after):
                return tops[index]
            text += token
        raise RewardError(
            f"guard {self.family.name} at {self.base_url}: its answer {text[:200]!r} has no {after!r} line within "
            f"{WILDGUARD_MAX_TOKENS} tokens, so the response verdict cannot be read (failing closed)"
        )


def _positions(choice: Any, base_url: str) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """Per generated token, its text and top logprobs, from either logprobs shape a completions
    server answers with: OpenAI's legacy `{tokens, top_logprobs: [{text: logprob}]}` (vLLM) or the
    chat-style `{content: [{token, top_logprobs: [{token, logprob}]}]}` (llama-server)."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(logprobs, dict):
        raise RewardError(
            f"guard at {base_url} returned no logprobs ({str(choice)[:200]}): the server must support `logprobs` "
            "on /v1/completions (vLLM: --max-logprobs at least top_logprobs)"
        )
    if isinstance(logprobs.get("content"), list):
        tokens: list[str] = []
        tops: list[list[tuple[str, float]]] = []
        for entry in logprobs["content"]:
            tokens.append(str(entry.get("token", "")))
            tops.append([(str(top.get("token", "")), float(top["logprob"])) for top in entry.get("top_logprobs") or []])
    else:
        tokens = [str(token) for token in logprobs.get("tokens") or []]
        tops = [[(str(k), float(v)) for k, v in (top or {}).items()] for top in logprobs.get("top_logprobs") or []]
    if not tops or not tops[0] or len(tops) != len(tokens):
        raise RewardError(
            f"guard at {base_url} returned no top logprobs ({str(logprobs)[:200]}): the server must support "
            "`logprobs` on /v1/completions"
        )
    return tokens, tops
