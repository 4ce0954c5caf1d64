"""Hostile adapter pools, manifests, overrides and routes: typed errors at registration, every
file read confined to the pool, weights replaced on disk reloaded with their own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorauter_integrations.adapters.manifest import load_manifest
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.errors import AdapterError, InvalidInputError, LoRAuterError, ManifestError
from lorauter_integrations.route import Route
from lorauter_integrations.routing.simple import override_route

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _edit_tensors(folder: Path, fn) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    save_file(fn(tensors), str(folder / WEIGHTS))


def _edit_config(folder: Path, fn) -> None:
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps(fn(config)))


# -- confinement -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [WEIGHTS, CONFIG])
def test_a_file_symlinked_outside_the_pool_is_refused(tiny_pool_dir, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / name
    target.write_bytes((tiny_pool_dir / "a" / name).read_bytes())  # a valid file, just not in the pool
    (tiny_pool_dir / "a" / name).unlink()
    (tiny_pool_dir / "a" / name).symlink_to(target)
    with pytest.raises(AdapterError, match="outside the pool directory"):
        AdapterPool.from_dir(tiny_pool_dir)


def test_etc_passwd_as_adapter_config_is_never_read(tiny_pool_dir):
    (tiny_pool_dir / "a" / CONFIG).unlink()
    (tiny_pool_dir / "a" / CONFIG).symlink_to("/etc/passwd")
    with pytest.raises(AdapterError, match="outside the pool directory"):
        AdapterPool.from_dir(tiny_pool_dir)


def test_a_symlink_inside_the_pool_is_fine(tiny_pool_dir):
    shared = tiny_pool_dir / "shared.safetensors"
    (tiny_pool_dir / "a" / WEIGHTS).rename(shared)
    (tiny_pool_dir / "a" / WEIGHTS).symlink_to(shared)
    pool = AdapterPool.from_dir(tiny_pool_dir)
    assert pool.weights("a").modules


def test_a_weights_symlink_swapped_after_registration_is_refused_at_load(tiny_pool_dir, tmp_path):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    outside = tmp_path / "evil.safetensors"
    outside.write_bytes((tiny_pool_dir / "b" / WEIGHTS).read_bytes())
    (tiny_pool_dir / "a" / WEIGHTS).unlink()
    (tiny_pool_dir / "a" / WEIGHTS).symlink_to(outside)
    with pytest.raises(AdapterError, match="outside the pool directory"):
        pool.weights("a")


# -- registration ----------------------------------------------------------------------------------
def _zero_rank(t):
    return {k: (v[:0] if ".lora_A." in k else v[:, :0]) for k, v in t.items()}


@pytest.mark.parametrize("damage, message", [
    (("tensors", _zero_rank), "rank 0"),
    (("tensors", lambda t: {k: v.to(torch.int8) for k, v in t.items()}),
     "accepted dtypes: float16, bfloat16, float32"),
    (("tensors", lambda t: {k: v.fill_(float("nan")) if i == 0 else v for i, (k, v) in enumerate(t.items())}),
     "NaN or infinite"),
    (("tensors", lambda t: {k: v.fill_(float("inf")) if i == 1 else v for i, (k, v) in enumerate(t.items())}),
     "NaN or infinite"),
    (("tensors", lambda t: {k: v.fill_(1e38) if i == 2 else v for i, (k, v) in enumerate(t.items())}),
     "values up to 1e\\+38"),
    (("config", lambda c: {**c, "alpha_pattern": {"q_proj(": 4}}), "not a valid regular expression"),
    (("config", lambda c: [c]), "expected a JSON object"),
    (("config", lambda c: {**c, "lora_alpha": float("nan")}), "lora_alpha must be a finite number"),
    (("config", lambda c: {**c, "lora_alpha": "8"}), "lora_alpha must be a number"),
    (("config", lambda c: {**c, "lora_alpha": True}), "lora_alpha must be a number"),
    (("config", lambda c: {**c, "alpha_pattern": {"q_proj": "16"}}), "must be a number"),
    (("config", lambda c: {**c, "use_rslora": "yes"}), "use_rslora must be true or false"),
], ids=["rank0", "int8", "nan", "inf", "1e38", "bad-regex", "config-list", "alpha-nan", "alpha-str", "alpha-bool",
        "pattern-alpha-str", "rslora-str"])
def test_a_broken_adapter_is_a_typed_error_at_registration(tiny_pool_dir, damage, message):
    kind, fn = damage
    (_edit_tensors if kind == "tensors" else _edit_config)(tiny_pool_dir / "a", fn)
    with pytest.raises(AdapterError, match=message):
        AdapterPool.from_dir(tiny_pool_dir)


def test_weights_replaced_after_registration_are_reloaded_with_their_own_config(tiny_pool_dir, make_adapter):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    before = pool.record("a")
    assert before.rank == 4 and pool.weights("a").modules
    pool._resident.clear()  # evicted (LRU), as in a pool serving many adapters
    # retrained in place with another rank and alpha
    make_adapter("a", r=2, alpha=6, seed=9, root=tiny_pool_dir)
    after_weights = pool.weights("a")
    after = pool.record("a")
    assert after.rank == 2 and after.revision > before.revision
    for name, module in after_weights.modules.items():
        assert module.A.shape[0] == 2
        assert module.scaling == pytest.approx(6 / 2)  # not the old 8 / 4
    assert after.tasks == before.tasks


# -- manifest --------------------------------------------------------------------------------------
def _manifest(root: Path, adapters, **top) -> Path:
    (root / "adapters.json").write_text(json.dumps({"base_model": "tiny-random-llama", **top, "adapters": adapters}))
    return root


@pytest.mark.parametrize("adapters, message", [
    ([{"id": "a", "tasks": "sst2"}], "must be a list of task ids"),
    ([{"id": "a", "tasks": ["t"]}, {"id": "a", "path": "b"}], "listed twice"),
    ([{"id": "a", "path": None}], "must be a folder name"),
    ([{"id": "a", "tasks": [1, None]}], "tasks"),
    ([{"id": None}], "id"),
    ([{"path": "a"}], "id"),
    ([["a"]], "adapter #0"),
    ("a,b", "adapters"),
], ids=["tasks-string", "duplicate-id", "path-null", "tasks-non-strings", "id-null", "id-missing", "entry-list",
        "adapters-string"])
def test_a_malformed_manifest_is_a_typed_error(tiny_pool_dir, adapters, message):
    _manifest(tiny_pool_dir, adapters)
    with pytest.raises(ManifestError, match=message) as err:
        AdapterPool.from_dir(tiny_pool_dir)
    assert str(tiny_pool_dir / "adapters.json") in str(err.value)


def test_a_deeply_nested_manifest_is_a_typed_error_not_a_recursion_error(tiny_pool_dir):
    (tiny_pool_dir / "adapters.json").write_text('{"adapters": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ManifestError, match="nested"):
        AdapterPool.from_dir(tiny_pool_dir)
    (tiny_pool_dir / "adapters.json").write_text('{"adapters": [], "x": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(ManifestError, match="nested"):
        load_manifest(tiny_pool_dir / "adapters.json")


def test_the_manifest_keeps_extra_keys_and_defaults_path_to_id(tiny_pool_dir):
    _manifest(tiny_pool_dir, [{"id": "a", "tasks": ["t1"], "trained_on": ["t1"]}, {"id": "b"}])
    m = load_manifest(tiny_pool_dir / "adapters.json")
    assert [e.path for e in m.adapters] == ["a", "b"] and m.adapters[0].model_extra == {"trained_on": ["t1"]}
    pool = AdapterPool.from_dir(tiny_pool_dir)
    assert pool.ids == ["a", "b"] and pool.task_to_adapter == {"t1": "a"}


# -- overrides and routes --------------------------------------------------------------------------
@pytest.mark.parametrize("adapters, weights, message", [
    ("ab", None, r"list of adapter ids.*\['ab'\]"),
    (["a", "b"], ["x", 1], "weights must be numbers"),
    (["a", "b"], [None, 1], "weights must be numbers"),
    (["a", "b"], ["0.5", "0.5"], "weights must be numbers"),
    (["a", "b"], [True, False], "weights must be numbers"),
    (["a", "b"], [float("nan"), 1], "finite"),
    (["a"], "1", "list of numbers"),
    ([1, 2], None, "non-empty strings"),
    ([], [1.0], "without adapters"),
])
def test_bad_overrides_are_typed_errors(adapters, weights, message):
    with pytest.raises(InvalidInputError, match=message):
        override_route(adapters, weights, known_adapters=["a", "b", "ab"])


@pytest.mark.parametrize("fields, message", [
    ({"adapters": [], "weights": [0.5, 0.5]}, "0 adapters but 2 weights"),
    ({"adapters": ["a"], "weights": ["0.5"]}, "weights must be numbers"),
    ({"adapters": ["a"], "weights": [True]}, "weights must be numbers"),
    ({"adapters": ["a", "b"], "weights": [1.5, -0.5]}, "non-negative"),
    ({"adapters": ["a"], "weights": [float("inf")]}, "finite"),
    ({"adapters": ["a"], "weights": "1"}, "list of numbers"),
])
def test_malformed_routes_are_typed_errors(fields, message):
    with pytest.raises(InvalidInputError, match=message) as err:
        Route(strategy="test", **fields)
    assert isinstance(err.value, LoRAuterError)


def test_valid_routes_and_overrides_still_work():
    import numpy as np

    r = Route(strategy="t", adapters=["a", "b"], weights=[np.float32(0.25), 0.75])
    assert r.weights == [0.25, 0.75] and Route.model_validate(r.model_dump()) == r
    assert override_route(["a", "b"], [1, 0], known_adapters=["a", "b"]).weights == [1.0, 0.0]
    assert override_route([]).fallback
