"""PEFT's Arrow router as an e2e answerer, on the tiny random Llama and real PEFT adapters."""

from __future__ import annotations

import copy
import json

import pytest

peft = pytest.importorskip("peft", reason="PEFT is not installed")
if not hasattr(peft, "create_arrow_model"):
    pytest.skip(f"the installed PEFT {peft.__version__} has no Arrow router", allow_module_level=True)

import torch  # noqa: E402

from lorauter_integrations.adapters.pool import AdapterPool  # noqa: E402
from lorauter_integrations.data import Example  # noqa: E402
from lorauter_integrations.engine import RoutedModel  # noqa: E402
from lorauter_integrations.engine.prompts import PromptRenderer  # noqa: E402
from lorauter_integrations.errors import IncompatibleAdapterError  # noqa: E402
from lorauter_integrations.lab.evaluation.arrow import ArrowAnswerer  # noqa: E402
from lorauter_integrations.lab.evaluation.e2e import evaluate_e2e, markdown  # noqa: E402

PROMPTS = ["Is this review positive or negative? The film was a joy.", "Translate to French: the cat sits.",
           "What is the capital of France?", "Summarize: the committee met on Tuesday, then left."]
BUDGET = {"em": 6, "rouge": 6, "bleu": 6}


def _pool(root, make_adapter, names):
    for i, name in enumerate(names):
        make_adapter(name, r=4, seed=10 + i, root=root)
    manifest = {"adapters": [{"id": n, "path": n, "tasks": [f"task_{n}"]} for n in names]}
    (root / "adapters.json").write_text(json.dumps(manifest))
    return root


def _queries(tasks):
    return [Example(task=t, domain="d", metric="em", inputs=p, targets="x") for t in tasks for p in PROMPTS]


def _plain_generate(model, tokenizer, prompts, budget):
    """Greedy answers of ``model`` for ``prompts``, one at a time, rendered and decoded as the engine does."""
    renderer = PromptRenderer(tokenizer)
    out = []
    for p in prompts:
        text, templated = renderer.render(p)
        ids = torch.tensor([tokenizer(text, add_special_tokens=not templated)["input_ids"]])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                 do_sample=False, eos_token_id=[tokenizer.eos_token_id],
                                 pad_token_id=tokenizer.pad_token_id)
        row = gen[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
        out.append(tokenizer.decode(row[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return out


def test_arrow_with_one_adapter_and_top_1_is_plain_lora_generation(tmp_path, make_adapter, tiny_loaded):
    root = _pool(tmp_path / "one", make_adapter, ["a"])
    base = copy.deepcopy(tiny_loaded.model)
    arrow = ArrowAnswerer(root, tiny_loaded, top_k=1, batch_size=3, progress=False)
    got = arrow(_queries(["task_a"]), False, BUDGET)  # batched, left-padded

    lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(root / "a")).eval()
    assert got == _plain_generate(lora, tiny_loaded.tokenizer, PROMPTS, BUDGET["em"])
    assert got != _plain_generate(base, tiny_loaded.tokenizer, PROMPTS, BUDGET["em"])  # the adapter matters
    # ... and what our engine answers with that adapter as the route (so the comparison is fair).
    engine = RoutedModel(copy.deepcopy(tiny_loaded), pool=AdapterPool.from_dir(root), merge=False)
    ours = engine.generate(PROMPTS, [engine.route_from_override(["a"])] * len(PROMPTS),
                           max_new_tokens=BUDGET["em"], temperature=0.0)
    assert got == [g.text for g in ours]


def test_ood_drops_the_own_adapter_and_equals_a_fresh_arrow_model_without_it(tmp_path, make_adapter, tiny_loaded):
    root = _pool(tmp_path / "three", make_adapter, ["a", "b", "d"])
    arrow = ArrowAnswerer(root, tiny_loaded, top_k=2, rng_seed=0, progress=False)
    queries = _queries(["task_a", "task_b"])
    ood = arrow(queries, True, BUDGET)
    assert arrow.stats["models"] == 2 and arrow.banned("task_a") == {"a"}
    ident = arrow(queries, False, BUDGET)
    assert arrow.stats["models"] == 1 and arrow._active == ("a", "b", "d")  # the full model is restored

    def fresh(names):
        cfg = peft.ArrowConfig(top_k=2, router_temperature=1.0, rng_seed=0)
        return peft.create_arrow_model(copy.deepcopy(tiny_loaded.model), [str(root / n) for n in names], cfg).eval()

    without_a = fresh(["b", "d"])
    assert ood[:4] == _plain_generate(without_a, tiny_loaded.tokenizer, PROMPTS, BUDGET["em"])
    assert ident[:4] == _plain_generate(fresh(["a", "b", "d"]), tiny_loaded.tokenizer, PROMPTS, BUDGET["em"])
    arrow.use(["b", "d"])  # the model built over the remaining adapters has one adapter fewer
    layer = next(m.lora_arrow["arrow_router"] for m in arrow.model.modules() if hasattr(m, "lora_arrow"))
    ref = next(m.lora_arrow["arrow_router"] for m in without_a.modules() if hasattr(m, "lora_arrow"))
    assert layer.prototypes.shape[0] == 2 and len(layer.task_adapter_names) == 2
    assert torch.allclose(layer.prototypes, ref.prototypes, atol=1e-6)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(arrow.model(input_ids=ids).logits, without_a(input_ids=ids).logits, atol=1e-5)


def test_cached_answers_are_reused(tmp_path, make_adapter, tiny_loaded):
    root = _pool(tmp_path / "two", make_adapter, ["a", "b"])
    cache = tmp_path / "arrow_cache.json"
    first = ArrowAnswerer(root, tiny_loaded, top_k=2, cache=cache, progress=False)(_queries(["task_a"]), True, BUDGET)
    again = ArrowAnswerer(root, tiny_loaded, top_k=2, cache=cache, progress=False)
    assert again(_queries(["task_a"]), True, BUDGET) == first
    assert again.stats["generated"] == 0 and again.stats["cached"] == 4
    assert again.model is None  # nothing to generate: the model is never built


def test_it_is_an_e2e_answerer(tmp_path, make_adapter, tiny_loaded):
    root = _pool(tmp_path / "two", make_adapter, ["a", "b"])
    engine = RoutedModel(copy.deepcopy(tiny_loaded), pool=AdapterPool.from_dir(root))
    report = evaluate_e2e(engine, _queries(["task_a", "task_b"]), strategies=["base", "oracle"], ood_modes=(False, True),
                          limit_per_task=2, max_new_tokens=BUDGET, progress=False, bootstrap=20,
                          answerers={"arrow": ArrowAnswerer(root, tiny_loaded, top_k=1, progress=False)})
    assert all(r.strategies == ["base", "oracle", "arrow"] for r in report.results)
    assert all(s["adapters"] == {} for r in report.results for s in r.samples if s["strategy"] == "arrow")
    share = [line for line in markdown(report).splitlines() if line.startswith("| base-model share |")]
    assert share and all(line.endswith("| - |") for line in share)  # no route, no fallback share


def test_a_pool_arrow_cannot_mix_is_refused_with_the_reason(tiny_pool_dir, tiny_loaded):
    # c has r=2 on q/k/v, a and b r=4 on q/v: Arrow stacks A and B per layer.
    with pytest.raises(IncompatibleAdapterError, match="same modules|one LoRA rank"):
        ArrowAnswerer(tiny_pool_dir, tiny_loaded)
