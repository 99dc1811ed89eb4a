"""LangChain's standard chat-model suites against the real embedded default.

Unit tests never generate (they only build models); integration tests run SmolLM2 with the STARS
loop for real, with short answers so the suite stays quick on a laptop CPU. Tool calling,
structured output and multimodal input are not claimed, so the suite skips those tests itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from stars_guard.langchain.chat_model import STARSChatModel


class TestSTARSChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[STARSChatModel]:
        return STARSChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {}


@pytest.mark.integration
@pytest.mark.usefixtures("default_components")
class TestSTARSChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[STARSChatModel]:
        return STARSChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Real STARS sampling (default temperature, K=4 candidates per round), short answers.
        return {"max_tokens": 16}

    @property
    def supports_model_override(self) -> bool:
        # One STARSChatModel runs one backend; a per-call `model=` naming another model is refused.
        return False
