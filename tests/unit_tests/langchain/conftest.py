"""LangChain fixtures: a tiny routed engine (random Llama, real pool, real task store) and the demo.

The tiny engine routes for real: a Chroma task store of three tasks (sentiment, translation,
question answering) mapped to the real PEFT adapters a, b, c of ``tiny_pool_dir``. Its text is
random, so tests on it check plumbing (routes, metadata, batching, callbacks), never wording.
"""

from __future__ import annotations

import json

import pytest

from lc_support import TASKS


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A real TaskStore of three tasks (indexed once per session)."""
    from lorauter_integrations.store import TaskStore

    root = tmp_path_factory.mktemp("lc_store")
    path = root / "validation.jsonl"
    with path.open("w") as f:
        for task, inputs in TASKS.items():
            for text in inputs:
                f.write(json.dumps({"task": task, "inputs": text, "targets": "x", "domain": task}) + "\n")
    store = TaskStore(root / "store")
    store.index_file(path, progress=False)
    return store


@pytest.fixture
def tiny_engine(tiny_loaded, tiny_pool_dir, tiny_store):
    """A RoutedModel over the tiny random Llama, adapters a/b/c, routed by the real lorauter router."""
    from lorauter_integrations.engine import RoutedModel
    from lorauter_integrations.adapters.pool import AdapterPool

    pool = AdapterPool.from_dir(tiny_pool_dir)
    return RoutedModel(tiny_loaded, pool=pool, store=tiny_store)
