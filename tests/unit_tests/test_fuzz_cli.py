"""Hypothesis fuzzing of the `lorauter` command's arguments (in process, typer's runner): every
run ends with a result or a typed error (`LoRAuterError`, or typer's own usage error), never
another exception, and a refused `index` leaves the store unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lorauter_integrations.cli import app
from lorauter_integrations.errors import LoRAuterError

sys.path.insert(0, str(Path(__file__).parent))
from test_store_metadata import HashEncoder  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)  # lone surrogates included


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, monkeypatch_module):
    """A small store indexed with a hashing encoder (no model), used by every fuzzed run."""
    from lorauter_integrations.store import TaskStore

    root = tmp_path_factory.mktemp("cli-fuzz")
    rows = [{"task": t, "inputs": f"{t} example {i}", "targets": "x", "domain": "d"}
            for t in ("alpha", "beta", "gamma") for i in range(4)]
    (root / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with TaskStore(root / "store", encoder=HashEncoder()) as store:
        store.index_file(root / "val.jsonl", progress=False)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    from lorauter_integrations import store as store_module

    # The CLI opens stores with the default encoder: use the hashing one (no model download, fast).
    real = store_module.TaskStore.__init__

    def with_hash_encoder(self, *args, **kwargs):
        kwargs.setdefault("encoder", HashEncoder())
        real(self, *args, **kwargs)

    mp.setattr(store_module.TaskStore, "__init__", with_hash_encoder)
    yield mp
    mp.undo()


def _ok_or_typed(result) -> None:
    exc = result.exception
    assert exc is None or isinstance(exc, (LoRAuterError, SystemExit)), repr(exc)


@SETTINGS
@given(text=TEXT, strategy=st.sampled_from(["lorauter", "lorauter-paper", "base", "nope", ""]),
       k=st.integers(-2, 9), tau=st.floats(allow_nan=True, allow_infinity=True))
def test_route_ends_with_a_route_or_a_typed_error(store_dir, text, strategy, k, tau):
    result = CliRunner().invoke(app, ["route", text, "--store", str(store_dir / "store"), "--strategy", strategy,
                                      "-k", str(k), "--tau", str(tau), "--json"])
    _ok_or_typed(result)


@SETTINGS
@given(lines=st.lists(st.one_of(TEXT, st.dictionaries(st.sampled_from(["task", "inputs", "targets", "domain"]),
                                                      st.one_of(TEXT, st.integers(), st.none()))), max_size=5))
def test_index_of_a_fuzzed_file_is_refused_or_applied_and_a_refusal_changes_nothing(store_dir, lines, tmp_path_factory):
    from lorauter_integrations.store import TaskStore

    path = tmp_path_factory.mktemp("f") / "val.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines),
                    encoding="utf-8", errors="surrogatepass")
    with TaskStore(store_dir / "store") as store:
        before = {r.task: r.model_dump() for r in store.tasks()}
    result = CliRunner().invoke(app, ["index", "--validation", str(path), "--store", str(store_dir / "store")])
    _ok_or_typed(result)
    if result.exception is not None:
        with TaskStore(store_dir / "store") as store:
            assert {r.task: r.model_dump() for r in store.tasks()} == before
