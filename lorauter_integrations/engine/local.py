"""`RoutedModel`: a local causal LM whose every request runs with the adapters its route picks.

>>> engine = RoutedModel.demo()
>>> [g] = engine.generate(["Review: the plot was dull and the acting wooden. Positive or negative?"],
...                       max_new_tokens=8)
>>> g.text, g.route.adapters, g.finish_reason
('negative', ['sst2'], 'stop')

A request is routed on its text (a chat: its last user message), its route becomes a cached
composition (`compose.Composer`), and it joins the model's decode loop (`decoding.DecodeLoop`):
callers on any thread or asyncio task share one running batch, each row with its own adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapters.pool import AdapterPool
from ..compose import Activation, Composer, CompositionConfig
from ..errors import EngineBusyError
from ..route import Route
from ..routing import RouterSet
from .base import EngineBase
from .decoding import DecodeLoop, DecodeRequest, RowHandle
from .models import DEMO_MODEL, LoadedModel, load_base_model
from .prompts import PromptRenderer
from .protocol import Generation, PromptLike, StreamChunk


class RoutedModel(EngineBase):
    """Base model + adapter pool + router: generate and stream with per-request adapters.

    Args:
        model: ``"demo"``, a Hugging Face id or local path of a causal LM, or a `LoadedModel`.
        pool: The adapters (an empty pool when omitted: every route must then be the base).
        router: Any object with ``route(text, exclude_tasks=...) -> Route`` (see
            ``lorauter_integrations.routing``). Built lazily from ``store`` when omitted.
        store: A `TaskStore` the lazily built routers query.
        strategy: Default routing strategy when the router is built here.
        router_config: Router settings (``k``, ``tau``, ``floor``, ...); unknown keys are refused.
        composition: Composition strategy name or a `CompositionConfig` (default: exact mixture).
        device: ``"cpu"``, ``"cuda"``, ... (None: CUDA when available).
        dtype: A torch dtype or its name (None: bfloat16 on CUDA where supported, else float32).
        merge: Fold a batch's single composition into the weights while decoding (base speed);
            off: apply it by forward hooks (exactly the unmerged mixture).
        max_resident_compositions: Composition cache bound.
        max_batch_size: Rows decoded together at most (the running batch of the decode loop).
        max_queue: Requests waiting for a row at most; beyond, callers wait ``queue_timeout_s``
            and then get `EngineBusyError`.
        queue_timeout_s: See ``max_queue``.
        chat_template: Wrap a plain-text prompt as one user message when the tokenizer has a
            chat template (instruct models answer far better); off: feed the text verbatim.
        prefill_padding_slack: Prompts are prefilled in groups of similar length while padding
            stays under this fraction of their tokens; raise it on GPUs.
        prefill_chunk_tokens: Prompt tokens prefilled per decode step at most, which bounds how
            long newcomers stall the running rows.
        prepack: Run the linear layers on oneDNN-prepacked weights while decoding (CPU, see
            `compose.PackedLinears`). None: automatic (CPU models in fp32/bf16 up to 2 GiB of
            linear weights; it keeps a second copy of them).
        trust_remote_code: Passed to ``transformers`` when loading ``model``.
    """

    def __init__(
        self,
        model: str | LoadedModel = DEMO_MODEL,
        *,
        pool: AdapterPool | None = None,
        router: Any = None,
        store: Any = None,
        strategy: str = "lorauter",
        router_config: dict[str, Any] | None = None,
        composition: str | CompositionConfig = "mixture",
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        merge: bool = True,
        max_resident_compositions: int = 32,
        max_batch_size: int = 16,
        max_queue: int = 256,
        queue_timeout_s: float = 30.0,
        chat_template: bool = True,
        prefill_padding_slack: float = 0.15,
        prefill_chunk_tokens: int = 512,
        prepack: bool | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        loaded = model if isinstance(model, LoadedModel) else load_base_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.loaded = loaded
        self.model = loaded.model
        self._tokenizer = loaded.tokenizer
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.device = str(next(self.model.parameters()).device)
        self.model_name: str = loaded.base_model_id
        self.pool = (pool if pool is not None else AdapterPool()).bind(self.model, loaded.base_model_id)
        config = composition if isinstance(composition, CompositionConfig) else CompositionConfig(strategy=composition)
        self.composer = Composer(self.model, self.pool, config, max_cached=max_resident_compositions, prepack=prepack)
        self.prompts = PromptRenderer(self._tokenizer, chat_template=chat_template)
        self.routers = RouterSet(store, self.pool, strategy=strategy, router=router, config=router_config)
        self.store = store
        cfg = self.model.config
        self.context_window: int = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        )
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self._tokenizer.eos_token_id is not None:
            eos.append(self._tokenizer.eos_token_id)
        self.loop = DecodeLoop(
            self.model, self._tokenizer, self.composer, eos_ids=frozenset(eos), merge=merge,
            max_rows=max_batch_size, max_queue=max_queue, queue_timeout_s=queue_timeout_s,
            prefill_padding_slack=prefill_padding_slack, prefill_chunk_tokens=prefill_chunk_tokens,
        )
        self.progress_timeout_s = 600.0  # a request with no new token for this long fails (a stuck engine)

    def __repr__(self) -> str:
        return (f"RoutedModel(model={self.model_name!r}, adapters={len(self.pool)}, strategy={self.strategy!r}, "
                f"composition={self.composer.config.strategy!r}, merge={self.loop.merge}, device={self.device!r})")

    # Copies (LangChain and LlamaIndex copy their models) share the engine: it holds a model, a
    # decode loop and its thread, which are never duplicated.
    def __copy__(self) -> "RoutedModel":
        return self

    def __deepcopy__(self, memo: dict) -> "RoutedModel":
        return self

    def __reduce__(self):
        raise TypeError("a RoutedModel holds a loaded model and a decode thread and is not picklable; "
                        "share the engine object instead")

    # ------------------------------------------------------------------ construction
    @classmethod
    def demo(cls, *, store_dir: str | Path | None = None, **kwargs: Any) -> "RoutedModel":
        """The ready demo engine: SmolLM2-135M-Instruct, the bundled Flan adapter pool and a task
        store indexed (once, idempotently) from the bundled validation sets in the cache dir."""
        from ..demo import demo_pool, demo_store

        kwargs.setdefault("model", DEMO_MODEL)
        return cls(pool=demo_pool(), store=demo_store(store_dir), **kwargs)

    # ------------------------------------------------------------------ the Engine protocol
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def merge(self) -> bool:
        """Fold a batch's single composition into the weights while decoding."""
        return self.loop.merge

    @merge.setter
    def merge(self, value: bool) -> None:
        self.loop.merge = bool(value)

    @property
    def eos_token_ids(self) -> frozenset:
        """Token ids that end a request."""
        return self.loop.eos_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids) -> None:
        self.loop.eos_ids = frozenset(ids)

    @property
    def max_batch_size(self) -> int:
        return self.loop.max_rows

    def generate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                 **options: Any) -> list[Generation]:
        """Generate for every prompt (a string or a chat), each with its own route.

        ``routes`` (or one of its items) None: that prompt is routed on its text. Options:
        ``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``, ``stop``, ``seed``, and the
        usual ``transformers`` ``do_sample`` / ``generation_config``. The prompts join the
        running batch with whatever other callers are decoding.
        """
        requests = self._requests(prompts, routes, options)
        handles: list[RowHandle | None] = [None] * len(requests)
        # Shortest first, at most a batch's worth in flight: similar lengths prefill together
        # and a long list never fills the shared queue.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
        results: list[Generation | None] = [None] * len(requests)
        window = self.loop.max_rows
        try:
            for n in range(min(window, len(order))):
                handles[order[n]] = self.loop.submit(requests[order[n]])
            for n, i in enumerate(order):
                results[i] = self._wait(handles[i])
                if n + window < len(order):
                    j = order[n + window]
                    handles[j] = self.loop.submit(requests[j])
        finally:
            for h in handles:
                if h is not None and not h.done:
                    h.cancel()
        return results  # type: ignore[return-value]

    def stream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> Iterator[StreamChunk]:
        """Yield the text of ``prompt`` as it is decoded; the route is decided before the first
        chunk. Chunks join to exactly what `generate` returns; the last one carries usage.
        Stopping the iteration early frees the row at the next step."""
        [request] = self._requests([prompt], [route], options)
        handle = self.loop.submit(request)
        return self._stream(handle)

    async def agenerate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                        **options: Any) -> list[Generation]:
        """`generate` for asyncio: routing runs in a worker thread, waiting holds no thread.
        Cancelling the awaiting task frees its rows at the next step."""
        requests = await asyncio.to_thread(self._requests, prompts, routes, options)
        handles: list[RowHandle] = []
        try:
            for request in requests:
                handles.append(await self._submit_async(request))
            return [await self._wait_async(h) for h in handles]
        finally:
            for h in handles:
                if not h.done:
                    h.cancel()

    async def astream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> AsyncIterator[StreamChunk]:
        """`stream` as an async iterator; closing it or cancelling its task frees the row."""
        [request] = await asyncio.to_thread(self._requests, [prompt], [route], options)
        handle = await self._submit_async(request)
        try:
            sent = ""
            async for state in handle.astates(self.progress_timeout_s):
                chunk, sent = self._chunk(handle, state, sent)
                if chunk is not None:
                    yield chunk
        finally:
            if not handle.done:
                handle.cancel()

    # ------------------------------------------------------------------ code that runs the model itself
    def activate(self, route: Route | None, *, merge: bool | None = None) -> Activation:
        """Apply ``route``'s composition to ``self.model`` until ``restore()`` (or the ``with`` ends).

        For code that runs the model itself, e.g. a stock ``transformers`` pipeline. The decode
        loop pauses meanwhile (its rows resume afterwards), so always restore, exactly once
        (from any thread)::

            with engine.activate(engine.route(text)):
                pipe(text)
        """
        owner = object()
        self.loop.exclusive(owner)
        try:
            composition = None if route is None else self.composer.composition(route)
            activation = self.composer.activate(composition, merge=self.loop.merge if merge is None else merge)
        except BaseException:
            self.loop.release_exclusive(owner)
            raise
        activation.on_restore(lambda: self.loop.release_exclusive(owner))
        return activation

    # ------------------------------------------------------------------ internals
    def _requests(self, prompts, routes, options: dict[str, Any]) -> list[DecodeRequest]:
        """Validate, route and tokenize every prompt (errors before any decoding starts)."""
        params, rendered, routes, budget = self._prepare(prompts, routes, options)
        requests = []
        for (text, templated), route in zip(rendered, routes):
            ids = self._tokenizer(text, add_special_tokens=not templated)["input_ids"]
            if len(ids) > budget:
                ids = ids[-budget:]  # keep the end: the question and the generation prompt are there
                route = route.model_copy(update={"truncated": True})
            requests.append(DecodeRequest(ids=ids, route=route, composition=self.composer.composition(route),
                                          params=params))
        return requests

    async def _submit_async(self, request: DecodeRequest) -> RowHandle:
        try:
            return self.loop.submit(request, timeout_s=0)
        except EngineBusyError:  # the queue is full: wait for a place in a worker thread
            return await asyncio.to_thread(self.loop.submit, request)

    def _wait(self, handle: RowHandle) -> Generation:
        for _ in handle.states(self.progress_timeout_s):
            pass
        return self._generation(handle)

    async def _wait_async(self, handle: RowHandle) -> Generation:
        async for _ in handle.astates(self.progress_timeout_s):
            pass
        return self._generation(handle)

    @staticmethod
    def _generation(handle: RowHandle) -> Generation:
        return Generation(text=handle.row.text, route=handle.request.route, prompt_tokens=len(handle.request.ids),
                          completion_tokens=len(handle.row.tokens), finish_reason=handle.row.finish_reason)

    def _stream(self, handle: RowHandle) -> Iterator[StreamChunk]:
        try:
            sent = ""
            for state in handle.states(self.progress_timeout_s):
                chunk, sent = self._chunk(handle, state, sent)
                if chunk is not None:
                    yield chunk
        finally:
            if not handle.done:
                handle.cancel()

    @staticmethod
    def _chunk(handle: RowHandle, state, sent: str) -> tuple[StreamChunk | None, str]:
        """The next chunk of a stream, and the text sent so far once it is."""
        # Decoding more tokens can, rarely, re-spell earlier text; only ever send a strict
        # continuation of what was sent.
        piece = state.text[len(sent):] if state.text.startswith(sent) else ""
        route = handle.request.route
        if state.finish_reason is not None:
            return StreamChunk(text=piece, route=route, finish_reason=state.finish_reason,
                               prompt_tokens=len(handle.request.ids),
                               completion_tokens=state.completion_tokens), state.text
        if piece:
            return StreamChunk(text=piece, route=route), state.text
        return None, sent


__all__ = ["Generation", "PromptLike", "RoutedModel", "StreamChunk"]
