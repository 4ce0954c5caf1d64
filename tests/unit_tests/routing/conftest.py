"""Fixtures for store and routing tests: a real Chroma store over a slice of the Flan data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations.store import TaskStore  # noqa: E402

@pytest.fixture(scope="session")
def shared_store(tmp_path_factory, flan_tasks):
    """One indexed store shared by read-only tests."""
    store = TaskStore(tmp_path_factory.mktemp("store"))
    store.index(flan_tasks, progress=False)
    return store


@pytest.fixture
def fresh_store(tmp_path, flan_tasks):
    """A store a test may change."""
    store = TaskStore(tmp_path / "store")
    store.index(flan_tasks[:4], progress=False)
    yield store
    store.close()
