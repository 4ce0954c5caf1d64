"""Task collections search wider than Chroma's HNSW defaults, also in stores built before."""

from __future__ import annotations

from lorauter_integrations import store as store_module
from lorauter_integrations.data import bundled_data_dir, load_tasks
from lorauter_integrations.store import TASK_INDEX_HNSW, TaskStore, make_client

QUERY = "Is this review positive or negative? It was great fun."


def _ef_search(client, name: str) -> int:
    return client.get_collection(name).configuration["hnsw"]["ef_search"]


def test_new_task_collections_get_the_wider_search(tmp_path):
    store = TaskStore(tmp_path / "s", representations=("paper", "hybrid"))
    for rep in ("paper", "hybrid"):
        assert _ef_search(store.client, f"{store.name}-tasks-{rep}") == TASK_INDEX_HNSW["ef_search"] > 100


def test_a_store_built_with_chroma_defaults_reopens_searching_wider_with_the_same_answers(tmp_path, monkeypatch):
    tasks = load_tasks(bundled_data_dir() / "validation.jsonl")[:4]
    monkeypatch.setattr(store_module, "TASK_INDEX_HNSW", {})  # what versions before this one created
    old = TaskStore(tmp_path / "s", representations=("hybrid",))
    old.index(tasks, progress=False)
    before = old.nearest_tasks("hybrid", old.featurize("hybrid", [QUERY]), 3)
    assert _ef_search(old.client, f"{old.name}-tasks-hybrid") == 100  # Chroma's default
    del old
    monkeypatch.undo()

    reopened = TaskStore(tmp_path / "s", representations=("hybrid",))
    after = reopened.nearest_tasks("hybrid", reopened.featurize("hybrid", [QUERY]), 3)
    assert [t for t, _ in after[0]] == [t for t, _ in before[0]]
    # persisted: another client of the same folder sees the new setting
    assert _ef_search(make_client(tmp_path / "s"), f"{reopened.name}-tasks-hybrid") == TASK_INDEX_HNSW["ef_search"]
