"""TaskStore against damaged or hostile stored data, without any model (a hashing test encoder).

What a store holds never chooses what is loaded, malformed metadata is a typed `StoreError` that
names the store and the fix, a second process is refused, and no call into Chroma can hang.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations import store as store_mod  # noqa: E402
from lorauter_integrations.data import Example, TaskSet  # noqa: E402
from lorauter_integrations.errors import (  # noqa: E402
    EncoderMismatchError, LoRAuterError, StoreBusyError, StoreError,
)
from lorauter_integrations.store import LOCK_FILE, TaskStore, _decode_state, _encode_state  # noqa: E402

DIM = 16


class HashEncoder:
    """Deterministic unit vectors from a hash of the text: no model, no download."""

    def __init__(self, name: str = "hash-encoder", dim: int = DIM):
        self.name, self.dim = name, dim

    def encode(self, texts):
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def _tasks() -> list[TaskSet]:
    words = {"sent": ["good film", "bad film", "great plot", "dull acting"],
             "tran": ["translate: hund", "translate: katze", "translate: haus", "translate: baum"]}
    return [TaskSet(task=t, domain=t, metric="em",
                    examples=[Example(task=t, inputs=f"{w} {i}", targets="x", domain=t) for i, w in enumerate(ws)])
            for t, ws in words.items()]


@pytest.fixture
def built(tmp_path):
    """A small indexed store (closed again: the test reopens it)."""
    folder = tmp_path / "store"
    with TaskStore(folder, encoder=HashEncoder()) as st:
        st.index(_tasks(), progress=False)
    return folder


def _raw_collection(folder, cname):
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
    return client.get_collection(cname, embedding_function=None)  # never Chroma's downloader


def _set_examples_metadata(folder, **changes):
    col = _raw_collection(folder, "lorauter-examples")
    md = dict(col.metadata or {})
    md.update(changes)
    col.modify(metadata=md)


# -- metadata --------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"dim": "abc"}, "recorded encoder dimension 'abc' is malformed"),
    ({"dim": -3}, "recorded encoder dimension -3 is malformed"),
    ({"encoder": 7}, "recorded encoder 7 is malformed"),
    ({"schema": "two"}, "schema stamp 'two' is malformed"),
    ({"schema": 0}, "schema stamp 0 is malformed"),
    ({"schema": 99}, "written by a newer version of lorauter-integrations"),
])
def test_malformed_or_newer_store_metadata_is_a_typed_error_naming_store_and_fix(built, changes, message):
    _set_examples_metadata(built, **changes)
    with pytest.raises(StoreError) as err:
        TaskStore(built, encoder=HashEncoder())
    text = str(err.value)
    assert message in text and str(built) in text
    assert ("upgrade" in text) if changes.get("schema") == 99 else ("new store" in text)


def test_a_representation_state_without_config_is_a_typed_error(built):
    col = _raw_collection(built, "lorauter-meta")
    got = col.get(ids=["state:hybrid"], include=["documents"])
    state = _decode_state(got["documents"][0])
    meta = json.loads(str(state["meta"]))
    del meta["config"]
    state["meta"] = np.asarray(json.dumps(meta))
    col.update(ids=["state:hybrid"], embeddings=[[1.0]], documents=[_encode_state(state)])
    with pytest.raises(StoreError, match="representation 'hybrid' is malformed.*KeyError.*new store") as err:
        TaskStore(built, encoder=HashEncoder())
    assert str(built) in str(err.value)


def test_a_malformed_registry_record_is_a_typed_error(built):
    col = _raw_collection(built, "lorauter-meta")
    col.update(ids=["task:sent"], embeddings=[[1.0]], metadatas=[{"kind": "task", "task": "sent", "size": "many"}])
    st = TaskStore(built, encoder=HashEncoder())
    with pytest.raises(StoreError, match="registry record 'task:sent' is malformed"):
        st.tasks()


def test_a_malformed_journal_is_a_typed_error(built):
    col = _raw_collection(built, "lorauter-meta")
    col.upsert(ids=["journal"], embeddings=[[1.0]], documents=['{"tasks": "sent"}'], metadatas=[{"kind": "journal"}])
    st = TaskStore(built, encoder=HashEncoder())
    with pytest.raises(StoreError, match="journal of an interrupted write is malformed"):
        st.index(_tasks(), progress=False)


# -- the encoder is the configured one, never the stored one ----------------------------------------
def test_stored_encoder_name_is_never_loaded_and_a_mismatch_is_refused(built, monkeypatch):
    _set_examples_metadata(built, encoder="evil-org/remote-code-model", dim=DIM)
    loaded = []

    def fake_get_encoder(name=store_mod.DEFAULT_ENCODER, device=None):
        loaded.append(name)
        return HashEncoder(name=name)

    monkeypatch.setattr(store_mod, "get_encoder", fake_get_encoder)
    with pytest.raises(EncoderMismatchError, match="evil-org/remote-code-model.*configured with 'all-MiniLM-L6-v2'"):
        TaskStore(built)  # no encoder given: the configured default, not the store's record
    assert loaded == [store_mod.DEFAULT_ENCODER]
    with pytest.raises(EncoderMismatchError):
        TaskStore(built, encoder=HashEncoder())  # the store's name differs from ours too
    # the owner of that encoder may still open it, by passing it on purpose
    TaskStore(built, encoder=HashEncoder(name="evil-org/remote-code-model")).close()


# -- one process per folder ------------------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    from lorauter_integrations.store import TaskStore
    sys.path.insert(0, {here!r})
    from test_store_metadata import HashEncoder
    st = TaskStore({folder!r}, encoder=HashEncoder())
    print("holding", flush=True)
    time.sleep(120)
""")


def test_a_second_process_is_refused_with_the_holder_pid_and_a_dead_holder_is_taken_over(built):
    code = _HOLDER.format(here=os.path.dirname(__file__), folder=str(built))
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"holding"
        with pytest.raises(StoreBusyError) as err:
            TaskStore(built, encoder=HashEncoder())
        assert f"process {holder.pid}" in str(err.value) and "chroma run" in str(err.value)
        assert isinstance(err.value, StoreError)
        # waiting is bounded too
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError):
            TaskStore(built, encoder=HashEncoder(), lock_wait_s=0.5)
        assert 0.4 < time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the killed holder's pid is still in the file, but its OS lock died with it: taken over
    assert (built / LOCK_FILE).read_text().strip() == str(holder.pid)
    with TaskStore(built, encoder=HashEncoder()) as st:
        assert (built / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert len(st) == 2


def test_stores_of_one_process_share_the_lock_and_close_releases_it(built):
    a = TaskStore(built, encoder=HashEncoder())
    b = TaskStore(built, encoder=HashEncoder())
    key = str(built.resolve())
    assert store_mod._FolderLock._held[key].count == 2
    a.close()
    a.close()  # idempotent
    assert store_mod._FolderLock._held[key].count == 1
    b.close()
    assert key not in store_mod._FolderLock._held


# -- bounded calls ---------------------------------------------------------------------------------
class _HangingCollection:
    def __init__(self, col, gate: threading.Event, hang: set):
        self._col, self._gate, self._hang = col, gate, hang

    def __getattr__(self, name):
        attr = getattr(self._col, name)
        if name in self._hang:
            def hanging(*a, **kw):
                self._gate.wait()
                return attr(*a, **kw)
            return hanging
        return attr


class _HangingClient:
    """A real in-memory Chroma client whose collections' ``get`` blocks until ``gate`` opens."""

    def __init__(self, gate):
        import chromadb
        from chromadb.config import Settings

        self._real = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
        self.gate, self.hang = gate, set()

    def get_or_create_collection(self, *a, **kw):
        return _HangingCollection(self._real.get_or_create_collection(*a, **kw), self.gate, self.hang)


def test_a_chroma_call_that_never_returns_is_a_timeout_error_not_a_hang(monkeypatch):
    gate = threading.Event()
    client = _HangingClient(gate)
    st = TaskStore(client=client, encoder=HashEncoder(), name=f"hang{os.getpid()}", call_timeout_s=0.5,
                   refresh_s=None)
    st.index(_tasks(), progress=False)
    st.refresh()  # drop the cached registry
    client.hang.add("get")
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"timed out after 0\.5 s"):
        st.tasks()
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="has not returned"):  # fails at once while Chroma is stuck
        st.tasks()
    assert time.monotonic() - t0 < 0.5
    client.hang.clear()
    gate.set()  # the stuck call returns: the store works again
    deadline = time.monotonic() + 5
    while st._deadline.stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.task for r in st.tasks()] == ["sent", "tran"]


def test_the_timeout_setting_is_validated(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAUTER_STORE_TIMEOUT_S", "soon")
    with pytest.raises(LoRAuterError, match="LORAUTER_STORE_TIMEOUT_S"):
        TaskStore(tmp_path / "s", encoder=HashEncoder())
    for bad in (0, -1, float("nan"), True, "1"):
        with pytest.raises(LoRAuterError, match="call_timeout_s"):
            TaskStore(tmp_path / "s", encoder=HashEncoder(), call_timeout_s=bad)


# -- disk full -------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("Error executing plan: Internal error: database or disk is full"),
])
def test_a_full_disk_is_named_as_such(built, monkeypatch, exc):
    st = TaskStore(built, encoder=HashEncoder())

    def full(*a, **kw):
        raise exc

    monkeypatch.setattr(st._examples._col, "upsert", full)
    changed = [t.model_copy(update={"examples": t.examples[:2]}) for t in _tasks()]
    with pytest.raises(StoreError, match="the disk is full.*free some space"):
        st.index(changed, progress=False)


# -- a write that cannot be fitted changes nothing -------------------------------------------------
def test_examples_that_cannot_be_fitted_are_refused_before_anything_is_written(built):
    from lorauter_integrations.errors import InvalidInputError

    with TaskStore(built, encoder=HashEncoder()) as st:
        before = ([r.model_dump() for r in st.tasks()], sorted(st._examples.get()["ids"]),
                  sorted(st._task_cols["hybrid"].get()["ids"]))
        # replace every task by one with a single example: the representation's fit degenerates
        degenerate = [TaskSet(task=t, domain=t, examples=[Example(task=t, inputs=f"only {t}", domain=t)])
                      for t in ("sent", "tran")]
        with pytest.raises(InvalidInputError, match="cannot be fitted.*nothing was written"):
            st.index(degenerate, progress=False)
        after = ([r.model_dump() for r in st.tasks()], sorted(st._examples.get()["ids"]),
                 sorted(st._task_cols["hybrid"].get()["ids"]))
        assert after == before and st._read_journal() == ([], False, None)
        assert st.index(_tasks(), progress=False).unchanged == ["sent", "tran"]
