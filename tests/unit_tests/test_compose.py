"""Composition math against direct computations, exact merge/restore, per-row adapters, cache."""

from __future__ import annotations

import copy
import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file

from lorauter_integrations.compose import Composer, CompositionConfig, PackedLinears, compose_factors
from lorauter_integrations.errors import CompositionError
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route

MODULES = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"]


def _route(adapters, weights):
    return Route(strategy="test", adapters=list(adapters), weights=list(weights))


def _direct_delta(folder, module):
    """s * B @ A straight from the files, without any of our code."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(folder / "adapter_model.safetensors")
    key = f"base_model.model.{module}"
    if f"{key}.lora_A.weight" not in t:
        return None
    return cfg["lora_alpha"] / cfg["r"] * t[f"{key}.lora_B.weight"] @ t[f"{key}.lora_A.weight"]


@pytest.fixture(params=[False, True], ids=["hooks", "packed"])
def setup(request, tiny_pool_dir, tiny_loaded):
    """A composer applying deltas by forward hooks, and one running the linears on oneDNN-packed weights."""
    if request.param and not PackedLinears.supports(tiny_loaded.model):
        pytest.skip("this torch build has no oneDNN packed linear kernels")
    pool = AdapterPool.from_dir(tiny_pool_dir).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    return tiny_loaded.model, pool, Composer(tiny_loaded.model, pool, prepack=request.param)


def _patches(model) -> int:
    """Forward hooks and instance-level forward overrides on the model's modules."""
    return sum(len(m._forward_hooks) + ("forward" in m.__dict__) for m in model.modules())


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_mixture_equals_weighted_sum_of_single_adapter_deltas(setup, tiny_pool_dir):
    model, pool, composer = setup
    adapters, weights = ["a", "b", "c"], [0.5, 0.3, 0.2]
    # Direct computation: a copy of the model whose weights carry W + sum_i w_i s_i B_i A_i.
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in MODULES:
            for a, w in zip(adapters, weights):
                delta = _direct_delta(tiny_pool_dir / a, name)
                if delta is not None:
                    reference.get_submodule(name).weight += w * delta
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    with composer.activate(composer.composition(_route(adapters, weights))):
        mixed = _logits(model, ids)
    assert (mixed - base).abs().max() > 1e-2  # the adapters really change the model
    torch.testing.assert_close(mixed, _logits(reference, ids), atol=1e-5, rtol=0)


def test_mixture_layer_output_matches_formula(setup, tiny_pool_dir):
    model, pool, composer = setup
    name = "model.layers.1.self_attn.v_proj"
    layer = model.get_submodule(name)
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        expected = layer(x) + sum(
            w * x @ _direct_delta(tiny_pool_dir / a, name).T for a, w in [("a", 0.6), ("c", 0.4)]
        )
        with composer.activate(composer.composition(_route(["a", "c"], [0.6, 0.4]))):
            got = layer(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_merge_then_restore_leaves_weights_bit_identical(setup):
    model, pool, composer = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.arange(12)[None]
    comp = composer.composition(_route(["a", "b", "c"], [0.2, 0.3, 0.5]))
    with composer.activate(comp):
        hooked = _logits(model, ids)
    base_tensor = model.get_submodule(MODULES[0]).weight.data
    with composer.activate(comp, merge=True):
        merged = _logits(model, ids)
        assert not torch.equal(model.get_submodule(MODULES[0]).weight, before[f"{MODULES[0]}.weight"])
        assert torch.equal(base_tensor, before[f"{MODULES[0]}.weight"])  # the base tensor is never written
        assert all(not m._forward_hooks for m in model.modules())  # merged: no extra op at all
    assert model.get_submodule(MODULES[0]).weight.data.data_ptr() == base_tensor.data_ptr()
    torch.testing.assert_close(merged, hooked, atol=1e-5, rtol=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rows_with_different_compositions_match_each_row_alone(setup):
    model, pool, composer = setup
    routes = [_route(["a"], [1.0]), None, _route(["b", "c"], [0.7, 0.3]), _route(["a"], [1.0])]
    comps = [composer.composition(r) if r else None for r in routes]
    ids = torch.randint(0, model.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(1))
    with composer.activate_rows(comps):
        batched = _logits(model, ids)
    for row, comp in enumerate(comps):
        with composer.activate(comp):
            alone = _logits(model, ids[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=0)


def test_restore_removes_every_hook_and_forward_override(setup):
    model, pool, composer = setup
    comp = composer.composition(_route(["a", "c"], [0.5, 0.5]))
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    for activate in (lambda: composer.activate(comp), lambda: composer.activate_rows([comp, None]),
                     lambda: composer.activate(comp, merge=True)):
        act = activate()
        # hooks: one per adapted module; packed: every linear layer runs on packed weights
        assert _patches(model) == (linears if composer.packed else 0 if act._swapped else len(comp.modules))
        act.restore()
        assert _patches(model) == 0
    assert not composer.active


def _packing_composer(model, tiny_loaded, tiny_pool_dir) -> Composer:
    if not PackedLinears.supports(model):
        pytest.skip("this torch build has no oneDNN packed linear kernels")
    pool = AdapterPool.from_dir(tiny_pool_dir).bind(model, tiny_loaded.base_model_id)
    return Composer(model, pool, prepack=True)


def _assert_packed_equals_plain(composer: Composer, model, ids: torch.Tensor) -> None:
    plain = _logits(model, ids)
    with composer.activate(None):
        packed = _logits(model, ids)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


def test_packed_linears_compute_what_nn_linear_computes(tiny_loaded, tiny_pool_dir):
    model = tiny_loaded.model
    composer = _packing_composer(model, tiny_loaded, tiny_pool_dir)
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(2))
    _assert_packed_equals_plain(composer, model, ids)


def test_a_replaced_weight_tensor_is_repacked_not_served_stale(tiny_loaded, tiny_pool_dir):
    model = copy.deepcopy(tiny_loaded.model)
    composer = _packing_composer(model, tiny_loaded, tiny_pool_dir)
    module = model.get_submodule(MODULES[0])
    module.weight.data = module.weight.data * 2  # another tensor: the packed copy is out of date
    _assert_packed_equals_plain(composer, model, torch.arange(10)[None])


def test_weights_loaded_in_place_are_repacked_not_served_stale(tiny_loaded, tiny_pool_dir):
    model = copy.deepcopy(tiny_loaded.model)
    composer = _packing_composer(model, tiny_loaded, tiny_pool_dir)
    ids = torch.arange(10)[None]
    with composer.activate(None):
        _logits(model, ids)  # packed copies made
    state = {k: v * 1.5 if k.endswith("weight") or k.endswith("bias") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # copies in place: same storage, new values
    _assert_packed_equals_plain(composer, model, ids)


def test_prepack_true_on_an_unsupported_model_is_refused(tiny_loaded, tiny_pool_dir):
    model = copy.deepcopy(tiny_loaded.model).to(torch.float16)
    pool = AdapterPool.from_dir(tiny_pool_dir).bind(model, tiny_loaded.base_model_id)
    with pytest.raises(CompositionError, match="prepack=True needs"):
        Composer(model, pool, prepack=True)
    assert Composer(model, pool).packed is None  # automatic: off, plain nn.Linear


def test_second_activation_without_restore_is_refused(setup):
    model, pool, composer = setup
    comp = composer.composition(_route(["a"], [1.0]))
    with composer.activate(comp):
        with pytest.raises(CompositionError, match="another composition is active"):
            composer.activate(comp)


def test_cache_eviction_frees_compositions(setup):
    model, pool, composer = setup
    composer.max_cached = 1
    first = composer.composition(_route(["a"], [1.0]))
    ref = weakref.ref(first.modules[MODULES[0]][0])
    with composer.activate(first):
        pass
    del first
    composer.composition(_route(["b"], [1.0]))
    gc.collect()
    assert ref() is None  # neither the cache nor any module holds the evicted tensors
    assert len(composer.cached) == 1


def test_cache_keys_differ_by_weights_strategy_and_adapter_revision(setup):
    model, pool, composer = setup
    r1 = _route(["a", "b"], [0.5, 0.5])
    assert composer.composition(r1) is composer.composition(_route(["b", "a"], [0.5, 0.5]))
    assert composer.composition(r1) is not composer.composition(_route(["a", "b"], [0.4, 0.6]))
    linear = composer.composition(r1, CompositionConfig(strategy="linear"))
    assert linear is not composer.composition(r1) and linear.strategy == "linear"
    before = composer.composition(r1)
    pool.register("a", "a")  # re-registered: a new revision, a new composition
    assert composer.composition(r1) is not before


@pytest.mark.parametrize("strategy", ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_equal_rank_strategies_refuse_unequal_ranks(setup, strategy):
    model, pool, composer = setup
    with pytest.raises(CompositionError, match="equal rank"):
        composer.composition(_route(["a", "c"], [0.5, 0.5]), CompositionConfig(strategy=strategy))


@pytest.mark.parametrize("strategy", ["cat", "linear", "ties", "magnitude_prune", "svd"])
def test_strategies_equal_peft_add_weighted_adapter(tiny_pool_dir, tiny_loaded, strategy):
    from peft import PeftModel

    pool = AdapterPool.from_dir(tiny_pool_dir).bind(tiny_loaded.model, tiny_loaded.base_model_id)
    config = CompositionConfig(strategy=strategy, density=0.5)
    ours = compose_factors([pool.weights("a"), pool.weights("b")], [0.3, 0.7], config)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_loaded.model), tiny_pool_dir / "a", adapter_name="a")
    peft_model.load_adapter(tiny_pool_dir / "b", adapter_name="b")
    peft_model.add_weighted_adapter(["a", "b"], [0.3, 0.7], "m", combination_type=strategy, density=0.5)
    for name, (A, B) in ours.items():
        layer = peft_model.base_model.model.get_submodule(name)
        pA, pB = layer.lora_A["m"].weight, layer.lora_B["m"].weight
        scale = layer.scaling["m"]
        # compare the deltas (SVD factors are only unique up to signs)
        torch.testing.assert_close(B @ A, scale * pB @ pA, atol=1e-5, rtol=1e-4)


def test_svd_of_half_precision_adapters_is_computed_in_fp32(setup):
    model, pool, composer = setup
    a, b = pool.weights("a"), pool.weights("b")
    half = [type(w)(w.adapter_id, w.revision, {n: type(m)(m.A.half(), m.B.half(), m.scaling)
                                               for n, m in w.modules.items()}) for w in (a, b)]
    factors = compose_factors(half, [0.5, 0.5], CompositionConfig(strategy="svd"))
    A, B = factors[MODULES[0]]
    assert A.dtype == torch.float16 and torch.isfinite(A).all()


def test_dare_is_deterministic_per_seed(setup):
    model, pool, composer = setup
    ws = [pool.weights("a"), pool.weights("b")]
    one = compose_factors(ws, [0.5, 0.5], CompositionConfig(strategy="dare_ties", seed=3))
    two = compose_factors(ws, [0.5, 0.5], CompositionConfig(strategy="dare_ties", seed=3))
    assert all(torch.equal(one[n][0], two[n][0]) for n in one)
