"""The `lorauter` CLI contract: index, route --json, eval-routing --json, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorauter_integrations.data import bundled_data_dir

LORAUTER = [sys.executable, "-m", "lorauter_integrations.cli"]


def run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAUTER_CACHE": str(cache)}
    return subprocess.run([*LORAUTER, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory, flan_tasks, flan_queries):
    d = tmp_path_factory.mktemp("files")
    val, test = d / "val.jsonl", d / "test.jsonl"
    val.write_text("".join(e.model_dump_json() + "\n" for t in flan_tasks for e in t.examples))
    test.write_text("".join(q.model_dump_json() + "\n" for q in flan_queries[::5]))
    return val, test


def test_index_then_route_json_prints_a_route(tmp_path, small_files):
    val, _ = small_files
    store = tmp_path / "store"
    done = run("index", "--validation", str(val), "--store", str(store), cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "8 added" in done.stderr
    again = run("index", "--validation", str(val), "--store", str(store), cache=tmp_path)
    assert "8 unchanged" in again.stderr
    out = run("route", "Translate to English: Guten Morgen, wie geht es dir?", "--store", str(store), "--json", cache=tmp_path)
    assert out.returncode == 0, out.stderr
    route = json.loads(out.stdout)
    assert route["strategy"] == "lorauter" and route["tasks"][0].startswith("wmt")
    assert abs(sum(route["weights"]) - 1.0) < 1e-6 and len(route["adapters"]) == len(route["weights"])


def test_eval_routing_json_has_the_contract_keys(tmp_path, small_files):
    val, test = small_files
    out = run("eval-routing", "--validation", str(val), "--test", str(test), "--strategy", "lorauter,uniform",
              "--ood", "--json", cache=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert [r["strategy"] for r in results] == ["lorauter", "uniform"]
    for r in results:
        assert set(r) >= {"strategy", "ood", "n", "task_top1", "domain_top1", "task_recall_at_k"}
        assert r["ood"] is True and r["n"] == len(test.read_text().splitlines())
        assert r["task_top1"] == 0.0  # the own task is excluded in the unseen-task setting
    assert results[0]["domain_top1"] > results[1]["domain_top1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "--validation", "missing.jsonl"], "cannot read"),
        (["route", "   "], "empty"),
        (["route", "hello", "--strategy", "nope"], "unknown strategy"),
    ],
)
def test_user_mistakes_are_one_line_errors_without_traceback(tmp_path, small_files, args, message):
    val, _ = small_files
    store = tmp_path / "store"
    run("index", "--validation", str(val), "--store", str(store), cache=tmp_path)
    if args[0] == "route":
        args = [*args, "--store", str(store)]
    out = run(*args, cache=tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1


def test_bad_jsonl_leaves_the_store_unchanged(tmp_path, small_files):
    val, _ = small_files
    store = tmp_path / "store"
    run("index", "--validation", str(val), "--store", str(store), cache=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"task": "x", "inputs": "fine"}\n{"task": "y", "inputs": 3}\n')
    out = run("index", "--validation", str(bad), "--store", str(store), cache=tmp_path)
    assert out.returncode != 0 and "bad.jsonl:2" in out.stderr
    listed = run("tasks", "--store", str(store), "--json", cache=tmp_path)
    assert sorted(r["task"] for r in json.loads(listed.stdout)) == sorted(
        {json.loads(line)["task"] for line in val.read_text().splitlines()})


def test_bundled_data_is_shipped():
    assert (bundled_data_dir() / "validation.jsonl").exists()
