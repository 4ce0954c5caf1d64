"""Shared fixtures: one demo engine for every LlamaIndex test that needs the real model."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(scope="session")
def engine():
    from lorauter_integrations.engine import RoutedModel

    return RoutedModel.demo()


@pytest.fixture
def llm(engine):
    from lorauter_integrations.llama_index import LoRAuterLLM

    # Short answers keep the CPU tests quick; greedy decoding makes them reproducible.
    return LoRAuterLLM(engine=engine, max_new_tokens=12)
