"""Backends and reward scorers behind the engine's protocols, one file each.

Imported lazily: `from stars_guard.adapters import TransformersBackend` loads torch only then.

Backends with token-level control (token ids, KV cache):
    TransformersBackend       adapters/transformers_backend.py
    LlamaCppBackend           adapters/llamacpp_backend.py     (llama-cpp-python in process)
Backends over HTTP (serving engines):
    OpenAICompletionsBackend  adapters/openai_backend.py       (vLLM, SGLang, llama.cpp server)
    LlamaServerBackend        adapters/llamaserver_backend.py  (llama.cpp's llama-server, token ids)
    TGIBackend                adapters/tgi_backend.py          (text-generation-inference)
Reward scorers:
    GuardReward               adapters/guard_reward.py         (offline default: safety + relevance)
    TransformersRewardModel   adapters/transformers_reward.py  (any sequence-classification reward model)
    TEIRewardModel            adapters/tei_reward.py           (TEI /predict, stars-guard serve-reward)
    VLLMClassifyRewardModel   adapters/vllm_classify_reward.py (vLLM /classify)
    LLMJudgeReward            adapters/judge_reward.py         (P(safe) from a causal LM judge)
    ServedGuardReward         adapters/served_guard_reward.py  (a served guard model: Llama Guard, ShieldGemma, ...)
    OpenAIModerationReward    adapters/openai_moderation_reward.py (OpenAI's moderation API)
    CompositeReward           adapters/composite_reward.py     (weighted sum with a veto)
See docs/adapters.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TransformersBackend": "stars_guard.adapters.transformers_backend",
    "TransformersGeneration": "stars_guard.adapters.transformers_backend",
    "load_causal_lm": "stars_guard.adapters.transformers_backend",
    "GuardReward": "stars_guard.adapters.guard_reward",
    "LlamaCppBackend": "stars_guard.adapters.llamacpp_backend",
    "LlamaCppGeneration": "stars_guard.adapters.llamacpp_backend",
    "OpenAICompletionsBackend": "stars_guard.adapters.openai_backend",
    "OpenAICompletionsGeneration": "stars_guard.adapters.openai_backend",
    "LlamaServerBackend": "stars_guard.adapters.llamaserver_backend",
    "LlamaServerGeneration": "stars_guard.adapters.llamaserver_backend",
    "TGIBackend": "stars_guard.adapters.tgi_backend",
    "TGIGeneration": "stars_guard.adapters.tgi_backend",
    "TransformersRewardModel": "stars_guard.adapters.transformers_reward",
    "TEIRewardModel": "stars_guard.adapters.tei_reward",
    "VLLMClassifyRewardModel": "stars_guard.adapters.vllm_classify_reward",
    "LLMJudgeReward": "stars_guard.adapters.judge_reward",
    "CompositeReward": "stars_guard.adapters.composite_reward",
    "ServedGuardReward": "stars_guard.adapters.served_guard_reward",
    "OpenAIModerationReward": "stars_guard.adapters.openai_moderation_reward",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stars_guard.adapters' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
