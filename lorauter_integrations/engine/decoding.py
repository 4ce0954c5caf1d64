"""Continuous batching: one decode loop per model, requests join and leave at step boundaries.

`DecodeLoop` owns the model while requests decode. Callers on any thread or asyncio task
`submit` a `DecodeRequest` and get a `RowHandle` that reports the row's text as it grows.
At every step boundary the loop:

1. admits waiting requests, first come first admitted, up to ``max_rows`` running rows and a
   prefill budget of ``prefill_chunk_tokens`` prompt tokens per step (so newcomers' prefill
   stalls the running rows for at most about one such chunk);
2. prefills them in groups of similar length (left padding stays under
   ``prefill_padding_slack``) and right-aligns their KV caches into the running batch;
3. samples one token for every row (each with its own temperature, top_p, seed), hands each
   caller its tokens, drops finished and cancelled rows;
4. runs one forward pass for the remaining rows, each with its own route: a batch whose rows
   share one composition runs merged weights (base-model speed); mixed routes add each row's
   delta in one batched matmul (`compose.Composer.activate_rows`).

A request that fails in prefill fails alone; a failure of the shared forward pass fails the rows
of that pass and the loop serves the next ones. The queue is bounded: a request that finds it
full waits up to ``queue_timeout_s`` for a place, then gets `EngineBusyError`.

Models whose caches are not plain per-layer key/value tensors (sliding-window or other cache
kinds) cannot take rows mid-flight: the loop then admits newcomers only between batches.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Sequence

import torch

from ..compose import Activation, Composer, Composition
from ..errors import EngineBusyError, EngineError
from ..route import Route
from .params import GenerationParams


@dataclass
class DecodeRequest:
    """One prompt ready to decode: its token ids, route, composition and options."""

    ids: list[int]
    route: Route
    composition: Composition | None
    params: GenerationParams


@dataclass
class Row:
    """Decoding state of one request: tokens so far, visible text, stop detection."""

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


@dataclass(frozen=True)
class RowState:
    """What a caller sees of its row at one moment."""

    version: int
    text: str  # settled text (safe to stream)
    finish_reason: str | None
    completion_tokens: int
    error: BaseException | None


class RowHandle:
    """A submitted request: wait (sync or async) for its row to change, or cancel it."""

    def __init__(self, request: DecodeRequest, row: Row, loop: "DecodeLoop") -> None:
        self.request = request
        self.row = row
        self._loop = loop
        self._cond = threading.Condition()
        self._version = 0
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self.cancelled = False
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.generator: torch.Generator | None = None  # made at the first sampled token (seeded rows)
        self.ids = request.ids  # what a prefill feeds: the prompt, or prompt + tokens when replayed
        self.suspect = False  # it shared a forward pass that failed: replayed alone

    # -- the loop's side
    def _push(self, token: int) -> None:
        """Add a decoded token (the caller is told at the next `_publish`)."""
        with self._cond:
            self.row.push(token)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()

    def _publish(self, error: BaseException | None = None) -> None:
        """Tell the caller that its row changed (or failed)."""
        with self._cond:
            if error is not None and self._error is None and self.row.finish_reason is None:
                self._error = error
            self._version += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass

    @property
    def done(self) -> bool:
        return self._error is not None or self.row.finish_reason is not None

    def _state(self) -> RowState:
        return RowState(self._version, self.row.settled_text(), self.row.finish_reason, len(self.row.tokens),
                        self._error)

    # -- the caller's side
    def cancel(self) -> None:
        """Free the row at the next step boundary (or drop it from the queue)."""
        self.cancelled = True
        self._loop._wake()

    def wait(self, after_version: int, timeout_s: float) -> RowState:
        """Block until the row changed since ``after_version`` (or ended); bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._version == after_version and not self.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EngineError(f"no progress on this request for {timeout_s:.0f} s; the engine is stuck")
                self._cond.wait(min(remaining, 1.0))
                self._loop._check_alive()
            return self._state()

    def states(self, timeout_s: float) -> Iterator[RowState]:
        """Each change of the row until it ends (an error is raised)."""
        version = 0
        while True:
            state = self.wait(version, timeout_s)
            if state.error is not None:
                raise state.error
            version = state.version
            yield state
            if state.finish_reason is not None:
                return

    async def astates(self, timeout_s: float) -> AsyncIterator[RowState]:
        """`states` for asyncio."""
        version = 0
        while True:
            state = await self.wait_async(version, timeout_s)
            if state.error is not None:
                raise state.error
            version = state.version
            yield state
            if state.finish_reason is not None:
                return

    async def wait_async(self, after_version: int, timeout_s: float) -> RowState:
        """`wait` for asyncio: no thread is held while waiting."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._version != after_version or self.done:
                    return self._state()
                fut = loop.create_future()
                self._waiters.append((loop, fut))
            try:
                await asyncio.wait_for(fut, timeout_s)
            except asyncio.TimeoutError:
                self._loop._check_alive()
                raise EngineError(f"no progress on this request for {timeout_s:.0f} s; the engine is stuck") from None


def _cache_of(output) -> Any:
    """The KV cache a forward pass returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class DecodeLoop:
    """The iteration-level scheduler of one model (see the module docstring).

    Args:
        model, tokenizer, composer: The model, its tokenizer and the `Composer` bound to it.
        eos_ids: Token ids that end a row.
        merge: Fold a batch's single composition into the weights while decoding.
        max_rows: Rows decoded together at most.
        max_queue: Requests waiting for a row at most; beyond, `submit` waits.
        queue_timeout_s: How long `submit` waits for a place before `EngineBusyError`.
        prefill_padding_slack: Left padding allowed when prefilling rows of different lengths
            together, as a fraction of their tokens.
        prefill_chunk_tokens: Prompt tokens prefilled per step at most (at least one request).
    """

    def __init__(self, model, tokenizer, composer: Composer, *, eos_ids: frozenset, merge: bool = True,
                 max_rows: int = 16, max_queue: int = 256, queue_timeout_s: float = 30.0,
                 prefill_padding_slack: float = 0.15, prefill_chunk_tokens: int = 512) -> None:
        if max_rows < 1 or max_queue < 1:
            raise ValueError("max_rows and max_queue must be at least 1")
        self.model, self.tokenizer, self.composer = model, tokenizer, composer
        self.eos_ids, self.merge = eos_ids, merge
        self.max_rows, self.max_queue, self.queue_timeout_s = max_rows, max_queue, queue_timeout_s
        self.prefill_padding_slack, self.prefill_chunk_tokens = prefill_padding_slack, prefill_chunk_tokens
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # transformers 5 names the KV cache argument ``cache`` (``past_key_values`` is deprecated).
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._cond = threading.Condition()
        self._waiting: deque[RowHandle] = deque()
        self._tickets = itertools.count()
        self._serving = 0  # the ticket whose holder may enqueue next (first come, first queued)
        self._abandoned: set[int] = set()  # tickets whose holders gave up waiting
        self._thread: threading.Thread | None = None
        self._fatal: BaseException | None = None
        self._busy = False  # the loop is inside an iteration (touching the model)
        self._exclusive_waiters = 0
        self._exclusive_owner: object | None = None
        self._continuous = True  # False once a model shows a cache kind rows cannot join
        # the running batch
        self._rows: list[RowHandle] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, width] 1 = real token
        self._positions: torch.Tensor | None = None  # [rows] position id of the next token
        self._logits: torch.Tensor | None = None  # [rows, vocab] to sample the next token from
        self._activation: Activation | None = None
        self._active_key: tuple | None = None
        self.peak_rows = 0  # the most rows one step decoded (reset it to measure a stretch of work)

    # ------------------------------------------------------------------ public
    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: DecodeRequest, timeout_s: float | None = None) -> RowHandle:
        """Queue ``request``; wait up to ``timeout_s`` (default ``queue_timeout_s``) for a place."""
        timeout_s = self.queue_timeout_s if timeout_s is None else timeout_s
        row = Row(self.tokenizer, request.params.stop, self.eos_ids, request.params.max_new_tokens)
        handle = RowHandle(request, row, self)
        with self._cond:
            self._check_alive()
            ticket = next(self._tickets)
            deadline = time.monotonic() + timeout_s
            try:
                while ticket != self._serving or len(self._waiting) >= self.max_queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise EngineBusyError(
                            f"the engine is busy: {len(self._rows)} rows running and {len(self._waiting)} waiting "
                            f"(max_queue={self.max_queue}); waited {timeout_s:.1f} s. Retry later, or raise "
                            "max_queue / queue_timeout_s / max_batch_size"
                        )
                    self._cond.wait(remaining)
            except BaseException:
                if ticket == self._serving:
                    self._serving += 1
                else:  # give the turn up: later tickets must not wait for this one
                    self._abandoned.add(ticket)
                self._advance()
                self._cond.notify_all()
                raise
            self._serving += 1
            self._advance()
            self._waiting.append(handle)
            self._ensure_thread()
            self._cond.notify_all()
        return handle

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until no row runs or waits and the model carries no composition of the loop's."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._waiting or self._rows or self._busy or self._activation is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    def exclusive(self, owner: object, timeout_s: float | None = None) -> None:
        """Take the model for code that runs it itself: the loop pauses at its next step boundary
        (running rows keep their state) until `release_exclusive`."""
        timeout_s = 600.0 if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._exclusive_waiters += 1
            self._cond.notify_all()
            try:
                while self._busy or self._exclusive_owner is not None or self._activation is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise EngineBusyError(f"the model stayed busy for {timeout_s:.0f} s; try again later")
                    if self._activation is not None and (self._thread is None or not self._thread.is_alive()):
                        self._restore()  # no loop thread to do it
                        continue
                    self._cond.wait(min(remaining, 1.0))
                self._exclusive_owner = owner
            finally:
                self._exclusive_waiters -= 1

    def release_exclusive(self, owner: object) -> None:
        with self._cond:
            if self._exclusive_owner is owner:
                self._exclusive_owner = None
                self._cond.notify_all()

    # ------------------------------------------------------------------ internals: queue
    def _advance(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _check_alive(self) -> None:
        if self._fatal is not None:
            raise EngineError(f"the decode loop stopped: {self._fatal!r}") from self._fatal

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="lorauter-decode-loop", daemon=True)
            self._thread.start()

    def _admit(self) -> list[RowHandle]:
        """Newcomers for this step: FIFO, within the free rows and the prefill budget."""
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft()._publish(error=EngineError("cancelled"))
        if self._rows and (not self._continuous or any(h.suspect for h in self._rows)):
            return []
        if self._waiting and self._waiting[0].suspect:
            return [] if self._rows else [self._waiting.popleft()]  # a replayed row decodes alone
        free = self.max_rows - len(self._rows)
        admitted: list[RowHandle] = []
        budget = self.prefill_chunk_tokens
        while self._waiting and len(admitted) < free:
            head = self._waiting[0]
            if head.cancelled:
                self._waiting.popleft()._publish(error=EngineError("cancelled"))
                continue
            cost = len(head.ids)
            if admitted and (cost > budget or head.suspect):
                break
            admitted.append(self._waiting.popleft())
            budget -= cost
        return admitted

    # ------------------------------------------------------------------ internals: the loop
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._exclusive_waiters or self._exclusive_owner is not None:
                            if self._activation is not None:
                                self._restore()
                                self._cond.notify_all()
                            self._cond.wait()
                            continue
                        if self._waiting or self._rows:
                            break
                        self._cond.wait()
                    self._busy = True
                    newcomers = self._admit()
                    self._cond.notify_all()  # places freed in the queue
                try:
                    self._iterate(newcomers)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        except BaseException as e:  # a bug of ours: fail everyone loudly instead of hanging them
            self._fatal = e
            with self._cond:
                for h in [*self._rows, *self._waiting]:
                    h._publish(error=EngineError(f"the decode loop stopped: {e!r}"))
                self._rows, self._waiting = [], deque()
                self._cond.notify_all()

    def _iterate(self, newcomers: list[RowHandle]) -> None:
        if newcomers:
            self._prefill(newcomers)
        if not self._rows:
            return
        try:
            with torch.inference_mode():
                tokens = self._sample()
        except Exception as e:
            self._recover(self._take_batch(), e)
            return
        rows = self._rows
        for handle, token in zip(rows, tokens.tolist()):
            handle._push(token)
        keep = [i for i, h in enumerate(rows) if not (h.done or h.cancelled)]
        self.peak_rows = max(self.peak_rows, len(rows))
        if len(keep) < len(rows):
            self._select(keep)
            tokens = tokens[keep]
        if not self._rows:
            self._reset_batch()  # the model is restored before the last callers hear they are done
        for handle in rows:
            handle._publish()
        if not self._rows:
            return
        try:
            self._forward_step(tokens)
        except Exception as e:
            self._recover(self._take_batch(), e)

    def _take_batch(self) -> list[RowHandle]:
        rows = self._rows
        self._reset_batch()
        return rows

    def _recover(self, handles: list[RowHandle], error: Exception) -> None:
        """A forward pass failed. Alone, its row fails; shared, which row caused it is unknown, so
        each row is replayed alone (its prompt and tokens so far prefilled again): a fault of one
        request then fails that request only, and a passing fault fails none."""
        if len(handles) == 1:
            handles[0]._publish(error=error)
            return
        replay = []
        for h in handles:
            if h.done or h.cancelled:
                h._publish()
                continue
            h.suspect, h.ids = True, [*h.request.ids, *h.row.tokens]
            replay.append(h)
        with self._cond:
            self._waiting.extendleft(reversed(replay))
            self._cond.notify_all()

    def _reset_batch(self) -> None:
        self._rows = []
        self._cache = self._mask = self._positions = self._logits = None
        self._restore()

    def _restore(self) -> None:
        if self._activation is not None:
            activation, self._activation, self._active_key = self._activation, None, None
            activation.restore()

    def _activate_for(self, compositions: Sequence[Composition | None]) -> None:
        """Apply the rows' compositions, unless exactly these are applied already."""
        key = tuple(id(c) if c is not None else None for c in compositions)
        if key == self._active_key and self._activation is not None:
            return
        self._restore()
        first = compositions[0]
        if all(c is first for c in compositions):
            self._activation = self.composer.activate(first, merge=self.merge)
        else:
            self._activation = self.composer.activate_rows(list(compositions))
        self._active_key = key

    # ------------------------------------------------------------------ internals: tensors
    def _prefill(self, newcomers: list[RowHandle]) -> None:
        """Prefill newcomers by length group and join them to the running batch."""
        groups = self._prefill_groups([len(h.ids) for h in newcomers]) \
            if self._continuous and len(newcomers) > 1 \
            else [list(range(len(newcomers)))]
        for n, group in enumerate(groups):
            handles = [newcomers[i] for i in group]
            try:
                logits, cache, mask = self._forward_prefill(handles)
                layers = getattr(cache, "layers", None)
                if self._continuous and layers and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
                    self._join(handles, logits, [(layer.keys, layer.values) for layer in layers], mask)
                    continue
                # A cache kind rows cannot join (e.g. sliding windows): decode this group as one
                # batch; the other newcomers go back to the head of the queue.
                self._continuous = False
                self._cache, self._mask, self._logits = cache, mask, logits
                self._positions, self._rows = mask.sum(-1), handles
                later = [newcomers[i] for g in groups[n + 1:] for i in g]
                with self._cond:
                    self._waiting.extendleft(reversed(later))
                return
            except Exception as e:  # e.g. out of memory: the request that caused it fails, the others go on
                self._recover(handles, e)

    def _prefill_groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices prefilled together: similar lengths, so that left padding wastes little.

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

    def _forward_prefill(self, handles: Sequence[RowHandle]):
        width = max(len(h.ids) for h in handles)
        input_ids = torch.full((len(handles), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(handles), width), dtype=torch.long)
        for i, h in enumerate(handles):
            input_ids[i, width - len(h.ids):] = torch.tensor(h.ids)
            mask[i, width - len(h.ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        self._activate_for([h.request.composition for h in handles])
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], _cache_of(out), mask

    def _join(self, handles, logits, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Right-align the newcomers' caches with the running batch's and stack them."""
        from transformers import DynamicCache

        positions = mask.sum(-1)
        if not self._rows:
            self._rows, self._logits, self._mask, self._positions = list(handles), logits, mask, positions
            self._cache = DynamicCache(ddp_cache_data=kv)
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # zeros on the left of ``dim``
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        old = [(layer.keys, layer.values) for layer in self._cache.layers]
        joined = [(torch.cat([pad(k0, 2), pad(k1, 2)]), torch.cat([pad(v0, 2), pad(v1, 2)]))
                  for (k0, v0), (k1, v1) in zip(old, kv)]
        self._cache = DynamicCache(ddp_cache_data=joined)
        self._mask = torch.cat([pad(self._mask, 1), pad(mask, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._logits = torch.cat([self._logits, logits])
        self._rows = [*self._rows, *handles]

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep``; drop the columns that are padding for every row left."""
        if not keep:
            self._rows = []
            return
        from transformers import DynamicCache

        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        real = mask.any(0).nonzero()
        start = int(real[0]) if len(real) else 0
        self._mask = mask[:, start:]
        self._positions = self._positions.index_select(0, index)
        self._logits = self._logits.index_select(0, index)
        if self._continuous:
            self._cache = DynamicCache(ddp_cache_data=[
                (layer.keys.index_select(0, index)[:, :, start:], layer.values.index_select(0, index)[:, :, start:])
                for layer in self._cache.layers
            ])
        else:
            self._cache.batch_select_indices(index)
            self._mask = mask
        self._rows = [self._rows[i] for i in keep]

    def _forward_step(self, tokens: torch.Tensor) -> None:
        self._activate_for([h.request.composition for h in self._rows])
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=-1)
        with torch.inference_mode():
            out = self.model(input_ids=tokens[:, None], attention_mask=self._mask,
                             position_ids=self._positions[:, None], use_cache=True, **{self._cache_arg: self._cache})
        self._positions = self._positions + 1
        self._logits, self._cache = out.logits[:, -1, :], _cache_of(out)

    def _sample(self) -> torch.Tensor:
        tokens = self._logits.argmax(dim=-1)
        for i, h in enumerate(self._rows):
            p = h.request.params
            if p.temperature == 0:
                continue
            if h.generator is None and p.seed is not None:
                h.generator = torch.Generator(device=self.device).manual_seed(p.seed)
            probs = torch.softmax(self._logits[i].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # drop a token when the mass before it already reaches top_p (the first always stays)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
            tokens[i] = torch.multinomial(probs, 1, generator=h.generator)[0]
        return tokens


__all__ = ["DecodeLoop", "DecodeRequest", "Row", "RowHandle", "RowState"]
