"""LangChain's standard chat-model suites against the real embedded default.

Unit tests never generate (they only build models); integration tests run SmolLM2 with the STARS
loop for real, with short answers so the suite stays quick on a laptop CPU. Tool calling, tool
choice, structured output and JSON mode are claimed (`bind_tools`, `with_structured_output`), so
those tests run; multimodal input is not claimed, so the suite skips those tests itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from stars_guard.langchain.chat_model import STARSChatModel

# What the 135M model cannot do, measured (docs/agents.md): a strict xfail, with a variant that passes.
NO_CALL_UNDER_AUTO = (
    "model limit: under tool_choice='auto' the 135M model answers in text instead of calling the tool "
    "(agent loop on the embedded default: 0 of 10 seeds, benchmarks/agent_loop.py); "
    "test_agent_loop_with_the_call_forced runs the same loop with the call forced"
)


# A model limit that shows at a rate, not every run: a non-strict xfail that still fails on any error
# that is not one of the suite's assertions (a crash, a backend or reward error).
COPIES_JAPANESE_AT_A_RATE = (
    "model limit: asked for a customer named 'こんにちは株式会社', the 135M model writes another name in "
    "about one run in four (seeds 0-7 at the defaults: 2 of 8 wrote other Japanese, 'わかりトルの"
    "プログリエイック'; 4 of 8 before a call round followed its majority; one CI run wrote 'A:Hello Corporation')"
)


class TestSTARSChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[STARSChatModel]:
        return STARSChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {}

    @property
    def supports_json_mode(self) -> bool:
        return True


@pytest.mark.integration
@pytest.mark.usefixtures("default_components")
class TestSTARSChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[STARSChatModel]:
        return STARSChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The library's defaults (segments, candidates, sampling) and no seed: every run samples
        # anew, as in real use. Answers are kept short (64 tokens) so the suite stays quick; a tool
        # call or a JSON answer still always closes within them (the drafting keeps the tokens that
        # close it in reserve), so no test gets a budget of its own.
        return {"max_tokens": 64}

    @property
    def supports_json_mode(self) -> bool:
        return True

    # What the 135M model cannot do (see the reasons above), each with a variant that passes.

    @pytest.mark.xfail(reason=NO_CALL_UNDER_AUTO, strict=True)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    def test_agent_loop_with_the_call_forced(self, model: STARSChatModel) -> None:
        super().test_agent_loop(ForcedCall.forcing(model))

    @pytest.mark.xfail(reason=COPIES_JAPANESE_AT_A_RATE, strict=False, raises=AssertionError)
    def test_unicode_tool_call_integration(self, model: BaseChatModel, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    @property
    def supports_model_override(self) -> bool:
        # One STARSChatModel runs one backend; a per-call `model=` naming another model is refused.
        return False


class ForcedCall(STARSChatModel):
    """A STARSChatModel whose `bind_tools` forces a call when the caller leaves the choice open."""

    @classmethod
    def forcing(cls, model: STARSChatModel) -> ForcedCall:
        return cls(**{name: getattr(model, name) for name in type(model).model_fields})

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        return super().bind_tools(tools, tool_choice=tool_choice or "any", **kwargs)
