"""`stars-guard doctor`: check a backend and a reward spec end to end, and say what STARS will do with them.

A user pointing STARS at their own server wants to know in seconds whether exact continuation and
cost accounting hold. The doctor builds both from their specs, opens one generation on a short
prompt, drafts two timed rounds of K candidates (committing one in between, as the engine does),
scores them, and reports each fact it could establish and each it could not, with what follows.

A served guard model (`--reward guard:URL?family=...`) is checked on its own as well, whether or
not the backend works: the server is reachable, it returns logprobs on `/v1/completions`, each
verdict word is one token in its tokenizer (or which first token stands for it), and one timed
batch of answers is read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stars_guard.capabilities import generation_capabilities
from stars_guard.config import AUTO_SEGMENT_SIZE
from stars_guard.engine import checked_scores, resolve_safety_floor
from stars_guard.errors import StarsGuardError
from stars_guard.messages import normalize_messages
from stars_guard.protocols import (
    Backend,
    Generation,
    OpenRequest,
    RewardModel,
    backend_retries,
    cache_alignment,
    score_conversation,
)

PROBE = "Give me one tip for keeping houseplants alive."


@dataclass(frozen=True)
class Finding:
    """One checked fact: `ok` False is something STARS cannot do (or could not check) with this setup."""

    topic: str
    ok: bool
    detail: str


@dataclass
class Diagnosis:
    backend: str
    reward: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Reachable and usable: every failure is a limitation, not a fault."""
        faults = ("backend", "reward", "drafting", "scoring", "guard server", "guard logprobs", "guard batch")
        return not any(f.topic in faults and not f.ok for f in self.findings)

    def add(self, topic: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(topic, ok, detail))

    def render(self) -> str:
        lines = [f"backend {self.backend}", f"reward  {self.reward}", ""]
        lines += [f"  [{'ok' if f.ok else '--'}] {f.topic}: {f.detail}" for f in self.findings]
        lines += [
            "",
            "verdict: " + ("STARS can run on this setup" if self.healthy else "STARS cannot run on this setup"),
        ]
        return "\n".join(lines)


def diagnose(
    backend_spec: str,
    reward_spec: str,
    *,
    segment_size: int = 8,
    candidates: int = 4,
    build_backend: Callable[[str], Backend] | None = None,
    build_reward: Callable[[str], RewardModel] | None = None,
) -> Diagnosis:
    """Check `backend_spec` and `reward_spec` (see `stars-guard chat --help` for the spec forms)."""
    report = Diagnosis(backend_spec, reward_spec)
    _diagnose(report, backend_spec, reward_spec, segment_size, candidates, build_backend, build_reward)
    if _names_served_guard(reward_spec):
        guard = _step(report, "guard server", lambda: (build_reward or _build_reward)(reward_spec))
        if guard is not None:
            check_served_guard(report, guard)
    return report


def _diagnose(
    report: Diagnosis,
    backend_spec: str,
    reward_spec: str,
    segment_size: int,
    candidates: int,
    build_backend: Callable[[str], Backend] | None,
    build_reward: Callable[[str], RewardModel] | None,
) -> Diagnosis:
    from stars_guard import specs
    from stars_guard.config import STARSConfig

    backend = _step(report, "backend", lambda: (build_backend or specs.build_backend)(backend_spec))
    if backend is None:
        return report
    model = _step(report, "backend", lambda: backend.model_name)  # may be the first call to the server
    if model is None:
        return report
    report.add("backend", True, f"model {model!r}, {_kind(backend)}")
    messages = normalize_messages(PROBE)
    started = time.perf_counter()
    generation = _step(report, "drafting", lambda: backend.open(OpenRequest(messages, 4 * segment_size, 0.8, 0.95, 0)))
    if generation is None:
        return report
    opened = time.perf_counter() - started
    report.add("prompt", True, f"{generation.prompt_tokens} prompt tokens, opened in {opened * 1000:.0f} ms")
    context = _context(backend)
    report.add("context length", context is not None, f"{context} tokens" if context else "not reported by the backend")
    rounds = _step(report, "drafting", lambda: _two_rounds(generation, segment_size, candidates))
    generation.close()
    if rounds is None:
        return report
    first, second, timings, forwards = rounds
    report.add(
        "drafting",
        True,
        f"{len(first)} candidates of up to {segment_size} tokens in {generation.llm_calls} calls "
        f"over 2 rounds; round times {', '.join(f'{t * 1000:.0f} ms' for t in timings)}",
    )
    report.add(*_continuation(backend))
    report.add(*_batching(backend, generation, candidates))
    if forwards[0] is None:
        report.add("cost accounting", False, "llm_forward_tokens unknown (the server reports no cached tokens)")
    else:
        report.add("cost accounting", True, f"llm_forward_tokens reported: {forwards[-1]} after 2 rounds")
        fresh = (forwards[1] or 0) - forwards[0]
        prefix = generation.prompt_tokens * candidates
        reused = fresh < prefix
        verdict = "the prefix was reused" if reused else "no prefix reuse seen: each round recomputes it"
        report.add(
            "prefix cache",
            reused,
            f"round 2 computed {fresh} token positions for {candidates} candidates on a "
            f"{generation.prompt_tokens}-token prompt ({verdict})",
        )
    if generation_capabilities(generation).cache_blocks:
        alignment = cache_alignment(generation)
        report.add(
            "cache blocks",
            alignment is not None,
            "no prefix-cache hit seen yet, so the block size is unknown (segment_size='auto' drafts "
            f"{AUTO_SEGMENT_SIZE}-token segments until one is)"
            if alignment is None
            else f"the server caches prompts in blocks of {alignment[0]} tokens (learnt from cached_tokens): "
            "segment_size='auto' ends each segment one token past a block boundary, so no round recomputes "
            "a block's tail",
        )
    if generation_capabilities(generation).reports_retries:
        report.add("retries", True, f"{backend_retries(generation)} backend retries")

    reward = _step(report, "reward", lambda: (build_reward or specs.build_reward)(reward_spec))
    if reward is None:
        return report
    texts = [candidate.text for candidate in second]
    started = time.perf_counter()
    scores = _step(report, "scoring", lambda: score_conversation(reward, tuple(messages), texts))
    if scores is None:
        return report
    elapsed = time.perf_counter() - started
    try:
        values = checked_scores(reward.name, "reward", scores.reward, len(texts))
    except StarsGuardError as exc:
        report.add("scoring", False, f"{exc} (the engine treats this as a reward failure)")
        return report
    report.add("scoring", True, f"{len(values)} texts in {elapsed * 1000:.0f} ms, rewards {_span(values)}")
    floor = resolve_safety_floor(STARSConfig(), reward)
    safety = scores.safety
    if floor is None:
        report.add("veto", False, "no calibrated floor: the default safety_floor='auto' means no veto (set one)")
    else:
        source = "its safety component" if safety is not None else "the reward itself"
        report.add("veto", True, f"safety_floor='auto' vetoes at {floor:g} on {source}")
    return report


def _build_reward(spec: str) -> RewardModel:
    from stars_guard import specs

    return specs.build_reward(spec)


def _names_served_guard(reward_spec: str) -> bool:
    from stars_guard import specs

    try:
        return specs.check_spec("reward", reward_spec) == "guard"
    except StarsGuardError:
        return False  # the reward step has reported the bad spec


GUARD_PROBE_ANSWERS = (
    "Keep the soil moist and give it bright, indirect light.",
    "Water it once a week.",
    "Sure, here is how to hurt someone.",
    "I can't help with that.",
)


def check_served_guard(report: Diagnosis, guard: Any) -> None:
    """The served guard's own checks (a `ServedGuardReward`): each failure says what to fix."""
    from stars_guard.adapters.served_guard_reward import ServedGuardReward

    if not isinstance(guard, ServedGuardReward):
        return
    served = _step(report, "guard server", lambda: guard.client.get("/v1/models").data)
    if served is None:
        return
    names = (
        [str(m.get("id")) for m in served.get("data", []) if isinstance(m, dict)] if isinstance(served, dict) else []
    )
    if guard.model and names and guard.model not in names:
        report.add("guard server", False, f"{guard.base_url} does not serve {guard.model!r} (it serves {names})")
        return
    report.add("guard server", True, f"{guard.base_url} reachable, serving {', '.join(names) or 'an unnamed model'}")
    messages = normalize_messages(PROBE)
    prompt = guard.family.prompts(messages, GUARD_PROBE_ANSWERS[0])[0].text
    top = _step(report, "guard logprobs", lambda: guard.verdict_position([prompt])[0])
    if top is None:
        return
    report.add("guard logprobs", True, f"{len(top)} top logprobs at the verdict position (asked {guard.top_logprobs})")
    words = _step(report, "guard verdict words", guard.verdict_words)
    if words is None:
        return
    for word in words:
        if word.tokens is None:
            detail = f"{word.word!r} ({word.verdict}): the server has no /tokenize; read only as a whole token"
            report.add("guard verdict words", False, detail)
        elif word.tokens == 1:
            report.add("guard verdict words", True, f"{word.word!r} ({word.verdict}) is one token")
        else:
            report.add(
                "guard verdict words",
                False,
                f"{word.word!r} ({word.verdict}) is {word.tokens} tokens in this tokenizer: read by its first token "
                f"{word.read_as!r} (is this the {guard.family.name} model?)",
            )
    started = time.perf_counter()
    scores = _step(report, "guard batch", lambda: guard.score_components(messages, list(GUARD_PROBE_ANSWERS)))
    if scores is None:
        return
    elapsed = time.perf_counter() - started
    safety = scores.components["safety"]
    mass = scores.components["verdict_mass"]
    report.add(
        "guard batch",
        True,
        f"{len(safety)} answers in one call, {elapsed * 1000:.0f} ms; P(safe) {_span(list(safety))}, "
        f"verdict tokens hold {_span(list(mass))} of the probability; floor {guard.capabilities.safety_floor:g}",
    )


def _step(report: Diagnosis, topic: str, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:  # a doctor reports; it does not crash
        report.add(topic, False, f"{type(exc).__name__}: {exc}")
        return None


def _two_rounds(generation: Generation, size: int, count: int) -> tuple[list[Any], list[Any], list[float], list[Any]]:
    timings: list[float] = []
    forwards = []
    started = time.perf_counter()
    first = generation.draft(count, size)
    timings.append(time.perf_counter() - started)
    forwards.append(generation.llm_forward_tokens)
    generation.commit(next((c for c in first if c.finish_reason == "length"), first[0]))
    started = time.perf_counter()
    second = generation.draft(count, size)
    timings.append(time.perf_counter() - started)
    forwards.append(generation.llm_forward_tokens)
    return first, second, timings, forwards


def _kind(backend: Backend) -> str:
    name = type(backend).__name__
    return {
        "TransformersBackend": "in process (transformers)",
        "LlamaCppBackend": "in process (llama.cpp)",
        "LlamaServerBackend": "llama-server over HTTP",
        "OpenAICompletionsBackend": "OpenAI-compatible completions server",
        "TGIBackend": "text-generation-inference",
    }.get(name, name)


def _context(backend: Backend) -> int | None:
    for probe in ("context_window", "_max_model_len"):
        value = getattr(backend, probe, None)
        if isinstance(value, int) and value > 0:
            return value
    props = getattr(backend, "props", None)
    context = getattr(props, "context", None)
    return context if isinstance(context, int) and context > 0 else None


def _continuation(backend: Backend) -> tuple[str, bool, str]:
    name = type(backend).__name__
    features = getattr(backend, "features", None)
    if name in ("TransformersBackend", "LlamaCppBackend"):
        return "exact continuation", True, "token ids and the prefix KV cache are kept in process"
    if name == "LlamaServerBackend":
        return "exact continuation", True, "token-id prompts, sampled ids returned (return_tokens)"
    if features is not None and features.token_prompts:
        return "exact continuation", True, "token-id prompts with return_token_ids"
    return (
        "exact continuation",
        False,
        "text prompts only: the server re-tokenises the accepted text (ids may differ at segment boundaries)",
    )


def _batching(backend: Backend, generation: Generation, candidates: int) -> tuple[str, bool, str]:
    features = getattr(backend, "features", None)
    props = getattr(backend, "props", None)
    if features is not None and not features.n_choices:
        return "K per call", False, f"the server ignores n: {candidates} concurrent requests per round"
    if props is not None and getattr(props, "slots", candidates) < candidates:
        return "K per call", False, f"{props.slots} slots: K={candidates} is split over several requests"
    return "K per call", True, f"{candidates} candidates per drafting call"


def _span(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{min(finite):.3g} .. {max(finite):.3g}" if finite else "none finite"
