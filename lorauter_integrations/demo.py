"""The bundled demo: SmolLM2-135M-Instruct's Flan adapter pool and a task store of its tasks.

Both engines build their ``demo()`` from these, so the local engine, a vLLM engine and the CLI
route the same prompt to the same adapters.

An embedded task store belongs to one process at a time (see `TaskStore`), yet every process
may want the demo (an app, ``lorauter route``, tests, a benchmark). So the canonical demo store
in the cache dir is only held while it is checked (and indexed, the first time), and each
process then opens its own copy of it, removed when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from .adapters.pool import AdapterPool
from .data import bundled_data_dir
from .settings import cache_dir
from .store import LOCK_FILE, TaskStore

DEMO_POOL_DIR = Path(__file__).parent / "_adapters" / "flan"
_LOCK_WAIT_S = 300.0  # another process may be indexing the demo store for the first time


def demo_pool() -> AdapterPool:
    """The 16 bundled Flan adapters (trained by this project, shipped in the package)."""
    return AdapterPool.from_dir(DEMO_POOL_DIR)


def demo_store_dir() -> Path:
    """Where the canonical demo store lives: ``<cache>/stores/demo``."""
    return cache_dir() / "stores" / "demo"


def _index_demo(store: TaskStore) -> None:
    """Index the bundled validation sets (idempotent; a change also records the similarity floor) and
    record the floor if the store has none: a demo store cached by an earlier version, or one whose
    indexing run ended before the floor was recorded, gets it once (a few seconds)."""
    store.index_file(bundled_data_dir() / "validation.jsonl", progress=False)
    if any(store.recorded_floor(rep) is None for rep in store.representations):
        store.calibrate_floors()


def demo_store(store_dir: str | Path | None = None) -> TaskStore:
    """A task store of the bundled validation sets.

    With ``store_dir``: that folder, indexed (once, idempotently) and held by this process.
    Without: a private copy of the canonical demo store (indexed once, in the cache dir).
    Either way the store carries its calibrated similarity floor (``LoRAuterRouter(floor="auto")``).
    """
    if store_dir is not None:
        store = TaskStore(store_dir, lock_wait_s=_LOCK_WAIT_S)
        _index_demo(store)
        return store
    canonical = demo_store_dir()
    with TaskStore(canonical, lock_wait_s=_LOCK_WAIT_S) as store:
        _index_demo(store)
        # Copied while the lock is held: no writer can change the folder meanwhile.
        private = Path(tempfile.mkdtemp(prefix="lorauter-demo-store-"))
        atexit.register(shutil.rmtree, private, True)
        shutil.copytree(canonical, private, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_FILE))
    return TaskStore(private)


__all__ = ["DEMO_POOL_DIR", "demo_pool", "demo_store", "demo_store_dir"]
