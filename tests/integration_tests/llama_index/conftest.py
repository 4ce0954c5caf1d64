"""Shared fixtures: one demo engine for the LlamaIndex tests that need the real model, and a
handler that records routing events."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import pytest  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402

from lorauter_integrations.llama_index import LoRAuterLLM, LoRAuterRouteEvent  # noqa: E402


class RouteEvents(BaseEventHandler):
    """Keeps every LoRAuterRouteEvent it sees."""

    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "RouteEvents"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LoRAuterRouteEvent):
            self.events.append(event)


@pytest.fixture(scope="session")
def engine(demo_engine):
    return demo_engine


@pytest.fixture
def llm(engine):
    # Short answers keep the CPU tests quick; greedy decoding makes them reproducible.
    return LoRAuterLLM(engine=engine, max_new_tokens=12)


@pytest.fixture
def route_events():
    """The routing events dispatched while the test runs (handler on the root dispatcher)."""
    handler = RouteEvents(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)
