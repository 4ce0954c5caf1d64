"""TaskStore on an embedded Chroma: persist, reopen, re-index, update, remove, encoder checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lorauter_integrations.data import Example, TaskSet
from lorauter_integrations.errors import EncoderMismatchError, InvalidInputError, StoreError, UnknownTaskError
from lorauter_integrations.store import TaskStore


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_closing_a_store_releases_its_files(tmp_path, flan_tasks):
    # Each embedded store held ~20 descriptors (SQLite, index segments) after close(): a long-lived
    # process (or test session) opening stores one after another ran out of descriptors.
    with TaskStore(tmp_path / "s0") as store:
        store.index(flan_tasks[:2], progress=False)
    before = _open_files()
    for i in range(1, 11):
        with TaskStore(tmp_path / f"s{i}") as store:
            store.index(flan_tasks[:2], progress=False)
            assert len(store) == 2
    assert _open_files() - before <= 5


def test_index_records_metadata_for_every_task(fresh_store, flan_tasks):
    recs = {r.task: r for r in fresh_store.tasks()}
    assert set(recs) == {t.task for t in flan_tasks[:4]}
    sst2 = recs["sst2"]
    assert sst2.domain == "sentiment" and sst2.metric == "em" and sst2.size == 8 and sst2.created_at


def test_store_persists_and_reopens_with_the_same_answers(tmp_path, flan_tasks):
    store = TaskStore(tmp_path / "s")
    store.index(flan_tasks, progress=False)
    q = store.featurize("hybrid", ["Is this review positive? It was great fun."])
    before = store.nearest_tasks("hybrid", q, 3)
    del store
    reopened = TaskStore(tmp_path / "s")
    assert len(reopened) == len(flan_tasks)
    after = reopened.nearest_tasks("hybrid", reopened.featurize("hybrid", ["Is this review positive? It was great fun."]), 3)
    assert [t for t, _ in after[0]] == [t for t, _ in before[0]]
    assert [s for _, s in after[0]] == pytest.approx([s for _, s in before[0]], abs=1e-5)


def test_reindexing_the_same_tasks_changes_nothing(fresh_store, flan_tasks):
    created = {r.task: r.created_at for r in fresh_store.tasks()}
    report = fresh_store.index(flan_tasks[:4], progress=False)
    assert report.unchanged == [t.task for t in flan_tasks[:4]] and not report.added and not report.updated
    assert {r.task: r.created_at for r in fresh_store.tasks()} == created


def test_changed_task_is_updated_in_place(fresh_store, flan_tasks):
    changed = flan_tasks[0].model_copy(update={"examples": flan_tasks[0].examples[:3]})
    report = fresh_store.index([changed], progress=False)
    assert report.updated == [changed.task]
    assert fresh_store.task(changed.task).size == 3
    assert len(fresh_store.examples([changed.task])[changed.task]) == 3


def test_added_task_becomes_routable(fresh_store, flan_tasks):
    new = flan_tasks[4]  # a translation task the fresh store lacks
    fresh_store.index([new], progress=False)
    q = fresh_store.featurize("paper", ["Translate to English: Ich habe Hunger."])
    assert fresh_store.nearest_tasks("paper", q, 1)[0][0][0] == new.task


def test_removed_task_is_gone_from_every_collection(fresh_store):
    fresh_store.remove("sst2")
    assert "sst2" not in fresh_store
    assert "sst2" not in fresh_store.examples()
    q = fresh_store.featurize("hybrid", ["Is this review positive?"])
    assert all(t != "sst2" for t, _ in fresh_store.nearest_tasks("hybrid", q, 10)[0])
    with pytest.raises(UnknownTaskError):
        fresh_store.remove("sst2")


def test_task_vectors_are_unit_norm(shared_store):
    q = shared_store.featurize("paper", ["hello"])
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    for _, sim in shared_store.nearest_tasks("paper", q, 8)[0]:
        assert -1.0 - 1e-5 <= sim <= 1.0 + 1e-5


def test_a_store_built_with_another_encoder_refuses_to_open(tmp_path, flan_tasks):
    store = TaskStore(tmp_path / "s")
    store.index(flan_tasks[:1], progress=False)

    class OtherEncoder:
        name, dim = "other-encoder", 16

        def encode(self, texts):
            return np.ones((len(texts), 16), dtype=np.float32) / 4.0

    with pytest.raises(EncoderMismatchError, match="all-MiniLM-L6-v2"):
        TaskStore(tmp_path / "s", encoder=OtherEncoder())


def test_duplicate_task_ids_are_refused_and_store_unchanged(fresh_store, flan_tasks):
    before = {r.task: r.content_hash for r in fresh_store.tasks()}
    with pytest.raises(InvalidInputError, match="twice"):
        fresh_store.index([flan_tasks[5], flan_tasks[5]], progress=False)
    assert {r.task: r.content_hash for r in fresh_store.tasks()} == before


def test_querying_an_empty_store_says_to_index_first(tmp_path):
    store = TaskStore(tmp_path / "empty")
    with pytest.raises(StoreError, match="lorauter index"):
        store.nearest_tasks("hybrid", store.featurize("hybrid", ["x"]), 3)


def test_unwritable_store_path_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError):
        TaskStore(blocker / "store")


def test_synthetic_task_vectors_can_be_written_at_scale(tmp_path):
    store = TaskStore(tmp_path / "big")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, store.encoder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    names = [f"synthetic-{i}" for i in range(300)]
    store.add_task_vectors("paper", names, vecs)
    assert len(store) == 300
    top = store.nearest_tasks("paper", vecs[17:18], 1)[0][0]
    assert top[0] == "synthetic-17" and top[1] == pytest.approx(1.0, abs=1e-4)


def test_tasks_are_validated_before_anything_is_written(fresh_store):
    with pytest.raises(InvalidInputError):
        fresh_store.index([TaskSet(task="empty", examples=[])], progress=False)
    assert "empty" not in fresh_store
    ok = TaskSet(task="tiny", domain="d", examples=[Example(task="tiny", inputs="a b c")])
    fresh_store.index([ok], progress=False)
    assert "tiny" in fresh_store


def _task_vectors(store, rep="hybrid"):
    got = store.client.get_collection(f"{store.name}-tasks-{rep}").get(include=["embeddings"])
    order = np.argsort(got["ids"])
    return [got["ids"][i] for i in order], np.asarray(got["embeddings"])[order]


def test_reindexing_a_store_built_by_an_older_recipe_rebuilds_its_task_vectors(tmp_path, flan_tasks):
    import json

    from lorauter_integrations.representations import HybridRepresentation
    from lorauter_integrations.store import _STATE_PREFIX, _encode_state

    tasks = flan_tasks[:4]
    store = TaskStore(tmp_path / "s")
    store.index(tasks, progress=False)
    ids, current = _task_vectors(store)
    # Make it look like a store written before discriminant prototypes: plain-mean task vectors
    # and a state without the knob.
    old = HybridRepresentation(discriminant_ridge=None)
    got = store._examples.get(include=["embeddings", "metadatas", "documents"])
    old.fit(got["documents"], np.asarray(got["embeddings"]), [m["task"] for m in got["metadatas"]],
            [m["domain"] for m in got["metadatas"]])
    state = old.state_dict()
    meta = json.loads(str(state["meta"]))
    del meta["config"]["discriminant_ridge"]
    state["meta"] = np.array(json.dumps(meta))
    store._meta.upsert(ids=[_STATE_PREFIX + "hybrid"], embeddings=np.ones((1, 1), dtype=np.float32),
                       documents=[_encode_state(state)], metadatas=[{"kind": "state"}])
    feats = old.featurize(got["documents"], np.asarray(got["embeddings"]))
    by_task = {t.task: [i for i, m in enumerate(got["metadatas"]) if m["task"] == t.task] for t in tasks}
    store.client.get_collection(f"{store.name}-tasks-hybrid").upsert(
        ids=[f"{t}/0" for t in by_task], embeddings=np.vstack([old.task_vectors(feats[i]) for i in by_task.values()]))
    _, stale = _task_vectors(store)
    assert not np.allclose(stale, current, atol=1e-3)

    reopened = TaskStore(tmp_path / "s")
    report = reopened.index(tasks, progress=False)
    assert report.refitted and sorted(report.unchanged) == sorted(t.task for t in tasks)
    assert "rebuilt" in str(report)
    ids_after, rebuilt = _task_vectors(reopened)
    assert ids_after == ids
    np.testing.assert_allclose(rebuilt, current, atol=1e-5)
    assert not reopened.index(tasks, progress=False).refitted
