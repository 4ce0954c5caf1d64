"""Bad input: a typed error (CLI: one line on stderr, non-zero exit, no traceback), nothing changed.

Cases already covered elsewhere are not repeated here: JSONL validation (tests/routing/test_data.py),
store encoder/duplicate/unwritable checks (tests/routing/test_store.py), pool checks
(tests/test_pool.py), equal-rank merges (tests/test_compose.py), override validation
(tests/routing/test_routers.py, tests/test_engine.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lorauter_integrations.engine import RoutedModel
from lorauter_integrations.errors import InvalidInputError, UnknownAdapterError
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.routing import build_router
from lorauter_integrations.route import Route
from lorauter_integrations.store import TaskStore
from rel_support import SLICE, assert_one_line_error, run_cli, write_jsonl


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _contents(folder: Path) -> tuple:
    """What a store holds: task records and example counts (opening a store may touch its files)."""
    store = TaskStore(folder)
    return [r.model_dump() for r in store.tasks()], {t: len(v) for t, v in store.examples().items()}


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, slice_tasks):
    """A store indexed by the CLI, and its file fingerprint."""
    root = tmp_path_factory.mktemp("cli")
    val = write_jsonl(root / "val.jsonl", slice_tasks[:3])
    done = run_cli("index", "--validation", str(val), "--store", str(root / "store"), cache=root)
    assert done.returncode == 0, done.stderr
    return root / "store", root


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"task": "a", "inputs": "caf\xe9 au lait"}\n', "not valid UTF-8"),
        (b'{"task": "a\\u001b[31m", "inputs": "x"}\n', "control characters"),
        (b'{"task": "a", "inputs": "line one\nline two"}\n', "not JSON"),  # a raw newline splits the record
        (b'{"task": "a", "inputs": "ring the bell\x07"}\n', "not JSON"),  # raw control characters
        (b'{"task": "a", "targets": "x"}\n', "field 'inputs'"),
        (b'{"task": ["a"], "inputs": "x"}\n', "field 'task'"),
        (b'', "no records"),
        (b'{"task": "a", "inputs": "x", "domain": "d1"}\n{"task": "a", "inputs": "y", "domain": "d2"}\n',
         "inconsistent"),
    ],
    ids=["invalid-utf8", "control-char-id", "raw-newline", "raw-control-char", "missing-inputs", "task-not-string",
         "empty", "two-domains"],
)
def test_cli_refuses_a_bad_validation_file_in_one_line_and_changes_nothing(cli_store, tmp_path, content, message):
    store, cache = cli_store
    before = _fingerprint(store)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    done = run_cli("index", "--validation", str(bad), "--store", str(store), cache=cache)
    assert_one_line_error(done, message)
    assert _fingerprint(store) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["remove", "no-such-task"], "not in the store"),
        (["route", "hello", "--strategy", "oracle"], "known_task"),
    ],
)
def test_cli_store_mistakes_are_one_line_errors_and_change_nothing(cli_store, args, message):
    store, cache = cli_store
    before = _contents(store)
    done = run_cli(*args, "--store", str(store), cache=cache)
    assert_one_line_error(done, message)
    assert _contents(store) == before


def test_cli_store_path_that_is_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    done = run_cli("tasks", "--store", str(blocker / "store"), cache=tmp_path)
    assert_one_line_error(done, "cannot open the Chroma store")


@pytest.mark.parametrize("damage", ["pickle-only", "escaping-path"])
def test_cli_refuses_a_bad_adapter_pool_in_one_line(tiny_pool_dir, tmp_path, slice_tasks, damage):
    if damage == "pickle-only":
        torch.save({}, tiny_pool_dir / "a" / "adapter_model.bin")
        (tiny_pool_dir / "a" / "adapter_model.safetensors").unlink()
        message = "pickle"
    else:
        manifest = json.loads((tiny_pool_dir / "adapters.json").read_text())
        manifest["adapters"][0]["path"] = "../../outside"
        (tiny_pool_dir / "adapters.json").write_text(json.dumps(manifest))
        message = "escapes the pool directory"
    manifest_before = (tiny_pool_dir / "adapters.json").read_bytes()
    val = write_jsonl(tmp_path / "val.jsonl", slice_tasks[:1])
    done = run_cli("map-adapters", "--validation", str(val), "--pool", str(tiny_pool_dir), cache=tmp_path)
    assert_one_line_error(done, message)
    assert (tiny_pool_dir / "adapters.json").read_bytes() == manifest_before


@pytest.fixture
def engine(tiny_loaded, tiny_pool_dir):
    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir))


@pytest.mark.parametrize(
    "adapters, weights, error",
    [
        (["a", "b"], [float("nan"), 1.0], InvalidInputError),
        (["a", "b"], [-0.5, 1.5], InvalidInputError),
        (["a", "b"], [0.5, 0.6], InvalidInputError),
        (["a", "b"], [1.0], InvalidInputError),
        (["a"], [], InvalidInputError),
        (["a", "a"], [0.5, 0.5], InvalidInputError),
        (["zz"], [1.0], UnknownAdapterError),
    ],
    ids=["nan", "negative", "sum-1.1", "too-few-weights", "no-weights", "repeated-id", "unknown-id"],
)
def test_a_hand_built_route_gets_the_same_checks_as_an_override(engine, adapters, weights, error):
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    try:
        route = Route(strategy="user", adapters=adapters, weights=weights)
    except InvalidInputError:  # refused as soon as it is built (Route checks its own weights)
        assert error is InvalidInputError
        return
    with pytest.raises(error):
        engine.generate(["Is this review positive?"], [route], max_new_tokens=3)
    with pytest.raises(error):
        list(engine.stream("Is this review positive?", route, max_new_tokens=3))
    assert all(torch.equal(before[k], v) for k, v in engine.model.state_dict().items())
    assert not engine.composer.cached  # nothing was composed from the bad route


def test_a_100000_character_prompt_is_routed_truncated_and_says_so(tiny_loaded, tiny_pool_dir, tmp_path,
                                                                    slice_tasks):
    store = TaskStore(tmp_path / "store")
    store.index(slice_tasks, progress=False)
    before = [r.model_dump() for r in store.tasks()]
    router = build_router("lorauter", store, {t: "abc"[i % 3] for i, t in enumerate(SLICE)})
    engine = RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), router=router)
    prompt = ("Is this movie review positive or negative? " * 2400)[:99_990] + " Answer:"
    prompt = prompt + "x" * (100_000 - len(prompt))
    assert len(prompt) == 100_000
    [g] = engine.generate([prompt], max_new_tokens=6)
    assert g.route.truncated and g.route.adapters and sum(g.route.weights) == pytest.approx(1.0)
    assert g.prompt_tokens == engine.context_window - 6 and g.completion_tokens <= 6
    chunks = list(engine.stream(prompt, max_new_tokens=6))
    assert chunks[-1].route.truncated and "".join(c.text for c in chunks) == g.text
    assert [r.model_dump() for r in store.tasks()] == before


def test_control_characters_inside_jsonl_inputs_are_indexed_and_routed(tmp_path, slice_tasks):
    # Escaped control characters are valid JSON strings: they must neither crash Chroma nor the
    # encoder (raw ones, and invalid UTF-8, are refused by the reader: see the CLI cases above).
    f = tmp_path / "ctl.jsonl"
    f.write_text('{"task": "ctl", "inputs": "ring\\u0007 the \\u0000bell\\u001b[31m loudly"}\n'
                 '{"task": "ctl", "inputs": "\\u0000\\u0001 ring the bell twice"}\n')
    store = TaskStore(tmp_path / "store")
    store.index(slice_tasks[:2], progress=False)
    report = store.index_file(f, progress=False)
    assert report.added == ["ctl"] and len(store.examples(["ctl"])["ctl"]) == 2
    route = build_router("lorauter", store).route("ring\x07 the \x00bell loudly")
    assert route.tasks[0] == "ctl"
