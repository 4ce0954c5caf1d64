"""`Composer`: a `Route` -> its cached `Composition`, applied to the model as an `Activation`.

A composition can be applied by forward hooks (nothing of ours stays on the model when inactive),
folded into the base weights for single-stream speed (``merge``), or gathered per row for mixed
batches. On CPU, an activation can run every ``nn.Linear`` on oneDNN-prepacked weights
(`compose.packed`); the deltas are then added inside those layers' forwards instead of by hooks.
`Activation.restore` removes both.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Mapping, Sequence

import torch

from ..adapters.pool import AdapterPool
from ..errors import CompositionError
from ..route import Route
from .config import Composition, CompositionConfig
from .factors import compose_factors
from .hooks import rows_hook, single_hook
from .packed import PackedLinears, packed_linear, packed_rows, packed_single


class Activation:
    """A composition applied to the model; ``restore()`` (or leaving the ``with``) undoes it exactly."""

    def __init__(self, composer: "Composer", handles=(), swapped: Sequence[tuple[str, torch.Tensor]] = (),
                 overridden: Sequence[torch.nn.Module] = ()):
        self._composer = composer
        self._handles = list(handles)
        self._swapped = list(swapped)  # (module name, its pristine weight tensor)
        self._overridden = list(overridden)  # modules whose instance `forward` we set (packed kernels)
        self._on_restore: list = []
        self.restored = False

    def on_restore(self, callback) -> None:
        """Call ``callback()`` once the model is restored (e.g. to release a lock)."""
        self._on_restore.append(callback)

    def restore(self) -> None:
        """Remove hooks and forward overrides; put the untouched base weight tensors back in
        merged modules."""
        if self.restored:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._overridden:
            module.__dict__.pop("forward", None)
        self._overridden.clear()
        for name, pristine in self._swapped:
            self._composer._modules[name].weight.data = pristine
        self._swapped.clear()
        self.restored = True
        self._composer._release(self)
        for callback in self._on_restore:
            callback()

    def __enter__(self) -> "Activation":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class Composer:
    """Builds compositions for routes (cached, bounded) and applies them to one model.

    Args:
        model: The base ``transformers`` model (plain, not a PeftModel).
        pool: Where adapter tensors come from (bound to ``model``).
        config: Default composition strategy and its options.
        max_cached: Compositions kept; the least recently used is dropped beyond it. A
            composition is only referenced by the model while it is active, so dropping it
            frees its tensors.
        prepack: Run the model's linear layers on oneDNN-prepacked weights while a composition
            is active (`PackedLinears`). None: on when `PackedLinears.supports` the model (CPU,
            fp32/bf16, linear weights up to 2 GiB: the packed copy doubles them).
    """

    def __init__(self, model, pool: AdapterPool, config: CompositionConfig | None = None, max_cached: int = 32,
                 prepack: bool | None = None):
        if max_cached < 1:
            raise CompositionError("max_cached must be at least 1")
        self.model = model
        self.pool = pool
        self.config = config or CompositionConfig()
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple, Composition] = OrderedDict()
        self._modules = dict(model.named_modules())
        self._merge_buffers: dict[str, torch.Tensor] = {}  # per merged module, reused: W + B A
        self._active: Activation | None = None
        self._lock = threading.RLock()
        if prepack is None:
            prepack = PackedLinears.supports(model)
        elif prepack and not PackedLinears.supports(model, max_bytes=1 << 62):
            raise CompositionError(
                "prepack=True needs a CPU model in float32 or bfloat16, oneDNN in this torch build, and no "
                "module whose forward is already replaced; use prepack=None (automatic) or False"
            )
        self.packed: PackedLinears | None = PackedLinears.shared(model) if prepack else None

    # ------------------------------------------------------------------ cache
    def composition(self, route: Route, config: CompositionConfig | None = None) -> Composition | None:
        """The composition of ``route`` (None for the base model), from the cache when possible."""
        if route.is_base:
            return None
        config = config or self.config
        # Adapter revisions are part of the key: re-registering or removing an adapter can never
        # serve a stale composition. The config is too: each strategy has its own entry.
        pairs = sorted(zip(route.adapters, route.weights))  # one order: equal routes, equal tensors
        key = (config, route.key(), tuple(self.pool.record(a).revision for a, _ in pairs))
        with self._lock:
            comp = self._cache.get(key)
            if comp is not None:
                self._cache.move_to_end(key)
                return comp
        adapters = [self.pool.weights(a) for a, _ in pairs]
        comp = Composition(key=key, strategy=config.strategy,
                           modules=compose_factors(adapters, [w for _, w in pairs], config))
        with self._lock:
            self._cache[key] = comp
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return comp

    @property
    def cached(self) -> list[tuple]:
        """Keys of the cached compositions, least recently used first."""
        return list(self._cache)

    def clear(self) -> None:
        """Drop every cached composition and the saved base weights."""
        with self._lock:
            self._cache.clear()
            if self._active is None:
                self._merge_buffers.clear()

    # ------------------------------------------------------------------ activation
    @property
    def active(self) -> bool:
        return self._active is not None

    def activate(self, composition: Composition | None, *, merge: bool = False) -> Activation:
        """Apply one composition to every row: by hooks, or folded into the weights (``merge``).

        Merging makes the forward pass exactly the base model's (no extra op): ``W + B A`` is
        written into a buffer kept per module and swapped in as the layer's weight; the base
        weight tensor itself is never written, and ``restore()`` swaps it back, so the base is
        bit-exact by construction (unmerge arithmetic is not) and restoring costs nothing.
        """
        with self._lock:
            self._acquire()
            modules = composition.modules if composition is not None else {}
            if self.packed is not None:
                act = self._activate_packed(modules, merge)
            elif not modules:
                act = Activation(self)
            elif merge:
                act = Activation(self, swapped=self._merge(modules))
            else:
                handles = [
                    self._modules[name].register_forward_hook(functools.partial(single_hook, A, B))
                    for name, (A, B) in modules.items()
                ]
                act = Activation(self, handles=handles)
            self._active = act
            return act

    def activate_rows(self, compositions: Sequence[Composition | None]) -> Activation:
        """Apply a composition per batch row (None = base model) for one batched forward pass.

        Each module gets the rows' factors gathered once, zero-padded to the largest rank, and
        adds ``bmm(bmm(x, A_rows^T), B_rows^T)``: rows never see each other's adapters, and a
        zero-padded rank adds exactly nothing.
        """
        with self._lock:
            self._acquire()
            try:
                handles = []
                distinct: list[Composition] = []
                for comp in compositions:
                    if comp is not None and all(comp is not d for d in distinct):
                        distinct.append(comp)
                names: dict[str, None] = {}
                for comp in distinct:
                    names.update(dict.fromkeys(comp.modules))
                rows = {name: self._gather(name, compositions) for name in names}
                if self.packed is not None:
                    act = self._override(rows, packed_rows)
                else:
                    for name, (At, Bt) in rows.items():
                        handles.append(self._modules[name].register_forward_hook(functools.partial(rows_hook, At, Bt)))
                    act = Activation(self, handles=handles)
            except BaseException:
                self._active = None
                raise
            self._active = act
            return act

    # ------------------------------------------------------------------ internals
    def _acquire(self) -> None:
        if self._active is not None:
            raise CompositionError(
                "another composition is active on this model: restore() it first (RoutedModel serialises this)"
            )

    def _release(self, act: Activation) -> None:
        with self._lock:
            if self._active is act:
                self._active = None

    def _weight(self, name: str) -> torch.Tensor:
        return self._modules[name].weight.data

    def _activate_packed(self, modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]], merge: bool) -> Activation:
        """Every linear layer on packed weights; merged modules on their packed merged weights,
        or the deltas added in the layers' forwards."""
        if not (merge and modules):
            return self._override(modules, packed_single)
        swapped = self._merge(modules)
        try:
            merged = {name: self.packed.pack(self._weight(name)) for name, _ in swapped if name in self.packed.modules}
        except BaseException:
            for name, pristine in swapped:
                self._modules[name].weight.data = pristine
            raise
        act = self._override({}, packed_single, merged)
        act._swapped = swapped
        return act

    def _override(self, deltas: Mapping[str, tuple[torch.Tensor, torch.Tensor]], with_delta,
                  packed: Mapping[str, torch.Tensor] | None = None) -> Activation:
        """Set the instance ``forward`` of every packed linear layer: the packed base weight (or
        ``packed[name]``), plus ``with_delta``'s low-rank term where ``deltas`` has factors.
        Modules that are not packed (e.g. GPT-2's Conv1D) get the delta by a forward hook."""
        done: list[torch.nn.Module] = []
        handles = []
        hook = rows_hook if with_delta is packed_rows else single_hook
        packed = packed or {}
        for name, module in self.packed.modules.items():
            factors = deltas.get(name)
            weight = packed.get(name)
            if factors is not None:
                forward = functools.partial(with_delta, self.packed.packed(name) if weight is None else weight,
                                            module.bias, *factors)
            elif weight is not None:
                forward = functools.partial(packed_linear, weight, module.bias)
            else:
                forward = self.packed.forward(name)
            # The instance dict, not setattr: nn.Module.__setattr__ costs more than the lookup.
            module.__dict__["forward"] = forward
            done.append(module)
        for name, factors in deltas.items():
            if name not in self.packed.modules:
                handles.append(self._modules[name].register_forward_hook(functools.partial(hook, *factors)))
        return Activation(self, handles=handles, overridden=done)

    def _merge(self, modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        swapped: list[tuple[str, torch.Tensor]] = []
        try:
            # Outside inference mode: the buffers become parameter data that later calls reuse.
            with torch.inference_mode(False), torch.no_grad():
                for name, (A, B) in modules.items():
                    param = self._modules[name].weight
                    pristine = param.data
                    buffer = self._merge_buffers.get(name)
                    if buffer is None or buffer.shape != pristine.shape or buffer.dtype != pristine.dtype \
                            or buffer.device != pristine.device:  # first merge, or the model moved
                        buffer = self._merge_buffers[name] = torch.empty_like(pristine)
                    if type(self._modules[name]).__name__ == "Conv1D":  # weight stored [in, out]
                        torch.addmm(pristine, A.t(), B.t(), out=buffer)
                    else:
                        torch.addmm(pristine, B, A, out=buffer)
                    param.data = buffer
                    swapped.append((name, pristine))
        except BaseException:
            for name, pristine in swapped:
                self._modules[name].weight.data = pristine
            raise
        return swapped

    def _gather(self, name: str, compositions: Sequence[Composition | None]) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self._weight(name)
        rank = max((c.modules[name][0].shape[0] for c in compositions if c is not None and name in c.modules))
        n_in, n_out = None, None
        for c in compositions:
            if c is not None and name in c.modules:
                n_out, n_in = c.modules[name][1].shape[0], c.modules[name][0].shape[1]
                break
        At = torch.zeros(len(compositions), n_in, rank, dtype=ref.dtype, device=ref.device)
        Bt = torch.zeros(len(compositions), rank, n_out, dtype=ref.dtype, device=ref.device)
        for row, c in enumerate(compositions):
            if c is not None and name in c.modules:
                A, B = c.modules[name]
                At[row, :, : A.shape[0]] = A.t()
                Bt[row, : A.shape[0], :] = B.t()
        return At, Bt
