"""One configuration for the CLI and Python (issue 14): lorauter.toml < LORAUTER_* env vars < explicit
values; `lorauter route` maps tasks to the pool's adapters (what `generate` composes) and reads the
store, pool and routing knobs from the project file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorauter_integrations.errors import InvalidInputError

DEMO_POOL_DIR = Path(__import__("lorauter_integrations").__file__).parent / "_adapters" / "flan"
LORAUTER = [sys.executable, "-m", "lorauter_integrations.cli"]
REVIEW = "Review: the plot drags and the acting is wooden. Did the reviewer like the movie? OPTIONS: - no - yes"


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAUTER_CACHE": str(cwd / "cache"), **env}
    full.pop("LORAUTER_CONFIG", None)
    return subprocess.run([*LORAUTER, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=600)


@pytest.fixture
def project(tmp_path, flan_tasks):
    """A project folder: validation sets, a lorauter.toml naming its store and the bundled pool."""
    (tmp_path / "val.jsonl").write_text("".join(e.model_dump_json() + "\n" for t in flan_tasks for e in t.examples))
    (tmp_path / "lorauter.toml").write_text(f'store = "my_store"\npool = "{DEMO_POOL_DIR}"\nk = 2\ntau = 0.1\n')
    (tmp_path / "my_store").mkdir()
    return tmp_path


def test_settings_precedence_toml_then_env_then_explicit(project, monkeypatch):
    from lorauter_integrations.settings import load_settings

    monkeypatch.delenv("LORAUTER_CONFIG", raising=False)
    monkeypatch.chdir(project / "my_store")  # found in a parent folder
    s = load_settings()
    assert (s.k, s.tau, s.strategy, s.model) == (2, 0.1, "lorauter", "demo")
    assert s.store == str(project / "my_store") and s.source == str(project / "lorauter.toml")
    assert s.router_config() == {"k": 2, "tau": 0.1}
    monkeypatch.setenv("LORAUTER_K", "4")
    monkeypatch.setenv("LORAUTER_FLOOR", "0.3")
    assert (load_settings().k, load_settings().floor) == (4, 0.3)
    assert load_settings(k=1, floor=None).k == 1  # explicit wins; None means "not given"


def test_settings_refuse_unknown_keys_and_bad_values(project, monkeypatch):
    from lorauter_integrations.settings import load_settings

    monkeypatch.chdir(project)
    (project / "lorauter.toml").write_text('top_k = 2\n')
    with pytest.raises(InvalidInputError, match="unknown setting.*top_k"):
        load_settings()
    (project / "lorauter.toml").write_text('k = 0\n')
    with pytest.raises(InvalidInputError, match="setting 'k'"):
        load_settings()


def test_cli_route_reads_the_project_file_and_prints_the_pools_adapters(project):
    from lorauter_integrations.adapters.pool import AdapterPool

    pool = AdapterPool.from_dir(DEMO_POOL_DIR)
    assert run("index", "--validation", "val.jsonl", cwd=project).returncode == 0  # store from lorauter.toml
    out = run("route", REVIEW, "--json", cwd=project)
    assert out.returncode == 0, out.stderr
    route = json.loads(out.stdout)
    assert len(route["tasks"]) == 2  # k = 2 from lorauter.toml
    task_to_adapter = pool.task_to_adapter
    assert set(route["adapters"]) == {task_to_adapter[t] for t in route["tasks"]}  # adapters, not task ids
    assert set(route["adapters"]) <= set(pool.ids)
    env_k = run("route", REVIEW, "--json", cwd=project, LORAUTER_K="1")
    assert len(json.loads(env_k.stdout)["tasks"]) == 1
    opt_k = run("route", REVIEW, "--json", "-k", "3", cwd=project, LORAUTER_K="1")
    assert len(json.loads(opt_k.stdout)["tasks"]) == 3


def test_writing_commands_need_a_named_store(tmp_path):
    out = run("index", "--validation", "missing.jsonl", cwd=tmp_path)
    assert out.returncode != 0  # the file is checked first
    (tmp_path / "v.jsonl").write_text('{"task": "t", "inputs": "hello"}\n')
    out = run("index", "--validation", "v.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "which task store" in out.stderr, out.stderr


def test_add_adapter_with_its_validation_set_makes_it_routable_in_one_command(tmp_path):
    import shutil

    shutil.copytree(DEMO_POOL_DIR / "sst2", tmp_path / "downloads" / "film_lora")
    (tmp_path / "lorauter.toml").write_text('pool = "my_pool"\nstore = "my_store"\n')
    (tmp_path / "films.jsonl").write_text("".join(json.dumps({"task": "film_reviews", "inputs": t}) + "\n" for t in (
        "Review: a joyless, clumsy film. Positive or negative?", "Review: a delight from start to end. Verdict?")))
    done = run("add-adapter", "downloads/film_lora", "--validation", "films.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "my_pool" / "adapters.json").read_text())
    assert manifest["adapters"] == [{"id": "film_lora", "path": "film_lora", "tasks": ["film_reviews"]}]
    out = run("route", REVIEW, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    route = json.loads(out.stdout)
    assert route["tasks"] == ["film_reviews"] and route["adapters"] == ["film_lora"]
