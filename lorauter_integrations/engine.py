"""`RoutedModel`: a local causal LM whose every request runs with the adapters its route picks.

>>> engine = RoutedModel.demo()
>>> [g] = engine.generate(["Review: the plot was dull and the acting wooden. Positive or negative?"],
...                       max_new_tokens=8)
>>> g.text, g.route.adapters, g.finish_reason
('negative', ['sst2'], 'stop')

A request is routed on its text (a chat: its last user message), its route is turned into a
composition (`compose.Composer`, cached), and the model decodes with it:

- one route for the whole batch (single stream included): merged weights ``W + B A`` are swapped
  in for the targeted layers, so decoding runs at base-model speed; the base tensors are never
  written and are swapped back after;
- different routes in one batch: every LoRA layer adds each row's own delta in one batched
  matmul, so the batch still takes one forward pass per step and rows never mix adapters.

On CPU, the linear layers run on oneDNN-prepacked weights while a request decodes (``prepack``,
see `compose.PackedLinears`): 8 rows then cost about what 1 row costs per step, where MKL's
``nn.Linear`` takes ~1.7x as long (BENCHMARKS.md).

One model serves one batch at a time (a lock); concurrent callers queue. Framework layers
(LangChain, LlamaIndex) call `route` / `route_from_override`, then `generate` / `stream`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Sequence, Union

import torch
from pydantic import BaseModel

from .compose import Activation, Composer, Composition, CompositionConfig
from .errors import InvalidInputError
from .models import DEMO_MODEL, LoadedModel, cache_dir, load_base_model
from .pool import AdapterPool
from .routing.route import Route

PromptLike = Union[str, list[dict]]
_ROLES = ("system", "user", "assistant", "tool")


class Generation(BaseModel):
    """One completed request: its text, the route it ran with, token usage, why it stopped."""

    text: str
    route: Route
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class StreamChunk(BaseModel):
    """A piece of streamed text; the last chunk carries ``finish_reason`` and token usage."""

    text: str
    route: Route
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ModelLock:
    """Who uses the model now: reentrant for its holder, yet releasable from any thread.

    A stream holds the model between its steps, and async callers may resume a sync iterator on
    whichever worker thread is free; a `threading.RLock` released there raises and stays held by
    the first thread forever (every later request would hang).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._depth and self._owner == me:
                self._depth += 1
                return True
            if not blocking:
                timeout = 0
            if not self._cond.wait_for(lambda: self._depth == 0, None if timeout < 0 else timeout):
                return False
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if not self._depth:
                raise RuntimeError("the model lock is not held")
            self._depth -= 1
            if not self._depth:
                self._owner = None
                self._cond.notify()

    def __enter__(self) -> "_ModelLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class _Request:
    ids: list[int]
    route: Route
    composition: Composition | None


@dataclass
class _Row:
    """Decoding state of one batch row: tokens so far, visible text, stop detection."""

    tokenizer: Any
    stops: Sequence[str]
    eos_ids: frozenset
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    def push(self, token: int) -> None:
        if self.finish_reason is not None:
            return
        self.tokens.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = text[:cut], "stop"
        else:
            self.text = text
            if len(self.tokens) >= self.max_new_tokens:
                self.finish_reason = "length"

    def settled_text(self) -> str:
        """Text that can no longer change: without a half-decoded character or a stop's prefix."""
        if self.finish_reason is not None:
            return self.text
        text = self.text.rstrip("\ufffd")
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        return text[: len(text) - hold]


class RoutedModel:
    """Base model + adapter pool + router: generate and stream with per-request adapters.

    Args:
        model: ``"demo"``, a Hugging Face id or local path of a causal LM, or a `LoadedModel`.
        pool: The adapters (an empty pool when omitted: every route must then be the base).
        router: Any object with ``route(text, exclude_tasks=...) -> Route`` (see
            ``lorauter_integrations.routing``). Built lazily from ``store`` when omitted.
        store: A `TaskStore` the lazily built routers query.
        strategy: Default routing strategy when the router is built here.
        composition: Composition strategy name or a `CompositionConfig` (default: exact mixture).
        merge: Fold a batch's single composition into the weights while decoding (base speed);
            off: apply it by forward hooks (exactly the unmerged mixture).
        max_resident_compositions: Composition cache bound.
        max_batch_size: Requests decoded together by `generate` (longer lists run in chunks).
        chat_template: Wrap a plain-text prompt as one user message when the tokenizer has a
            chat template (instruct models answer far better); off: feed the text verbatim.
        prefill_padding_slack: Prompts of a batch are prefilled in groups of similar length
            while padding stays under this fraction of their tokens (0.15: at most 15% wasted
            compute); raise it on GPUs, where one padded batch is cheaper than several calls.
        prepack: Run the linear layers on oneDNN-prepacked weights while decoding (CPU; see
            `compose.PackedLinears`: a batch of 8 rows then decodes at nearly the cost of one).
            None: automatic (on for CPU models in fp32/bf16 with up to 2 GiB of linear weights;
            it keeps a second copy of them).
    """

    def __init__(
        self,
        model: str | LoadedModel = DEMO_MODEL,
        *,
        pool: AdapterPool | None = None,
        router=None,
        store=None,
        strategy: str = "lorauter",
        composition: str | CompositionConfig = "mixture",
        device: str | None = None,
        dtype=None,
        merge: bool = True,
        max_resident_compositions: int = 32,
        max_batch_size: int = 16,
        chat_template: bool = True,
        trust_remote_code: bool = False,
        router_config: dict | None = None,
        prefill_padding_slack: float = 0.15,
        prepack: bool | None = None,
    ):
        loaded = model if isinstance(model, LoadedModel) else load_base_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = str(next(self.model.parameters()).device)
        self.model_name: str = loaded.base_model_id
        self.pool = (pool if pool is not None else AdapterPool()).bind(self.model, loaded.base_model_id)
        config = composition if isinstance(composition, CompositionConfig) else CompositionConfig(strategy=composition)
        self.composer = Composer(self.model, self.pool, config, max_cached=max_resident_compositions, prepack=prepack)
        self.merge = merge
        self.max_batch_size = max_batch_size
        self.prefill_padding_slack = prefill_padding_slack
        self._can_split_prefill = True
        self.use_chat_template = chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.store = store
        self.strategy = getattr(router, "strategy", strategy)
        self.router_config = dict(router_config or {})
        self._user_router = router
        self._routers: dict[str, Any] = {}
        self._routers_version = self.pool.version
        self._routers_lock = threading.Lock()  # not the model lock: routing never waits for decoding
        self._lock = _ModelLock()
        cfg = self.model.config
        self.context_window: int = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        )
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)

    def __repr__(self) -> str:
        return (f"RoutedModel(model={self.model_name!r}, adapters={len(self.pool)}, strategy={self.strategy!r}, "
                f"composition={self.composer.config.strategy!r}, merge={self.merge}, device={self.device!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def demo(cls, *, store_dir: str | Path | None = None, **kwargs) -> "RoutedModel":
        """The ready demo engine: SmolLM2-135M-Instruct, the bundled Flan adapter pool and a task
        store indexed (once, idempotently) from the bundled validation sets in the cache dir."""
        from .data import bundled_data_dir
        from .store import TaskStore

        pool_dir = Path(__file__).parent / "_adapters" / "flan"
        pool = AdapterPool.from_dir(pool_dir)
        store = TaskStore(store_dir or cache_dir() / "stores" / "demo")
        store.index_file(bundled_data_dir() / "validation.jsonl", progress=False)
        kwargs.setdefault("model", DEMO_MODEL)
        return cls(pool=pool, store=store, **kwargs)

    # ------------------------------------------------------------------ routing
    def route(self, text: str, *, strategy: str | None = None, exclude_tasks: Collection[str] = ()) -> Route:
        """Decide the adapters for ``text`` with the default (or the named) routing strategy."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("cannot route an empty prompt: give some text")
        return self._router(strategy or self.strategy).route(text, exclude_tasks=exclude_tasks)

    def route_from_override(self, adapters: list[str], weights: list[float] | None = None) -> Route:
        """A caller-chosen route, validated against the pool (weights default to uniform)."""
        from .routing import override_route

        return override_route(adapters, weights, known_adapters=self.pool.ids)

    def route_many(self, texts: Sequence[str], *, strategy: str | None = None) -> list[Route]:
        """Route several texts at once (one batched encode and store query when the router can)."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError("cannot route an empty prompt: give some text")
        router = self._router(strategy or self.strategy)
        if hasattr(router, "route_many"):
            return list(router.route_many(list(texts)))
        return [router.route(t) for t in texts]

    def activate(self, route: Route | None, *, merge: bool | None = None) -> Activation:
        """Apply ``route``'s composition to ``self.model`` until ``restore()`` (or the ``with`` ends).

        For code that runs the model itself, e.g. a stock ``transformers`` pipeline. The engine
        is locked meanwhile (other callers wait), so always restore, exactly once (from any
        thread)::

            with engine.activate(engine.route(text)):
                pipe(text)
        """
        self._lock.acquire()
        try:
            composition = None if route is None else self.composer.composition(route)
            activation = self.composer.activate(composition, merge=self.merge if merge is None else merge)
        except BaseException:
            self._lock.release()
            raise
        activation.on_restore(self._lock.release)
        return activation

    def _router(self, strategy: str):
        if self._user_router is not None and strategy == self.strategy:
            return self._user_router
        with self._routers_lock:
            if self._routers_version != self.pool.version:  # adapters changed: rebuild task maps
                self._routers.clear()
                self._routers_version = self.pool.version
            return self._router_locked(strategy)

    def _router_locked(self, strategy: str):
        router = self._routers.get(strategy)
        if router is None:
            from .routing import build_router

            if self.store is None and strategy != "base":
                raise InvalidInputError(
                    f"no router for strategy '{strategy}': pass router= or store= to RoutedModel, "
                    "or give explicit routes"
                )
            router = build_router(strategy, self.store, self.pool.task_to_adapter, **self.router_config)
            self._routers[strategy] = router
        return router

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[PromptLike],
        routes: Sequence[Route | None] | None = None,
        *,
        max_new_tokens: int | None = 256,
        temperature: float | None = 0.0,
        top_p: float | None = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Generation]:
        """Generate for every prompt (a string or a chat), each with its own route.

        ``routes`` (or one of its items) None: that prompt is routed on its text. Prompts are
        decoded in batches of ``max_batch_size`` (similar lengths together); a batch with
        different routes still takes one forward pass per step.
        """
        if isinstance(prompts, (str, dict)):
            raise InvalidInputError("generate() takes a list of prompts; use [prompt] for one")
        prompts = list(prompts)
        if routes is not None and len(routes) != len(prompts):
            raise InvalidInputError(f"{len(prompts)} prompts but {len(routes)} routes")
        max_new_tokens, temperature, top_p = self._check_params(max_new_tokens, temperature, top_p, stop)
        routes = list(routes) if routes is not None else [None] * len(prompts)
        todo = [i for i, r in enumerate(routes) if r is None]
        if todo:
            for p in prompts:
                self._render(p)  # refuse a malformed prompt before spending time on routing
            for i, r in zip(todo, self.route_many([self.routing_text(prompts[i]) for i in todo])):
                routes[i] = r
        requests = [self._prepare(p, routes[i], max_new_tokens) for i, p in enumerate(prompts)]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
        results: list[Generation | None] = [None] * len(requests)
        generator = self._generator(seed)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            rows = None
            for rows in self._decode([requests[i] for i in chunk], max_new_tokens, temperature, top_p,
                                     stop or (), generator):
                pass
            for i, row in zip(chunk, rows):
                results[i] = Generation(
                    text=row.text,
                    route=requests[i].route,
                    prompt_tokens=len(requests[i].ids),
                    completion_tokens=len(row.tokens),
                    finish_reason=row.finish_reason or "length",
                )
        return results  # type: ignore[return-value]

    def stream(
        self,
        prompt: PromptLike,
        route: Route | None = None,
        *,
        max_new_tokens: int | None = 256,
        temperature: float | None = 0.0,
        top_p: float | None = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[StreamChunk]:
        """Yield the text of ``prompt`` as it is decoded; the route is decided before the first
        chunk. Chunks join to exactly what `generate` returns; the last one carries usage."""
        max_new_tokens, temperature, top_p = self._check_params(max_new_tokens, temperature, top_p, stop)
        request = self._prepare(prompt, route, max_new_tokens)
        return self._stream(request, max_new_tokens, temperature, top_p, stop or (), self._generator(seed))

    def _stream(self, request: _Request, max_new_tokens, temperature, top_p, stop, generator) -> Iterator[StreamChunk]:
        sent = ""
        for (row,) in self._decode([request], max_new_tokens, temperature, top_p, stop, generator):
            text = row.settled_text()
            # Decoding more tokens can, rarely, re-spell earlier text; only ever send a strict
            # continuation of what was sent.
            piece = text[len(sent):] if text.startswith(sent) else ""
            if row.finish_reason is not None:
                yield StreamChunk(
                    text=piece, route=request.route, finish_reason=row.finish_reason,
                    prompt_tokens=len(request.ids), completion_tokens=len(row.tokens),
                )
                return
            if piece:
                yield StreamChunk(text=piece, route=request.route)
                sent = text

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_params(max_new_tokens, temperature, top_p, stop) -> tuple[int, float, float]:
        # None means "the default": framework layers pass their unset options through as None.
        max_new_tokens = 256 if max_new_tokens is None else max_new_tokens
        temperature = 0.0 if temperature is None else float(temperature)
        top_p = 1.0 if top_p is None else float(top_p)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(stop, str) or any(not isinstance(s, str) or not s for s in stop or ()):
            raise InvalidInputError("stop must be a list of non-empty strings")
        return max_new_tokens, temperature, top_p

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    def routing_text(self, prompt: PromptLike) -> str:
        """The text a prompt is routed on: the string itself, or a chat's last user message."""
        if isinstance(prompt, str):
            return prompt
        users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
        return users[-1] if users else (prompt[-1].get("content") or "")

    def _render(self, prompt: PromptLike) -> tuple[str, bool]:
        """Prompt -> model input text; True when it already holds the special tokens it needs."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidInputError("empty prompt: give some text")
            if not self.use_chat_template:
                return prompt, False
            prompt = [{"role": "user", "content": prompt}]
        elif not isinstance(prompt, list) or not prompt:
            raise InvalidInputError("a prompt is a string or a non-empty list of {'role', 'content'} messages")
        for m in prompt:
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content") or "", str):
                raise InvalidInputError(f"bad chat message {m!r}: need role in {_ROLES} and string content")
        if not any((m.get("content") or "").strip() for m in prompt):
            raise InvalidInputError("empty prompt: every message is empty")
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
        if not self.use_chat_template:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", False
        cont = messages[-1]["role"] == "assistant"
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
            )
        except Exception as exc:  # jinja raises its own errors (e.g. roles a template refuses)
            raise InvalidInputError(
                f"the model's chat template rejects these messages ({exc}); check roles and their order"
            ) from exc
        return text, True

    def _prepare(self, prompt: PromptLike, route: Route | None, max_new_tokens: int) -> _Request:
        text, templated = self._render(prompt)
        if route is None:
            route = self.route(self.routing_text(prompt))
        elif route.adapters:  # a caller-built Route gets an override's checks (ids, NaN, sum 1)
            self.route_from_override(route.adapters, route.weights)
        ids = self.tokenizer(text, add_special_tokens=not templated)["input_ids"]
        budget = self.context_window - max_new_tokens
        if budget < 1:
            raise InvalidInputError(
                f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the "
                f"{self.context_window}-token context: ask for fewer tokens"
            )
        if len(ids) > budget:
            ids = ids[-budget:]  # keep the end: the question and the generation prompt are there
            route = route.model_copy(update={"truncated": True})
        return _Request(ids=ids, route=route, composition=self.composer.composition(route))

    def _activate(self, requests: Sequence[_Request], merge: bool | None = None):
        comps = [r.composition for r in requests]
        first = comps[0]
        if all((c is None and first is None) or (c is not None and first is not None and c.key == first.key)
               for c in comps):
            return self.composer.activate(first, merge=self.merge if merge is None else merge)
        return self.composer.activate_rows(comps)

    def _prefill_groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Rows prefilled together: similar lengths, so that left padding wastes little compute.

        Prefill is compute-bound: a padded batch costs ``rows * longest`` tokens. Rows are
        grouped by length while the padding stays under ``prefill_padding_slack`` of the real
        tokens; decoding then runs all rows in one batch again.
        """
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[list[int]] = []
        total = 0
        for i in order:
            if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + self.prefill_padding_slack) * (total + lengths[i]):
                groups[-1].append(i)
                total += lengths[i]
            else:
                groups.append([i])
                total = lengths[i]
        return groups

    def _forward_prefill(self, requests: Sequence[_Request]):
        width = max(len(r.ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, width - len(r.ids):] = torch.tensor(r.ids)
            mask[i, width - len(r.ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], out.past_key_values

    def _split_prefill(self, requests: Sequence[_Request], groups: list[list[int]]):
        """Prefill each length group on its own, then right-align their KV caches into one batch
        cache (the mask hides the left padding). Plain `DynamicLayer` caches only: for sliding
        window or other cache kinds this returns None and the caller prefills one padded batch."""
        from transformers import DynamicCache

        width = max(len(r.ids) for r in requests)
        logits = None
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for group in groups:
            with self._activate([requests[i] for i in group], merge=False):  # hooks: no weight copies
                part_logits, cache = self._forward_prefill([requests[i] for i in group])
            layers = getattr(cache, "layers", None)
            if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
                self._can_split_prefill = False
                return None
            index = torch.tensor(group, device=part_logits.device)
            if logits is None:
                logits = part_logits.new_empty((len(requests), part_logits.shape[-1]))
                for layer in layers:
                    shape = (len(requests), layer.keys.shape[1], width, layer.keys.shape[3])
                    keys.append(layer.keys.new_zeros(shape))
                    values.append(layer.values.new_zeros(shape[:3] + (layer.values.shape[3],)))
            logits[index] = part_logits
            for k, v, layer in zip(keys, values, layers):
                k[index, :, width - layer.keys.shape[2]:] = layer.keys
                v[index, :, width - layer.values.shape[2]:] = layer.values
        return logits, DynamicCache(ddp_cache_data=list(zip(keys, values)))

    def _decode(self, requests, max_new_tokens, temperature, top_p, stop, generator) -> Iterator[list[_Row]]:
        """Decode a batch step by step (left padding, KV cache), yielding the rows after each step."""
        rows = [_Row(self.tokenizer, tuple(stop), self.eos_token_ids, max_new_tokens) for _ in requests]
        width = max(len(r.ids) for r in requests)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            mask[i, width - len(r.ids):] = 1
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._lock:
            activation = None
            try:
                groups = self._prefill_groups([len(r.ids) for r in requests])
                prefilled = None
                if len(groups) > 1 and self._can_split_prefill:
                    prefilled = self._split_prefill(requests, groups)
                activation = self._activate(requests)
                logits, cache = prefilled or self._forward_prefill(requests)
                for step in range(max_new_tokens):
                    with torch.inference_mode():
                        tokens = self._sample(logits, temperature, top_p, generator)
                    for row, token in zip(rows, tokens.tolist()):
                        row.push(token)
                    yield rows
                    if all(row.finish_reason is not None for row in rows) or step == max_new_tokens - 1:
                        return
                    with torch.inference_mode():
                        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
                        positions = positions[:, -1:] + 1
                        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                                         past_key_values=cache, use_cache=True)
                    logits, cache = out.logits[:, -1, :], out.past_key_values
            finally:
                if activation is not None:
                    activation.restore()

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # drop a token when the mass before it already reaches top_p (the first always stays)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


__all__ = ["Generation", "PromptLike", "RoutedModel", "StreamChunk"]
