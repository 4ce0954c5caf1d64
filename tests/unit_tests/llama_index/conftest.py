"""LlamaIndex fixtures: the tiny routed engine of the LangChain tests (random Llama, real adapters
a/b/c, a real task store of three tasks); its text is random, so tests check plumbing, not wording."""

from __future__ import annotations

import json

import pytest

from lc_support import TASKS


@pytest.fixture(scope="session")
def li_tiny_store(tmp_path_factory):
    from lorauter_integrations.store import TaskStore

    root = tmp_path_factory.mktemp("li_store")
    path = root / "validation.jsonl"
    with path.open("w") as f:
        for task, inputs in TASKS.items():
            for text in inputs:
                f.write(json.dumps({"task": task, "inputs": text, "targets": "x", "domain": task}) + "\n")
    store = TaskStore(root / "store")
    store.index_file(path, progress=False)
    return store


@pytest.fixture
def li_tiny_engine(tiny_loaded, tiny_pool_dir, li_tiny_store):
    from lorauter_integrations.adapters.pool import AdapterPool
    from lorauter_integrations.engine import RoutedModel

    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), store=li_tiny_store)
