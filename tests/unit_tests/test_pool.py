"""AdapterPool: manifest, compatibility checks, security, lazy loading and LRU residency."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorauter_integrations.errors import AdapterError, IncompatibleAdapterError, UnknownAdapterError
from lorauter_integrations.adapters.pool import AdapterPool


def test_manifest_declares_ids_tasks_and_task_to_adapter_map(tiny_pool_dir):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    assert pool.ids == ["a", "b", "c"]
    assert pool.task_to_adapter == {"task_a": "a", "task_a2": "a", "task_b": "b", "task_c": "c"}
    assert pool.record("c").rank == 2
    assert set(pool.record("c").modules) == {
        f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"
    }
    assert pool.record("a").scaling["model.layers.0.self_attn.q_proj"] == 8 / 4  # lora_alpha / r


def test_pool_without_manifest_registers_every_adapter_subfolder(tiny_pool_dir):
    (tiny_pool_dir / "adapters.json").unlink()
    pool = AdapterPool.from_dir(tiny_pool_dir)
    assert pool.ids == ["a", "b", "c"]
    assert pool.task_to_adapter == {}


def test_adapters_load_lazily_and_lru_bounds_resident_adapters(tiny_pool_dir, tiny_loaded):
    pool = AdapterPool.from_dir(tiny_pool_dir, max_resident=2).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    assert pool.resident_ids == []
    w = pool.weights("a")
    assert w.modules["model.layers.0.self_attn.q_proj"].A.dtype == torch.float32
    pool.weights("b")
    pool.weights("a")  # a becomes most recent
    pool.weights("c")
    assert pool.resident_ids == ["a", "c"]


def test_loaded_factors_equal_the_saved_tensors(tiny_pool_dir, tiny_loaded):
    pool = AdapterPool.from_dir(tiny_pool_dir).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    saved = load_file(tiny_pool_dir / "a" / "adapter_model.safetensors")
    mod = pool.weights("a").modules["model.layers.1.self_attn.v_proj"]
    assert torch.equal(mod.A, saved["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"])
    assert torch.equal(mod.B, saved["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"])


def test_unknown_adapter_id_raises_unknown_adapter_error(tiny_pool_dir):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'zzz'"):
        pool.weights("zzz")


def test_remove_and_reregister_while_serving(tiny_pool_dir, tiny_loaded):
    pool = AdapterPool.from_dir(tiny_pool_dir).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    pool.weights("a")
    rev = pool.record("a").revision
    pool.remove("a")
    assert "a" not in pool and "a" not in pool.resident_ids
    with pytest.raises(UnknownAdapterError):
        pool.weights("a")
    pool.register("a", "a", tasks=["task_a"])
    assert pool.record("a").revision > rev
    assert pool.task_to_adapter["task_a"] == "a"


def test_adapter_for_another_base_model_is_refused(make_adapter, tmp_path, tiny_loaded):
    make_adapter("other", base_model="meta-llama/Llama-3.1-8B", root=tmp_path / "p")
    pool = AdapterPool.from_dir(tmp_path / "p")
    with pytest.raises(IncompatibleAdapterError, match="trained for 'meta-llama/Llama-3.1-8B'"):
        pool.bind(tiny_loaded.model, tiny_loaded.base_model_id)


def test_adapter_with_other_shapes_is_refused(make_adapter, tmp_path, tiny_loaded):
    make_adapter("wide", hidden_size=64, root=tmp_path / "p")
    pool = AdapterPool.from_dir(tmp_path / "p")
    with pytest.raises(IncompatibleAdapterError, match="another model size"):
        pool.bind(tiny_loaded.model, tiny_loaded.base_model_id)


def test_adapter_targeting_a_missing_module_is_refused_at_registration(make_adapter, tmp_path, tiny_loaded):
    folder = make_adapter("ghost", root=tmp_path / "p")
    path = folder / "adapter_model.safetensors"
    tensors = {k.replace("layers.1.", "layers.7."): v for k, v in load_file(path).items()}
    save_file(tensors, path)
    pool = AdapterPool(tmp_path / "p").bind(tiny_loaded.model, tiny_loaded.base_model_id)
    with pytest.raises(IncompatibleAdapterError, match="model.layers.7.self_attn"):
        pool.register("ghost", "ghost")
    assert "ghost" not in pool


def test_local_copy_of_the_base_model_counts_as_the_same_base(make_adapter, tmp_path, tiny_loaded):
    make_adapter("local", base_model="/home/me/models/Tiny-Random-Llama/", root=tmp_path / "p")
    pool = AdapterPool.from_dir(tmp_path / "p").bind(tiny_loaded.model, tiny_loaded.base_model_id)
    assert pool.ids == ["local"]


def test_pickle_weights_are_refused_unless_allowed(make_adapter, tmp_path, tiny_loaded):
    folder = make_adapter("pkl", root=tmp_path / "p")
    tensors = load_file(folder / "adapter_model.safetensors")
    torch.save(tensors, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="pickle"):
        AdapterPool.from_dir(tmp_path / "p")
    pool = AdapterPool.from_dir(tmp_path / "p", allow_pickle=True).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert torch.equal(pool.weights("pkl").modules["model.layers.0.self_attn.q_proj"].B, tensors[key])


def test_manifest_path_escaping_the_pool_is_refused(tiny_pool_dir, make_adapter, tmp_path):
    make_adapter("outside", root=tmp_path / "elsewhere")
    manifest = json.loads((tiny_pool_dir / "adapters.json").read_text())
    manifest["adapters"].append({"id": "outside", "path": "../elsewhere/outside"})
    (tiny_pool_dir / "adapters.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterError, match="escapes the pool directory"):
        AdapterPool.from_dir(tiny_pool_dir)


def test_symlink_escaping_the_pool_is_refused(tiny_pool_dir, make_adapter, tmp_path):
    target = make_adapter("outside", root=tmp_path / "elsewhere")
    os.symlink(target, tiny_pool_dir / "sneaky")
    pool = AdapterPool.from_dir(tiny_pool_dir)
    with pytest.raises(AdapterError, match="escapes the pool directory"):
        pool.register("sneaky", "sneaky")


@pytest.mark.parametrize("bad_id", ["../a", "a/b", "", ".hidden", "a\\b"])
def test_adapter_ids_cannot_be_paths(tiny_pool_dir, bad_id):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    with pytest.raises(AdapterError, match="invalid adapter id"):
        pool.register(bad_id, "a")


def test_missing_adapter_folder_names_the_folder(tiny_pool_dir):
    shutil.rmtree(tiny_pool_dir / "b")
    with pytest.raises(AdapterError, match="adapter folder not found: .*b"):
        AdapterPool.from_dir(tiny_pool_dir)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_raises_adapter_error_with_the_path(tiny_pool_dir, damage):
    path = tiny_pool_dir / "a" / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(AdapterError, match="corrupt or truncated safetensors") as info:
        AdapterPool.from_dir(tiny_pool_dir)
    assert str(path) in str(info.value)


def test_dora_adapters_are_refused_rather_than_misapplied(tiny_pool_dir):
    cfg_path = tiny_pool_dir / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["use_dora"] = True
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleAdapterError, match="use_dora"):
        AdapterPool.from_dir(tiny_pool_dir)
