"""Spec strings for every adapter, and third-party adapters registered through entry points."""

from __future__ import annotations

import textwrap

import pytest

from stars_guard import RewardModel
from stars_guard.adapters import LlamaCppBackend, OpenAICompletionsBackend, TEIRewardModel, TGIBackend
from stars_guard.errors import SpecError
from stars_guard.specs import build_backend, build_reward, split_options, valid_specs


def test_remote_specs_build_without_contacting_the_server(lm_dir):
    openai = build_backend(f"openai:http://127.0.0.1:9/v1?model=m&tokenizer={lm_dir}")
    assert isinstance(openai, OpenAICompletionsBackend) and openai.base_url == "http://127.0.0.1:9"
    assert openai.model_name == "m" and openai.tokenizer is not None
    tgi = build_backend("tgi:http://127.0.0.1:9")
    assert isinstance(tgi, TGIBackend) and tgi.tokenizer is None
    tei = build_reward("tei:http://127.0.0.1:9?label=LABEL_1")
    assert isinstance(tei, TEIRewardModel) and tei.label == "LABEL_1"
    for adapter in (openai, tgi, tei):
        adapter.close()


def test_llamacpp_spec_defaults_to_the_f16_copy_of_the_pulled_gguf(gguf):
    from stars_guard.models import llamacpp_lm_gguf

    backend = build_backend("llamacpp")
    assert isinstance(backend, LlamaCppBackend) and backend.model_path == llamacpp_lm_gguf()
    assert build_backend(f"llamacpp:{gguf}?n_threads=1").n_threads == 1


def test_bad_options_and_missing_arguments_say_what_is_valid():
    with pytest.raises(SpecError, match=r"unknown option 'colour=red' \(valid options: block_size, model, tokenizer\)"):
        build_backend("openai:http://x?colour=red")
    with pytest.raises(SpecError, match="block_size= takes a positive number of tokens"):
        build_backend("openai:http://x?block_size=0")
    assert build_backend("openai:http://x?block_size=32").cache_block_size == 32
    with pytest.raises(SpecError, match="needs an argument"):
        build_reward("tei")
    with pytest.raises(SpecError, match="n_threads must be an integer"):
        build_backend("llamacpp:?n_threads=two")
    assert split_options("x", "path/model.gguf", set()) == ("path/model.gguf", {})
    usages = valid_specs("backend") + valid_specs("reward")
    for name in ("openai:", "tgi:", "llamacpp", "hf:", "tei:", "vllm-classify:", "judge"):
        assert any(usage.startswith(name) for usage in usages), name


@pytest.fixture()
def plugin_package(tmp_path, monkeypatch):
    """An installed third-party package (a dist-info on sys.path) registering a reward and a backend."""
    (tmp_path / "acme_guard.py").write_text(
        textwrap.dedent(
            """
            class LengthReward:
                name = "acme-length"

                def __init__(self, argument):
                    self.scale = float(argument or 1.0)

                def score(self, prompt, responses):
                    return [self.scale * len(text) for text in responses]


            def make_reward(argument):
                return LengthReward(argument)


            def make_backend(argument):
                return ("acme backend", argument)
            """
        )
    )
    info = tmp_path / "acme_guard-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-guard\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[stars_guard.rewards]\nacme-length = acme_guard:make_reward\n"
        "[stars_guard.backends]\nacme = acme_guard:make_backend\nlocal = acme_guard:make_backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    import sys

    sys.modules.pop("acme_guard", None)


def test_entry_point_plugins_register_new_specs(plugin_package):
    reward = build_reward("acme-length:2")
    assert isinstance(reward, RewardModel)
    assert reward.score("q", ["abc", ""]) == [6.0, 0.0]
    assert build_backend("acme:http://example") == ("acme backend", "http://example")
    assert any("acme-length" in usage and "plugin acme_guard:make_reward" in usage for usage in valid_specs("reward"))
    # A plugin may add names, never replace a built-in ("local" is registered by the package too).
    local = [usage for usage in valid_specs("backend") if usage.startswith("local")]
    assert len(local) == 1 and "plugin" not in local[0]
