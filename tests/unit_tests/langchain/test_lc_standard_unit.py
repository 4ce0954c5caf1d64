"""LangChain's standard chat model unit suite on the tiny routed engine (subclassed, not rewritten).
The integration suite runs on the demo engine: tests/integration_tests/langchain/test_lc_standard.py."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from lorauter_integrations.langchain import ChatLoRAuter


class TestChatLoRAuterUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _engine(self, tiny_engine):
        self.engine = tiny_engine

    @property
    def chat_model_class(self) -> type[ChatLoRAuter]:
        return ChatLoRAuter

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": self.engine}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


# What a 135M model cannot do reliably (measured: see README "LangChain"): skip, with the reason.
