"""PEFT's Arrow router as an end-to-end baseline: an answerer for `e2e.evaluate_e2e`.

Arrow (Ostapenko et al. 2024, https://huggingface.co/papers/2405.11157; ``peft.create_arrow_model``)
routes per token inside every LoRA layer: each adapter's prototype is the top right singular
vector of its ``B @ A`` in that layer, a token's hidden state is compared with every prototype
(``|cos|``-like dot product), the ``top_k`` best adapters are mixed by a softmax with
``router_temperature``. It needs no task data and no router training, which makes it the natural
data-free baseline for our routers.

The comparison is kept fair: prompts are rendered exactly as our engine renders a plain string
prompt (`PromptRenderer`, chat template on, special tokens only when the template did not add
them, the prompt's end kept when it exceeds the context window), decoding is greedy with the
engine's end-of-sequence ids and token budgets, and answers are decoded as the engine decodes
them (tokens before the first end-of-sequence token, special tokens skipped, no clean-up, no
stripping).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ...adapters.pool import AdapterPool
from ...data import Example
from ...engine.models import DEMO_MODEL, DEMO_MODEL_ID, LoadedModel, load_base_model
from ...engine.prompts import PromptRenderer
from ...errors import IncompatibleAdapterError, InvalidInputError
from ...settings import quiet_loading

ROUTER = "arrow_router"  # the adapter name `peft.create_arrow_model` gives the router


def peft_has_arrow() -> bool:
    """Whether the installed PEFT ships Arrow (``ArrowConfig`` and ``create_arrow_model``)."""
    try:
        from peft import ArrowConfig, create_arrow_model  # noqa: F401
    except ImportError:
        return False
    return True


def check_arrow_compatible(pool: AdapterPool) -> None:
    """Refuse a pool Arrow cannot mix, naming the first adapter that differs: Arrow stacks the
    adapters' A and B per layer, so every adapter needs the same rank on the same modules.

    (PEFT checks rank and the *suffixes* of the target modules after loading every adapter; an
    adapter on other layers with the same suffixes passes its check and fails inside a forward.)
    """
    records = pool.records
    if not records:
        raise InvalidInputError("the adapter pool is empty: Arrow needs at least one adapter")
    ref = records[0]
    ref_ranks = {m: s[0] for m, s in ref.modules.items()}
    for rec in records:
        ranks = {m: s[0] for m, s in rec.modules.items()}
        if set(ranks) != set(ref_ranks):
            raise IncompatibleAdapterError(
                f"Arrow needs every adapter on the same modules: {rec.id!r} targets {len(ranks)} modules "
                f"({sorted({m.rsplit('.', 1)[-1] for m in ranks})}), {ref.id!r} {len(ref_ranks)} "
                f"({sorted({m.rsplit('.', 1)[-1] for m in ref_ranks})})")
        if len(set(ranks.values()) | set(ref_ranks.values())) != 1:
            raise IncompatibleAdapterError(
                f"Arrow needs one LoRA rank for every adapter and module: {rec.id!r} has r="
                f"{sorted(set(ranks.values()))}, {ref.id!r} r={sorted(set(ref_ranks.values()))}")


def _base_id(model: str | LoadedModel) -> str:
    """The base model id `load_base_model` will report for ``model``."""
    if isinstance(model, LoadedModel):
        return model.base_model_id
    if model == DEMO_MODEL:
        return DEMO_MODEL_ID
    marker = Path(model) / "BASE_MODEL_ID"
    return marker.read_text().strip() if marker.exists() else str(model)


class ArrowAnswerer:
    """Answers test queries with PEFT's Arrow model over every adapter of a pool.

    An `e2e.Answerer`: ``answerer(queries, ood, budgets) -> answers`` (pass it as
    ``evaluate_e2e(..., answerers={"arrow": answerer})``).

    Unseen-task mode (``ood=True``): each query is answered by an Arrow model without the adapters
    of its own task (``pool.task_to_adapter[task]`` and every adapter whose manifest lists the
    task), as our strategies lose their own adapter in that mode.

    Cost: the base model is loaded once more (a private copy: PEFT injects its layers into the
    model), every adapter of the pool is loaded into it once (``create_arrow_model``), and the
    prototypes (15 power iterations per adapter and layer) are computed once. An unseen-task
    model is then the same model with that task's adapters taken out of every Arrow layer (their
    prototype rows and names dropped), which is exactly what ``create_arrow_model`` over the
    remaining adapters builds (each prototype depends only on its own adapter and ``rng_seed``)
    and costs nothing to switch; queries are grouped by task so each group switches once. Per
    generated token, every Arrow layer computes all E adapters' low-rank products (PEFT weights
    the non-top-k ones by zero rather than skipping them): about E x r x (in + out) multiply-adds
    per layer, for 48 rank-8 adapters on q_proj/v_proj of SmolLM2-135M some 20 M per token on
    top of the model's 135 M, plus (tokens x E x out) floats of activations per layer.

    Args:
        pool_dir: Adapter pool folder (its ``adapters.json``, or every adapter subfolder).
        model: Base model id or path, ``"demo"``, or a `LoadedModel` (its model is copied, not
            modified).
        top_k: Adapters mixed per token (capped at the number of adapters available).
        router_temperature: Softmax temperature of the mixing coefficients.
        batch_size: Prompts generated together (left-padded).
        rng_seed: Seed of the power iteration's start vector (PEFT's default ``None`` makes
            prototypes, hence answers, vary between runs).
        cache: JSON file of answers reused across runs (keyed by model, prompt, the Arrow
            settings, the adapters in the model and the token budget).
        progress: Show a progress bar.
    """

    def __init__(self, pool_dir: str | Path, model: str | LoadedModel = DEMO_MODEL, *, top_k: int = 3,
                 router_temperature: float = 1.0, batch_size: int = 16, rng_seed: int | None = 0,
                 cache: str | Path | None = None, progress: bool = True, device: str | None = None,
                 dtype=None) -> None:
        if not peft_has_arrow():
            import peft

            raise InvalidInputError(f"the installed PEFT {peft.__version__} has no Arrow router (PEFT >= 0.18 has it)")
        if top_k < 1 or router_temperature <= 0 or batch_size < 1:
            raise InvalidInputError("top_k and batch_size must be at least 1, router_temperature above 0")
        self.pool_dir = Path(pool_dir)
        self.pool = AdapterPool.from_dir(pool_dir)
        check_arrow_compatible(self.pool)
        self.ids = self.pool.ids
        self.top_k, self.temperature, self.rng_seed = top_k, router_temperature, rng_seed
        self.batch_size, self.progress = batch_size, progress
        self.cache_path = Path(cache) if cache else None
        self._model_spec, self._device, self._dtype = model, device, dtype
        self.model = None  # the PeftModel, built on first use
        self.tokenizer = None
        self.model_name = _base_id(model)  # known without loading: cached answers need no model
        self._layers: list = []  # every ArrowLoraLinearLayer
        self._full: list[tuple[list[str], object]] = []  # their full adapter names and prototypes
        self._active: tuple[str, ...] | None = None
        self.stats: dict[str, float] = {}  # of the last call: models (adapter sets), generated, cached, seconds

    # ------------------------------------------------------------------ building
    def banned(self, task: str) -> frozenset[str]:
        """The adapters an unseen-task query of ``task`` may not use."""
        own = self.pool.task_to_adapter.get(task)
        return frozenset({r.id for r in self.pool.records if task in r.tasks} | ({own} if own else set()))

    def _build(self) -> None:
        import torch
        from peft import ArrowConfig, create_arrow_model

        if isinstance(self._model_spec, LoadedModel):
            base, tok, base_id = copy.deepcopy(self._model_spec.model), self._model_spec.tokenizer, self._model_spec.base_model_id
        else:
            loaded = load_base_model(self._model_spec, device=self._device, dtype=self._dtype)
            base, tok, base_id = loaded.model, loaded.tokenizer, loaded.base_model_id
        self.model_name = base_id
        self.pool.bind(base, base_id)  # shapes and base model checked before PEFT loads anything
        config = ArrowConfig(top_k=min(self.top_k, len(self.ids)), router_temperature=self.temperature,
                             rng_seed=self.rng_seed)
        with quiet_loading():
            model = create_arrow_model(base, [str(self.pool.record(i).path) for i in self.ids], config)
        model.eval()
        self._layers = [m.lora_arrow[ROUTER] for m in model.modules()
                        if hasattr(m, "lora_arrow") and ROUTER in m.lora_arrow]
        if not self._layers:
            raise IncompatibleAdapterError("create_arrow_model put no Arrow layer into the model")
        parents = [m for m in model.modules() if hasattr(m, "lora_arrow") and ROUTER in m.lora_arrow]
        with torch.no_grad():
            for layer, parent in zip(self._layers, parents):
                layer.build_prototypes(parent.lora_A, parent.lora_B)  # what the first forward would do
        self._full = [(list(layer.task_adapter_names), layer.prototypes) for layer in self._layers]
        # create_arrow_model names the adapters task_0, task_1, ... in the order given.
        self._names = {pid: f"task_{i}" for i, pid in enumerate(self.ids)}
        self.model, self.tokenizer = model, tok
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.renderer = PromptRenderer(tok, chat_template=True)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos.append(tok.eos_token_id)
        self.eos_ids = sorted(set(eos))
        cfg = model.get_base_model().config
        self.context_window = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)
        self._active = tuple(self.ids)

    def use(self, adapters: Sequence[str]) -> None:
        """Route over ``adapters`` only (a subset of the pool): the Arrow model
        ``create_arrow_model`` would build over them, without reloading anything."""
        import torch

        if self.model is None:
            self._build()
        adapters = tuple(a for a in self.ids if a in set(adapters))
        if not adapters:
            raise InvalidInputError("Arrow needs at least one adapter")
        if adapters == self._active:
            return
        names = [self._names[a] for a in adapters]
        for layer, (full_names, protos) in zip(self._layers, self._full):
            rows = torch.tensor([full_names.index(n) for n in names], device=protos.device)
            layer.task_adapter_names = list(names)
            layer.register_buffer("prototypes", protos.index_select(0, rows), persistent=False)
            layer.top_k = min(self.top_k, len(names))
        self._active = adapters

    # ------------------------------------------------------------------ answering
    def _ids(self, text: str, budget: int) -> list[int]:
        rendered, templated = self.renderer.render(text)
        ids = self.tokenizer(rendered, add_special_tokens=not templated)["input_ids"]
        keep = self.context_window - budget
        return ids[-keep:] if len(ids) > keep else ids

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy answers of the current Arrow model, batched with left padding."""
        import torch
        from transformers import GenerationConfig

        if self.model is None:
            self._build()
        rows = [self._ids(p, max_new_tokens) for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_ids,
                                  pad_token_id=pad)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=config)
        answers = []
        eos = set(self.eos_ids)
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            answers.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=False))
        return answers

    def __call__(self, queries: Sequence[Example], ood: bool, budgets: dict[str, int]) -> list[str]:
        from tqdm.auto import tqdm

        from .e2e import _AnswerCache

        start = time.perf_counter()
        store = _AnswerCache(self.cache_path, self.model_name)
        groups: dict[frozenset, list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[self.banned(q.task) if ood else frozenset()].append(i)
        answers: list[str | None] = [None] * len(queries)
        generated = cached = 0
        bar = tqdm(total=len(queries), desc=f"arrow {'OOD' if ood else 'ID'}", unit="answer", disable=not self.progress)
        for banned, idx in groups.items():
            adapters = tuple(a for a in self.ids if a not in banned)
            key = ("arrow", self.top_k, self.temperature, self.rng_seed, adapters)
            by_metric: dict[str, list[int]] = defaultdict(list)
            for i in idx:
                hit = store.get(queries[i].inputs, key, budgets[queries[i].metric])
                if hit is None:
                    by_metric[queries[i].metric].append(i)
                else:
                    answers[i], cached = hit, cached + 1
            bar.update(len(idx) - sum(map(len, by_metric.values())))
            if by_metric:
                self.use(adapters)
            for metric, todo in by_metric.items():
                todo.sort(key=lambda i: len(queries[i].inputs))  # similar lengths together: less padding
                for s in range(0, len(todo), self.batch_size):
                    chunk = todo[s : s + self.batch_size]
                    for i, text in zip(chunk, self.generate([queries[i].inputs for i in chunk], budgets[metric])):
                        answers[i] = text
                        store.put(queries[i].inputs, key, budgets[metric], text)
                    generated += len(chunk)
                    store.save()
                    bar.update(len(chunk))
        bar.close()
        if self.model is not None:
            self.use(self.ids)
        self.stats = {"models": len(groups), "generated": generated, "cached": cached,
                      "seconds": round(time.perf_counter() - start, 1)}
        return [a if a is not None else "" for a in answers]


__all__ = ["ArrowAnswerer", "check_arrow_compatible", "peft_has_arrow"]
