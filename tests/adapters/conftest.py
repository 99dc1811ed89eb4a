"""Fixtures for the adapter tests: real models loaded once, real servers on 127.0.0.1 started and stopped here.

Everything binds 127.0.0.1 on free ports, waits a bounded time to start, and is stopped at the end
of the session (or of its test) even when a test fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stars_guard.models import default_lm_dir, default_lm_gguf
from tests.adapters import servers

TINY_CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
SAFE_TEXTS = [
    "Sure, here is a friendly and helpful answer.",
    "I am happy to help you with your garden.",
    "Water the plants every morning and keep them in the shade.",
    "Thank you for asking, this is a kind question.",
    "Here is a recipe for a healthy vegetable soup.",
    "You can ask your neighbour to look after the plants.",
    "Reading a good book is a nice way to relax.",
    "Please be careful and stay safe on the road.",
]
UNSAFE_TEXTS = [
    "You are a stupid idiot and I hate you.",
    "Shut up, you worthless moron.",
    "I will hurt you, you pathetic fool.",
    "Go away, idiot, nobody likes you.",
    "You dumb loser, I hate your stupid face.",
    "Hurt them badly, those worthless idiots.",
    "Hate and violence, you moron.",
    "Stupid worthless people deserve pain.",
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread while these tests run (restored after each).

    These tests share 2 cores with model servers and, often, other test runs; torch's OpenMP
    workers spin at barriers, and under that contention 2 threads were measured 100x slower than 1.
    """
    with torch_threads(1):
        yield


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch on `count` threads while the block runs; nothing to do where torch is not installed
    (the interpreter matrix runs these tests without it)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def gguf() -> Path:
    path = default_lm_gguf()
    if not path.is_file():
        pytest.fail(f"the SmolLM2 GGUF is missing at {path}: run `stars-guard models pull`")
    return path


@pytest.fixture(scope="session")
def lm_dir() -> Path:
    return default_lm_dir()


@pytest.fixture(scope="session")
def llamacpp_backend(gguf: Path) -> Any:
    from stars_guard.adapters import LlamaCppBackend

    return LlamaCppBackend(gguf, n_ctx=2048, n_threads=1)


@pytest.fixture(scope="session")
def llama_cpp_python_server(gguf: Path) -> Iterator[servers.ServerProcess]:
    """A real `python -m llama_cpp.server` running the SmolLM2 GGUF."""
    with servers.llama_server(gguf, servers.free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def llama_model(gguf: Path) -> Iterator[servers.LlamaModel]:
    """The model behind the TGI and vLLM contract servers."""
    model = servers.LlamaModel(gguf)
    yield model
    model.llm.close()


@pytest.fixture(scope="session")
def reward_service() -> Iterator[servers.ServerProcess]:
    """`stars-guard serve-reward` (default GuardReward) through the real CLI, batch limit 4."""
    with servers.serve_reward(servers.free_port(), "--max-client-batch-size", "4") as server:
        yield server


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BERT sequence-classification reward model, built and trained here, saved like any HF model.

    Word-level tokenizer over the toy vocabulary, one output logit, trained for a few seconds to
    score polite answers above insults, with a chat template so both input forms can be tested.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-reward")
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = SAFE_TEXTS + UNSAFE_TEXTS + ["user assistant : how do i keep my plants alive ?"]
    raw.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], min_frequency=1)
    )
    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.model_max_length = 64
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=64,  # two heads of 32: the smallest head vLLM's CPU attention takes
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=1,
        pad_token_id=raw.token_to_id("[PAD]"),
    )
    model = BertForSequenceClassification(config)
    texts = SAFE_TEXTS + UNSAFE_TEXTS
    labels = torch.tensor([1.0] * len(SAFE_TEXTS) + [-1.0] * len(UNSAFE_TEXTS))
    batch = tokenizer(["How do I keep my plants alive?"] * len(texts), texts, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with torch_threads(1):  # session fixtures start before the autouse one above
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(**batch).logits.squeeze(-1), labels)
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
