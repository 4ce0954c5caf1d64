"""Security: no code runs from adapter or model files, no path escapes the pool, no network.

(Pickle refusal by default, ``..``/symlink escapes and path-like ids are covered in
tests/test_pool.py; here: what is left of issue 7's security list.)
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from lorauter_integrations.engine import RoutedModel
from lorauter_integrations.errors import AdapterError, UnknownAdapterError
from lorauter_integrations.engine.models import load_base_model
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route


class _Payload:
    """Unpickling this runs ``exec``: what a malicious ``adapter_model.bin`` would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_a_malicious_pickle_adapter_never_runs_even_when_pickle_is_allowed(make_adapter, tmp_path):
    folder = make_adapter("evil", root=tmp_path / "pool")
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": _Payload(marker)},
               folder / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle"):
        AdapterPool.from_dir(tmp_path / "pool")  # refused without unpickling
    with pytest.raises(AdapterError, match="cannot load pickle weights"):
        AdapterPool.from_dir(tmp_path / "pool", allow_pickle=True)  # weights_only=True refuses the payload
    assert not marker.exists()


def test_an_absolute_adapter_path_outside_the_pool_is_refused(tiny_pool_dir, make_adapter, tmp_path):
    outside = make_adapter("outside", root=tmp_path / "elsewhere")
    manifest = json.loads((tiny_pool_dir / "adapters.json").read_text())
    manifest["adapters"].append({"id": "outside", "path": str(outside)})
    (tiny_pool_dir / "adapters.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterError, match="escapes the pool directory"):
        AdapterPool.from_dir(tiny_pool_dir)


@pytest.mark.parametrize("adapter_id", ["../a", "a/../b", "/etc/passwd", "..", "b/"])
def test_path_like_adapter_ids_in_routes_are_unknown_adapters(tiny_loaded, tiny_pool_dir, adapter_id):
    engine = RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir))
    with pytest.raises(UnknownAdapterError):
        engine.route_from_override([adapter_id])
    # a hand-built Route is looked up by id in the pool, never opened as a path
    with pytest.raises(UnknownAdapterError):
        engine.generate(["hello"], [Route(strategy="user", adapters=[adapter_id], weights=[1.0])], max_new_tokens=2)


@pytest.fixture
def model_with_remote_code(tmp_path, tiny_tokenizer):
    """A local model folder whose config points at its own Python code (``auto_map``); importing
    that code leaves a marker file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder, marker = tmp_path / "model", tmp_path / "remote-code-ran"
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "custom.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("ran")
        from transformers import LlamaConfig, LlamaForCausalLM
        class CustomConfig(LlamaConfig):
            pass
        class CustomModel(LlamaForCausalLM):
            config_class = CustomConfig
    """))
    return folder, marker


def test_a_models_own_python_code_never_runs_by_default(model_with_remote_code):
    folder, marker = model_with_remote_code
    loaded = load_base_model(str(folder))
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not marker.exists()
    engine = RoutedModel(str(folder))  # the engine's default is the same
    assert type(engine.model).__name__ == "LlamaForCausalLM" and not marker.exists()
    # the folder really carries remote code: opting in runs it
    opted_in = load_base_model(str(folder), trust_remote_code=True)
    assert type(opted_in.model).__name__ == "CustomModel" and marker.exists()
