"""The PEFT folder `VLLMEngine` publishes for a route is exactly the route's composition.

No vLLM server needed: the folder is loaded back with PEFT onto the tiny random Llama and its
logits compared with the local engine's activation of the same route (adapters of different
ranks and target modules, so the zero padding to one rank is exercised).
"""

from __future__ import annotations

import json

import pytest
from tiny_model import TINY_BASE_ID, make_tiny_model


@pytest.mark.parametrize("merge", [False, True])
def test_composed_folder_is_the_exact_mixture(tiny_loaded, tiny_tokenizer, tiny_pool_dir, tmp_path, merge):
    import torch
    from peft import PeftModel

    from lorauter_integrations.adapters.pool import AdapterPool
    from lorauter_integrations.compose import CompositionConfig, compose_factors
    from lorauter_integrations.engine.local import RoutedModel
    from lorauter_integrations.engine.vllm import write_peft_adapter

    pool = AdapterPool.from_dir(tiny_pool_dir)
    engine = RoutedModel(tiny_loaded, pool=pool, prepack=False)
    adapters, weights = ["a", "b", "c"], [0.5, 0.2, 0.3]  # a, b: r=4 on q/v; c: r=2 on q/k/v
    route = engine.route_from_override(adapters, weights)
    pairs = sorted(zip(adapters, weights))
    modules = compose_factors([pool.weights(a) for a, _ in pairs], [w for _, w in pairs], CompositionConfig())
    folder = tmp_path / "composed"
    assert write_peft_adapter(folder, modules, base_model=TINY_BASE_ID) == 10
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 10
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]

    ids = torch.tensor([tiny_tokenizer("Translate to French: the cat sits on the mat.")["input_ids"]])
    with torch.no_grad():
        base = tiny_loaded.model(ids).logits
        with engine.activate(route, merge=merge):
            local = tiny_loaded.model(ids).logits
        peft = PeftModel.from_pretrained(make_tiny_model(len(tiny_tokenizer)), str(folder)).eval()
        served = peft(ids).logits
    assert not torch.allclose(base, local, atol=1e-3)  # the adapters do change the output
    torch.testing.assert_close(served, local, atol=2e-5, rtol=1e-4)


def test_zero_padding_keeps_the_delta(tmp_path):
    import torch
    from safetensors.torch import load_file

    from lorauter_integrations.engine.vllm import write_peft_adapter

    A1, B1 = torch.randn(3, 8), torch.randn(6, 3)
    A2, B2 = torch.randn(5, 8), torch.randn(8, 5)
    r = write_peft_adapter(tmp_path / "f", {"m.q_proj": (A1, B1), "m.v_proj": (A2, B2)}, base_model="x")
    assert r == 5
    t = load_file(str(tmp_path / "f" / "adapter_model.safetensors"))
    a, b = t["base_model.model.m.q_proj.lora_A.weight"], t["base_model.model.m.q_proj.lora_B.weight"]
    assert a.shape == (5, 8) and b.shape == (6, 5)
    torch.testing.assert_close(b @ a, B1 @ A1)
