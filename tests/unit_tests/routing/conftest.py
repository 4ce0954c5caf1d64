"""Fixtures for store and routing tests: a real Chroma store over a slice of the Flan data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations.data import bundled_data_dir, load_tasks, read_jsonl  # noqa: E402
from lorauter_integrations.store import TaskStore  # noqa: E402

#: two tasks per domain for four domains: small enough to index in a second
SLICE = ["sst2", "yelp_polarity_reviews", "rte", "snli", "wmt16_translate_deen", "wmt14_enfr",
         "arc_easy", "trivia_qa"]


@pytest.fixture(scope="session")
def flan_tasks():
    tasks = {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}
    return [tasks[name].model_copy(update={"examples": tasks[name].examples[:8]}) for name in SLICE]


@pytest.fixture(scope="session")
def flan_queries():
    return [q for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl") if q.task in SLICE]


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
    return store
