"""Store integrity on a real embedded Chroma with the real encoder: an UPDATE killed (SIGKILL) at
several points is repaired by re-indexing; a second writer is refused; a full disk says so.

Every process that writes runs the real CLI or a real `TaskStore` in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations.data import bundled_data_dir, load_tasks  # noqa: E402
from lorauter_integrations.errors import StoreError  # noqa: E402
from lorauter_integrations.store import LOCK_FILE, TaskStore, _content_hash  # noqa: E402

CLI = [sys.executable, "-m", "lorauter_integrations.cli"]
ORIGINAL = ["sst2", "rte", "wmt16_translate_deen", "arc_easy"]
NEW_TASK = "trivia_qa"
QUERIES = ["Review: a joyless, clumsy film. Is this review positive or negative?",
           "Translate to English: Das Haus ist klein.",
           "Premise: a dog runs. Hypothesis: an animal moves. Does the premise entail the hypothesis?",
           "Which of these is a mammal? (A) shark (B) whale (C) trout"]

#: Where the killed UPDATE dies: SIGKILL right before the n-th call of a Chroma method on one
#: collection. The update rewrites the 4 tasks with other examples and adds a fifth (third in
#: the file). Meta upserts: 1 journal, 2-3 representation states, 4 version, 5 registry, 6 version.
KILL_POINTS = {
    "after-journal": ("examples", "delete", 1),
    "task2-deleted-not-written": ("examples", "upsert", 2),
    "new-task-written-task3-not": ("examples", "delete", 4),
    "paper-vectors-new-hybrid-old": ("tasks-hybrid", "upsert", 1),
    "vectors-new-registry-old": ("meta", "upsert", 5),
    "registry-new-journal-open": ("meta", "delete", 1),
}

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from chromadb.api.models.Collection import Collection
    suffix, method, nth, store, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    original = getattr(Collection, method)
    calls = [0]

    def counted(self, *args, **kwargs):
        if self.name.endswith("-" + suffix):
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    setattr(Collection, method, counted)
    from lorauter_integrations.store import TaskStore
    TaskStore(store).index_file(data, progress=False)
    print("finished without reaching the kill point", flush=True)
""")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}


def _write(path: Path, tasks) -> Path:
    path.write_text("".join(e.model_dump_json() + "\n" for t in tasks for e in t.examples), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The original file (4 tasks x 8 examples), an update of it, and a store built from it by the CLI."""
    root = tmp_path_factory.mktemp("integrity")
    every = {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}
    original = [every[t].model_copy(update={"examples": every[t].examples[:8]}) for t in ORIGINAL]
    update = [every[t].model_copy(update={"examples": every[t].examples[8:13]}) for t in ORIGINAL]
    update.insert(2, every[NEW_TASK].model_copy(update={"examples": every[NEW_TASK].examples[:5]}))
    orig_file, upd_file = _write(root / "original.jsonl", original), _write(root / "update.jsonl", update)
    base = root / "base-store"
    done = subprocess.run([*CLI, "index", "--validation", str(orig_file), "--store", str(base)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return {"root": root, "original": original, "orig_file": orig_file, "upd_file": upd_file, "base": base}


def _documents(store: TaskStore) -> dict[str, list[str]]:
    got = store._examples.get(include=["documents", "metadatas"])
    out: dict[str, list[tuple[str, str]]] = {}
    for rid, doc, md in zip(got["ids"], got["documents"], got["metadatas"]):
        out.setdefault(md["task"], []).append((rid, doc))
    return {t: [d for _, d in sorted(rows)] for t, rows in out.items()}


def _ranking(store: TaskStore, rep: str) -> list[list[tuple[str, float]]]:
    return store.nearest_tasks(rep, store.featurize(rep, QUERIES), len(store))


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_an_update_killed_at_any_point_is_repaired_by_reindexing_the_original(files, tmp_path, point):
    suffix, method, nth = KILL_POINTS[point]
    store_dir = tmp_path / "store"
    shutil.copytree(files["base"], store_dir)
    killed = subprocess.run([sys.executable, "-c", _KILLER, suffix, method, str(nth), str(store_dir),
                             str(files["upd_file"])], capture_output=True, text=True, env=_env(), timeout=600)
    assert killed.returncode == -9, f"not killed at {point}: {killed.stdout}{killed.stderr[-3000:]}"

    with TaskStore(store_dir) as repaired:
        report = repaired.index_file(files["orig_file"], progress=False)
        registry = {r.task: r for r in repaired.tasks()}
        docs = _documents(repaired)
        # every original task holds exactly its original examples again, and says so
        for ts in files["original"]:
            assert docs[ts.task] == ts.inputs, f"{ts.task} kept stale examples after {point} ({report})"
            assert registry[ts.task].size == len(ts.examples)
            assert registry[ts.task].content_hash == _content_hash(ts)
        # the added task is all there (its registry record was written) or not at all
        if NEW_TASK in registry:
            assert point == "registry-new-journal-open" and len(docs[NEW_TASK]) == 5
        else:
            assert NEW_TASK not in docs, f"orphan examples of an unfinished addition after {point}"
        assert repaired._read_journal() == ([], False, None)
        rankings = {rep: _ranking(repaired, rep) for rep in ("paper", "hybrid")}
        for ranked in rankings["hybrid"]:
            assert sorted(t for t, _ in ranked) == sorted(registry)
    if NEW_TASK not in registry:  # same content as the untouched store: the same routing scores
        with TaskStore(files["base"]) as base:
            for rep, got in rankings.items():
                want = _ranking(base, rep)
                for g, w in zip(got, want):
                    assert [t for t, _ in g] == [t for t, _ in w], (point, rep)
                    assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4), (point, rep)


def _lock_is_held(folder: Path) -> bool:
    import fcntl

    path = folder / LOCK_FILE
    if not path.exists():
        return False
    with path.open("rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


def test_a_second_index_run_on_one_folder_is_refused_and_the_store_stays_usable(files, tmp_path):
    store_dir = tmp_path / "store"
    full = bundled_data_dir() / "validation.jsonl"  # 960 examples: the first run holds the store a while
    first = subprocess.Popen([*CLI, "index", "--validation", str(full), "--store", str(store_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 300
        while not _lock_is_held(store_dir):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        second = subprocess.run([*CLI, "index", "--validation", str(files["orig_file"]), "--store", str(store_dir)],
                                capture_output=True, text=True, env=_env(), timeout=300)
        still_running = first.poll() is None
        out, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert still_running, "the first run ended before the second tried: the test proves nothing"
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0] and "chroma run" in lines[0], second.stderr
    # afterwards everything answers, within bounds
    listed = subprocess.run([*CLI, "tasks", "--store", str(store_dir), "--json"], capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 48
    again = subprocess.run([*CLI, "index", "--validation", str(files["orig_file"]), "--store", str(store_dir)],
                           capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0 and "4 updated" in again.stderr, again.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = Path("/tmp") / f"lorauter-full-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def test_a_full_disk_is_reported_as_a_full_disk(small_disk, files):
    every = load_tasks(bundled_data_dir() / "validation.jsonl")
    with pytest.raises(StoreError, match=r"the disk is full \(0\.\d MiB free\); free some space") as err:
        with TaskStore(small_disk / "store") as store:
            store.index(every, progress=False)
    assert "compaction" in str(err.value) or "space" in str(err.value).lower()
