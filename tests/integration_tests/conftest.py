"""Integration fixtures: the real demo engine (SmolLM2-135M-Instruct, bundled adapters, task store),
loaded once per session. The Chroma server fixture is in tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_engine():
    """The real demo engine, shared by the integration tests of a session."""
    from lorauter_integrations.engine import RoutedModel

    return RoutedModel.demo()
