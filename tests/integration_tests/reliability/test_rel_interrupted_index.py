"""An index build killed mid-way (``kill -9``) leaves a queryable store that a re-run completes."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time

from lorauter_integrations.data import load_tasks
from rel_support import LORAUTER_CLI, cli_env, run_cli, write_jsonl

KILL_AFTER_TASKS = 3
QUERY = "Review: the plot was dull and the acting wooden. Is this movie review positive or negative?"


def _kill_during_indexing(args: list[str], cache, timeout_s: float = 300) -> str:
    """Run ``lorauter ARGS`` and SIGKILL it once its progress bar shows a few indexed tasks."""
    proc = subprocess.Popen([*LORAUTER_CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cli_env(cache))
    seen = b""
    deadline = time.monotonic() + timeout_s
    # a selector (poll/epoll), not select.select: that refuses descriptors numbered above 1024,
    # which a long test session can reach
    watch = selectors.DefaultSelector()
    watch.register(proc.stderr, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if not watch.select(timeout=0.5):
                continue
            seen += os.read(proc.stderr.fileno(), 65536)
            # tqdm redraws "indexing tasks:  10%|#  | 5/48" with carriage returns
            counts = [int(part.split(b"/")[0].split()[-1]) for part in seen.split(b"\r")
                      if b"indexing tasks" in part and b"/" in part and part.split(b"/")[0].split()[-1].isdigit()]
            if counts and max(counts) >= KILL_AFTER_TASKS:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        watch.close()
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-way (exit {proc.returncode}): {seen[-2000:]!r}"
    return seen.decode(errors="replace")


def _tasks(store, cache) -> list[dict]:
    listed = run_cli("tasks", "--store", str(store), "--json", cache=cache)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_killed_index_run_leaves_a_queryable_store_and_a_rerun_completes_it(tmp_path, all_tasks):
    store, cache = tmp_path / "store", tmp_path
    first = [all_tasks[t] for t in ("sst2", "rte", "wmt16_translate_deen", "arc_easy")]
    small = write_jsonl(tmp_path / "small.jsonl", first)
    done = run_cli("index", "--validation", str(small), "--store", str(store), cache=cache)
    assert done.returncode == 0, done.stderr

    # the "larger file": the first four tasks unchanged plus twenty more (eight examples each)
    more = [t.model_copy(update={"examples": t.examples[:8]}) for name, t in all_tasks.items()
            if name not in {f.task for f in first}][:20]
    full = write_jsonl(tmp_path / "full.jsonl", first + more)
    _kill_during_indexing(["index", "--validation", str(full), "--store", str(store)], cache)

    # still queryable, still the complete tasks it had (a half-written task is never listed)
    assert sorted(r["task"] for r in _tasks(store, cache)) == sorted(t.task for t in first)
    routed = run_cli("route", QUERY, "--store", str(store), "--strategy", "examples", "--json", cache=cache)
    assert routed.returncode == 0, routed.stderr
    assert set(json.loads(routed.stdout)["tasks"]) <= {t.task for t in first}

    rerun = run_cli("index", "--validation", str(full), "--store", str(store), cache=cache, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    expected = {t.task: len(t.examples) for t in load_tasks(full)}
    listed = _tasks(store, cache)
    assert sorted(r["task"] for r in listed) == sorted(expected)  # every task, each once
    assert {r["task"]: r["size"] for r in listed} == expected

    # no duplicated example or task vector survived the kill
    from lorauter_integrations.store import TaskStore

    reopened = TaskStore(store)
    examples = reopened.examples()
    assert {t: len(v) for t, v in examples.items()} == expected
    q = reopened.featurize("hybrid", [QUERY])
    ranked = reopened.nearest_tasks("hybrid", q, len(expected))[0]
    assert sorted(t for t, _ in ranked) == sorted(expected)
