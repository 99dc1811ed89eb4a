"""Spec strings for `--backend` and `--reward`, and the registry behind them.

A spec is `NAME` or `NAME:ARGUMENT` (for example `hf:/models/my-lm`). Built-in names are
registered here; third-party packages add theirs through the entry-point groups
`stars_guard.backends` and `stars_guard.rewards` (each entry point is a factory taking the
argument string or None). Remote specs take options after `?` (`openai:http://host:8000?tokenizer=/models/x`);
a bearer token for remote servers comes from `$STARS_GUARD_API_KEY`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from stars_guard.errors import SpecError
from stars_guard.protocols import Backend, RewardModel


@dataclass(frozen=True)
class SpecEntry:
    """A registered spec: its factory and the form users type."""

    factory: Callable[[str | None], Any]
    usage: str
    needs_argument: bool = False
    options: frozenset[str] | None = None  # the `?key=value` options it takes; None: not split (path, plugin)


OPENAI_OPTIONS = frozenset({"model", "tokenizer", "block_size"})
TGI_OPTIONS = frozenset({"tokenizer"})
LLAMACPP_OPTIONS = frozenset({"n_ctx", "n_threads"})
HF_REWARD_OPTIONS = frozenset({"input_form", "label_index", "max_length"})
TEI_OPTIONS = frozenset({"label"})
VLLM_CLASSIFY_OPTIONS = frozenset({"model", "tokenizer", "label_index"})
SERVED_GUARD_OPTIONS = frozenset(
    {"family", "model", "categories", "controversial", "top_logprobs", "min_verdict_mass", "report_categories"}
)
OPENAI_MODERATION_OPTIONS = frozenset({"model", "per_category"})


def server_root(base_url: str) -> str:
    """A server's root from the base URL a user gives: OpenAI clients take `.../v1`, the adapters'
    routes are written from the root (`/v1/completions`, `/tokenize`), so a trailing `/v1` is dropped."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _local_backend(_: str | None) -> Backend:
    from stars_guard.adapters.transformers_backend import TransformersBackend

    return TransformersBackend()


def _hf_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.transformers_backend import TransformersBackend

    return TransformersBackend(argument)


def _openai_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.openai_backend import OpenAICompletionsBackend

    url, options = split_options("openai", argument, OPENAI_OPTIONS)
    block_size = _integer("openai", "block_size", options.pop("block_size")) if "block_size" in options else None
    if block_size is not None and block_size < 1:
        raise SpecError(f"spec 'openai': option block_size= takes a positive number of tokens (got {block_size})")
    return OpenAICompletionsBackend(url, api_key=_api_key(), block_size=block_size, **options)


def _llama_server_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.llamaserver_backend import LlamaServerBackend

    url, _ = split_options("llama-server", argument, set())
    return LlamaServerBackend(url, api_key=_api_key())


def _tgi_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.tgi_backend import TGIBackend

    url, options = split_options("tgi", argument, TGI_OPTIONS)
    return TGIBackend(url, api_key=_api_key(), **options)


def _llamacpp_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.llamacpp_backend import LlamaCppBackend

    path, options = split_options("llamacpp", argument, LLAMACPP_OPTIONS)
    return LlamaCppBackend(path or None, **{key: _integer("llamacpp", key, value) for key, value in options.items()})


def _guard_reward(_: str | None) -> RewardModel:
    from stars_guard.adapters.guard_reward import GuardReward

    return GuardReward()


def _hf_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.transformers_reward import TransformersRewardModel

    path, options = split_options("hf", argument, HF_REWARD_OPTIONS)
    numbers = {key: _integer("hf", key, options.pop(key)) for key in ("label_index", "max_length") if key in options}
    return TransformersRewardModel(path, **options, **numbers)  # type: ignore[arg-type]


def _tei_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.tei_reward import TEIRewardModel

    url, options = split_options("tei", argument, TEI_OPTIONS)
    return TEIRewardModel(url, api_key=_api_key(), **options)


def _vllm_classify_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.vllm_classify_reward import VLLMClassifyRewardModel

    url, options = split_options("vllm-classify", argument, VLLM_CLASSIFY_OPTIONS)
    numbers = (
        {"label_index": _integer("vllm-classify", "label_index", options.pop("label_index"))}
        if "label_index" in options
        else {}
    )
    return VLLMClassifyRewardModel(url, api_key=_api_key(), **options, **numbers)  # type: ignore[arg-type]


def _judge_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.judge_reward import LLMJudgeReward

    return LLMJudgeReward(argument)


def _served_guard_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.served_guard_reward import ServedGuardReward

    url, options = split_options("guard", argument, SERVED_GUARD_OPTIONS)
    if "family" not in options:
        raise SpecError(
            "spec 'guard' needs ?family=NAME (llama-guard-3, shieldgemma, granite-guardian, qwen3guard, wildguard)"
        )
    categories = [name for name in options.pop("categories", "").split(",") if name] or None
    numbers: dict[str, Any] = {}
    if "top_logprobs" in options:
        numbers["top_logprobs"] = _integer("guard", "top_logprobs", options.pop("top_logprobs"))
    if "report_categories" in options:
        numbers["report_categories"] = options.pop("report_categories").lower() in ("1", "true", "yes")
    if "min_verdict_mass" in options:
        try:
            numbers["min_verdict_mass"] = float(options.pop("min_verdict_mass"))
        except ValueError:
            raise SpecError("spec 'guard': option min_verdict_mass must be a number") from None
    return ServedGuardReward(url, api_key=_api_key(), categories=categories, **options, **numbers)  # type: ignore[arg-type]


def _openai_moderation_reward(argument: str | None) -> RewardModel:
    from stars_guard.adapters.openai_moderation_reward import OpenAIModerationReward

    url, options = split_options("openai-moderation", argument, OPENAI_MODERATION_OPTIONS)
    per_category = options.pop("per_category", "false").lower() in ("1", "true", "yes")
    return OpenAIModerationReward(url, api_key=_api_key(), per_category=per_category, **options)


BACKENDS: dict[str, SpecEntry] = {
    "local": SpecEntry(_local_backend, "local  (embedded SmolLM2-135M-Instruct, after `stars-guard models pull`)"),
    "hf": SpecEntry(_hf_backend, "hf:<hub-id, directory or .gguf file>  (any Hugging Face causal LM)", True),
    "openai": SpecEntry(
        _openai_backend,
        "openai:<URL>[?model=NAME&tokenizer=PATH&block_size=N]  (/v1/completions of vLLM, SGLang, llama.cpp server)",
        True,
        OPENAI_OPTIONS,
    ),
    "llama-server": SpecEntry(
        _llama_server_backend,
        "llama-server:<URL>  (llama.cpp's llama-server /completion: token ids, n_cmpl)",
        True,
        frozenset(),
    ),
    "tgi": SpecEntry(
        _tgi_backend, "tgi:<URL>[?tokenizer=PATH]  (text-generation-inference /generate)", True, TGI_OPTIONS
    ),
    "llamacpp": SpecEntry(
        _llamacpp_backend,
        "llamacpp[:<.gguf file>][?n_ctx=N&n_threads=N]  (llama-cpp-python in process; default: the pulled SmolLM2)",
        options=LLAMACPP_OPTIONS,
    ),
}
REWARDS: dict[str, SpecEntry] = {
    "default": SpecEntry(_guard_reward, "default  (GuardReward: offline safety + relevance)"),
    "hf": SpecEntry(
        _hf_reward,
        "hf:<hub-id or directory>[?input_form=pair|chat&label_index=N]  (sequence-classification reward model)",
        True,
        HF_REWARD_OPTIONS,
    ),
    "tei": SpecEntry(
        _tei_reward, "tei:<URL>[?label=NAME]  (TEI /predict, or stars-guard serve-reward)", True, TEI_OPTIONS
    ),
    "vllm-classify": SpecEntry(
        _vllm_classify_reward,
        "vllm-classify:<URL>[?model=NAME&tokenizer=PATH&label_index=N]  (vLLM /classify reward model)",
        True,
        VLLM_CLASSIFY_OPTIONS,
    ),
    "judge": SpecEntry(
        _judge_reward, "judge[:<hub-id, directory or .gguf file>]  (P(safe) from a causal LM judge; default SmolLM2)"
    ),
    "guard": SpecEntry(
        _served_guard_reward,
        "guard:<URL>?family=NAME[&model=NAME&categories=A,B&controversial=unsafe|safe&top_logprobs=N"
        "&report_categories=true]  "
        "(P(safe) from a served guard model's verdict logprobs: llama-guard-3, shieldgemma, granite-guardian, "
        "qwen3guard, wildguard)",
        True,
        SERVED_GUARD_OPTIONS,
    ),
    "openai-moderation": SpecEntry(
        _openai_moderation_reward,
        "openai-moderation:<URL>[?model=NAME&per_category=true]  (1 - the highest category score of /v1/moderations)",
        True,
        OPENAI_MODERATION_OPTIONS,
    ),
}
API_KEY_ENV = "STARS_GUARD_API_KEY"


def split_options(name: str, argument: str | None, allowed: Collection[str]) -> tuple[str, dict[str, str]]:
    """`target?key=value&...` into the target and its options; unknown options are a `SpecError`."""
    target, _, query = (argument or "").partition("?")
    options: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        key, sep, value = pair.partition("=")
        if not sep or key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise SpecError(f"spec {name!r}: unknown option {pair!r} (valid options: {valid})")
        options[key] = value
    return target, options


def _integer(name: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SpecError(f"spec {name!r}: option {key} must be an integer (got {value!r})") from None


def _api_key() -> str | None:
    """Bearer token for HTTP servers, from the environment (never from a spec: specs end up in logs)."""
    return os.environ.get(API_KEY_ENV) or None


_ENTRY_POINT_GROUPS = {"backend": "stars_guard.backends", "reward": "stars_guard.rewards"}


def build_backend(spec: str) -> Backend:
    """A backend from a spec string such as `local` or `hf:/path/to/model`."""
    return _build("backend", BACKENDS, spec)


def build_reward(spec: str) -> RewardModel:
    """A reward model from a spec string such as `default`."""
    return _build("reward", REWARDS, spec)


def valid_specs(kind: str) -> list[str]:
    registry = BACKENDS if kind == "backend" else REWARDS
    return [entry.usage for entry in _with_plugins(kind, registry).values()]


def check_spec(kind: str, spec: str) -> str:
    """The spec's name, once `spec` is known to be well formed; builds nothing and imports nothing heavy.

    For a model that resolves its spec on first use (`STARSChatModel(backend="hf:...")`): a typo
    fails where it was written, not at the first request. Raises `SpecError` as building would.
    """
    return _entry(kind, spec)[0]


def _entry(kind: str, spec: str) -> tuple[str, SpecEntry, str]:
    if kind not in _ENTRY_POINT_GROUPS:
        raise ValueError(f"kind must be 'backend' or 'reward' (got {kind!r})")
    registry = BACKENDS if kind == "backend" else REWARDS
    name, _, argument = spec.strip().partition(":")
    entries = _with_plugins(kind, registry)
    entry = entries.get(name)
    if entry is None:
        listing = "\n  ".join(entry.usage for entry in entries.values())
        raise SpecError(f"unknown {kind} spec {spec!r}; valid {kind} specs:\n  {listing}")
    if entry.needs_argument and not argument:
        raise SpecError(f"{kind} spec {name!r} needs an argument: {entry.usage}")
    if entry.options is not None:
        split_options(name, argument, entry.options)
    return name, entry, argument


def _build(kind: str, registry: dict[str, SpecEntry], spec: str) -> Any:
    _, entry, argument = _entry(kind, spec)
    return entry.factory(argument or None)


def _with_plugins(kind: str, registry: dict[str, SpecEntry]) -> dict[str, SpecEntry]:
    """Built-ins first; an installed plugin may add names but not replace a built-in."""
    merged = dict(registry)
    for point in entry_points(group=_ENTRY_POINT_GROUPS[kind]):
        if point.name not in merged:
            merged[point.name] = SpecEntry(
                lambda argument, point=point: point.load()(argument), f"{point.name}[:ARG]  (plugin {point.value})"
            )
    return merged
