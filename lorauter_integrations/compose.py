"""Composition: a `Route` -> one low-rank delta per LoRA layer, activated on the base model.

Every strategy reduces the selected adapters to one pair of factors per target module,
``A [R, in]`` and ``B [out, R]`` with weights and LoRA scalings folded in, so that the layer
computes ``W x + B (A x)``. How that pair is built is the strategy:

- ``mixture`` (default, exact): ``W x + sum_i w_i s_i B_i A_i x``. Concatenating
  ``A = [w_1 s_1 A_1; ...]`` and ``B = [B_1 ... B_k]`` gives exactly that sum in two small
  matmuls (what PEFT's ``cat`` builds); ``cat`` is the same computation under PEFT's name.
- ``linear`` / ``fusion``: ``A = sum sqrt(w_i s_i) A_i``, ``B = sum sqrt(w_i s_i) B_i``
  (PEFT ``add_weighted_adapter(combination_type="linear")``; needs equal ranks; approximate).
- ``ties``, ``magnitude_prune``, ``dare_linear``, ``dare_ties``: the same per-factor weighting,
  merged with PEFT's own ``peft.utils.merge_utils`` functions (TIES-Merging, Yadav et al. 2023;
  DARE, Yu et al. 2023). Need equal ranks. DARE's random drop is seeded, so a route always
  yields the same composition.
- ``svd``: the full weighted delta ``sum_i w_i s_i B_i A_i`` truncated to rank ``svd_rank``
  (default: the largest input rank) by SVD, computed in fp32 (SVD is not implemented for
  fp16/bf16), then cast back.

This computes what ``add_weighted_adapter`` computes, directly on tensors: it avoids its traps
(a no-op when the adapter name already exists, ~150 ms per call of module injection) and lets a
composition be cached, applied by forward hooks (nothing of ours stays on the model when inactive),
folded into the base weights for single-stream speed, or gathered per row for mixed batches.

On CPU, an activation can also run every ``nn.Linear`` of the model on oneDNN-prepacked weights
(`PackedLinears`, the kernels ``torch.compile`` uses on CPU after freezing): MKL's sgemm handles
the few rows of a decoding batch poorly, and the packed kernels make a batch of 8 rows cost
barely more than one row. The deltas are then added inside those layers' forwards instead of by
hooks; `Activation.restore` removes both.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import CompositionError
from .pool import AdapterPool, AdapterWeights
from .routing.route import Route

Strategy = Literal[
    "mixture", "cat", "linear", "fusion", "ties", "magnitude_prune", "dare_linear", "dare_ties", "svd"
]
STRATEGIES: tuple[str, ...] = Strategy.__args__
_EQUAL_RANK = ("linear", "fusion", "ties", "magnitude_prune", "dare_linear", "dare_ties")


class CompositionConfig(BaseModel):
    """How a route's adapters are combined."""

    model_config = ConfigDict(frozen=True)

    strategy: Strategy = Field(default="mixture", description="Combination method (see module doc).")
    density: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Fraction of values kept by ties / magnitude_prune / dare."
    )
    majority_sign_method: Literal["total", "frequency"] = Field(
        default="total", description="TIES sign election (PEFT's option)."
    )
    svd_rank: int | None = Field(default=None, ge=1, description="Rank of the svd composition (default: max rank).")
    seed: int = Field(default=0, description="Seed of DARE's random drop (compositions are deterministic).")


@dataclass(eq=False)
class Composition:
    """One route's composed factors per module: ``delta(x) = B @ (A @ x)`` (scalings folded in)."""

    key: tuple
    strategy: str
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [R, in], B [out, R])

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.modules.values()), default=0)


# ----------------------------------------------------------------------------- the math
def compose_factors(
    adapters: Sequence[AdapterWeights], weights: Sequence[float], config: CompositionConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Combine adapters into one (A, B) pair per module; pure tensor code, no model involved."""
    if len(adapters) != len(weights):
        raise CompositionError(f"{len(adapters)} adapters but {len(weights)} weights")
    pairs = [(a, float(w)) for a, w in zip(adapters, weights) if w != 0.0]
    if not pairs:
        return {}
    names: dict[str, None] = {}
    for adapter, _ in pairs:
        names.update(dict.fromkeys(adapter.modules))
    strategy = config.strategy
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        present = [(a.modules[name], w, a.adapter_id) for a, w in pairs if name in a.modules]
        if strategy in ("mixture", "cat"):
            A = torch.cat([m.A * (w * m.scaling) for m, w, _ in present], dim=0)
            B = torch.cat([m.B for m, _, _ in present], dim=1)
        elif strategy == "svd":
            A, B = _svd(present, config)
        else:
            ranks = {aid: m.A.shape[0] for m, _, aid in present}
            if len(set(ranks.values())) > 1:
                raise CompositionError(
                    f"'{strategy}' needs adapters of equal rank, got {ranks} at module '{name}': "
                    "use composition 'mixture' (exact, any ranks) or 'svd'"
                )
            A, B = _task_arithmetic(strategy, present, config)
        out[name] = (A.contiguous(), B.contiguous())
    return out


def _task_arithmetic(strategy: str, present, config: CompositionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from peft.utils import merge_utils

    # PEFT weights each factor by sqrt(w * scaling) so that B A carries w * scaling once.
    factor = torch.tensor([math.sqrt(w * m.scaling) for m, w, _ in present], dtype=present[0][0].A.dtype,
                          device=present[0][0].A.device)
    result = []
    for side in ("A", "B"):
        tensors = [getattr(m, side) for m, _, _ in present]
        if strategy in ("linear", "fusion"):
            merged = merge_utils.task_arithmetic(tensors, factor)
        elif strategy == "ties":
            merged = merge_utils.ties(tensors, factor, config.density, config.majority_sign_method)
        elif strategy == "magnitude_prune":
            merged = merge_utils.magnitude_prune(tensors, factor, config.density)
        else:
            with torch.random.fork_rng(devices=[tensors[0].device] if tensors[0].is_cuda else []):
                torch.manual_seed(config.seed)
                if strategy == "dare_linear":
                    merged = merge_utils.dare_linear(tensors, factor, config.density)
                else:
                    merged = merge_utils.dare_ties(tensors, factor, config.density, config.majority_sign_method)
        result.append(merged.to(tensors[0].dtype))
    return result[0], result[1]


def _svd(present, config: CompositionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = present[0][0].A.dtype
    delta = sum(w * m.scaling * (m.B.float() @ m.A.float()) for m, w, _ in present)
    rank = min(config.svd_rank or max(m.A.shape[0] for m, _, _ in present), *delta.shape)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:rank].to(dtype), (U[:, :rank] * S[:rank]).to(dtype)


# ----------------------------------------------------------------------------- forward hooks
def _single_hook(A: torch.Tensor, B: torch.Tensor, module, args, output):
    return output + torch.nn.functional.linear(torch.nn.functional.linear(args[0], A), B)


def _check_rows(x: torch.Tensor, At: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[0] != At.shape[0]:
        raise CompositionError(
            f"per-row adapters expect inputs [batch={At.shape[0]}, seq, features], got {tuple(x.shape)}"
        )


def _rows_hook(At: torch.Tensor, Bt: torch.Tensor, module, args, output):
    x = args[0]
    _check_rows(x, At)
    return output + torch.bmm(torch.bmm(x, At), Bt)


# ----------------------------------------------------------------------------- packed CPU kernels
def _packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_single(packed, bias, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _packed_linear(packed, bias, x) + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B)


def _packed_rows(packed, bias, At: torch.Tensor, Bt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    _check_rows(x, At)
    # out + (x At) Bt in one call: one op fewer per layer and step than linear, bmm, bmm, add.
    return torch.baddbmm(_packed_linear(packed, bias, x), torch.bmm(x, At), Bt)


_SHARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> PackedLinears
_SHARED_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def packed_kernels_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's prepacked linear runs here for ``dtype`` and agrees with ``F.linear``.

    These are PyTorch's internal ops behind ``torch.compile``'s CPU backend; a build without them,
    or one where they changed, simply falls back to plain ``nn.Linear`` (checked on a tiny layer).
    """
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        x = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
        with torch.no_grad():
            y = _packed_linear(torch.ops.mkldnn._reorder_linear_weight(w, 8), None, x)
            return bool(torch.allclose(y.float(), torch.nn.functional.linear(x, w).float(), atol=1e-2, rtol=1e-2))
    except Exception:  # an op missing or with another signature in this build
        return False


class PackedLinears:
    """oneDNN-prepacked copies of a CPU model's ``nn.Linear`` weights, and forwards that use them.

    Why: MKL's sgemm, behind ``nn.Linear`` on CPU, is slow for the few rows of a decoding batch.
    Measured on the 2-core AMD EPYC of BENCHMARKS.md, all 211 linears of SmolLM2-135M, one
    thread: 47 ms for 1 row and 75 ms for 8 rows per decoding step; with oneDNN and weights
    reordered once for its kernels, 39 ms and 42 ms. A mixed-route batch of 8 thus decodes at
    nearly the cost of one request. The cost is one more copy of the linear weights in memory
    and a repack (~0.6 ms per module) of merged weights at each switch.

    The packed copies are made once (``pack_all``); a module whose weight or bias was replaced or
    written in place since (another Parameter, another storage, ``load_state_dict``) is repacked
    when next used. Writes through ``.data`` bypass the version counter: call ``pack_all()`` then.
    """

    def __init__(self, model, *, batch_hint: int = 8):
        self.modules: dict[str, torch.nn.Linear] = {
            name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        self.batch_hint = batch_hint
        # name -> (weight Parameter packed, its (data pointer, in-place write counters) key, packed
        # weight, forward on it, bias): the forward is kept too, so that activating a composition
        # only assigns ready-made callables.
        self._packed: dict[str, tuple] = {}

    @classmethod
    def shared(cls, model) -> "PackedLinears":
        """The packed copy of ``model``'s weights, made once per model: every composer on one
        model (an engine, a mapping scorer) shares it instead of holding its own copy."""
        with _SHARED_LOCK:
            packed = _SHARED.get(model)
            if packed is None:
                packed = _SHARED[model] = cls(model)
                packed.pack_all()
            return packed

    @staticmethod
    def supports(model, max_bytes: int = 2 << 30) -> bool:
        """On by default where it helps and is safe: a CPU model in fp32/bf16 whose linear weights
        fit ``max_bytes`` (the packed copy doubles them), with no module whose ``forward`` is
        already replaced on the instance (e.g. accelerate's offloading hooks)."""
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears or any("forward" in m.__dict__ for m in linears):
            return False
        # A subclass with its own forward (quantised or scaled linears: bitsandbytes, torchao...)
        # would lose its behaviour under a plain packed matmul: keep such models on nn.Linear.
        if any(type(m).forward is not torch.nn.Linear.forward for m in linears):
            return False
        dtypes = {m.weight.dtype for m in linears}
        if len(dtypes) != 1 or any(m.weight.device.type != "cpu" for m in linears):
            return False
        if not packed_kernels_available(dtypes.pop()):
            return False
        return sum(m.weight.numel() * m.weight.element_size() for m in linears) <= max_bytes

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` reordered for oneDNN's linear kernels (a new tensor; ``weight`` is untouched)."""
        with torch.inference_mode(False), torch.no_grad():  # kept across calls: not an inference tensor
            return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.batch_hint)

    def pack_all(self) -> None:
        """(Re)pack every linear weight now: a few hundred ms for a 135M model."""
        self._packed.clear()
        for name in self.modules:
            self._entry(name)

    def _entry(self, name: str) -> tuple:
        # Called for every linear layer at every activation: plain dict reads, no nn.Module
        # attribute lookups (hundreds of layers x a few us would exceed a 1 ms activation).
        module = self.modules[name]
        weight = module._parameters["weight"]
        bias = module._parameters.get("bias")
        # The tensors' version counters change on in-place writes (load_state_dict, .copy_()),
        # so weights or a bias changed in place are repacked too, not served stale.
        try:
            key = (weight.data_ptr(), weight._version, None if bias is None else bias._version)
        except RuntimeError:  # inference-mode tensors keep no version counter
            key = (weight.data_ptr(), -1, -1)
        hit = self._packed.get(name)
        if hit is None or hit[0] is not weight or hit[1] != key or hit[4] is not bias:
            packed = self.pack(weight)
            hit = self._packed[name] = (weight, key, packed, functools.partial(_packed_linear, packed, bias), bias)
        return hit

    def packed(self, name: str) -> torch.Tensor:
        """The packed weight of module ``name``, repacked if its weight tensor was replaced."""
        return self._entry(name)[2]

    def forward(self, name: str) -> functools.partial:
        """Module ``name``'s forward on its packed weight (``x -> x W^T + b``)."""
        return self._entry(name)[3]


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
                    self._modules[name].register_forward_hook(functools.partial(_single_hook, A, B))
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
                    act = self._override(rows, _packed_rows)
                else:
                    for name, (At, Bt) in rows.items():
                        handles.append(self._modules[name].register_forward_hook(functools.partial(_rows_hook, At, Bt)))
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
            return self._override(modules, _packed_single)
        swapped = self._merge(modules)
        try:
            merged = {name: self.packed.pack(self._weight(name)) for name, _ in swapped if name in self.packed.modules}
        except BaseException:
            for name, pristine in swapped:
                self._modules[name].weight.data = pristine
            raise
        act = self._override({}, _packed_single, merged)
        act._swapped = swapped
        return act

    def _override(self, deltas: Mapping[str, tuple[torch.Tensor, torch.Tensor]], with_delta,
                  packed: Mapping[str, torch.Tensor] | None = None) -> Activation:
        """Set the instance ``forward`` of every packed linear layer: the packed base weight (or
        ``packed[name]``), plus ``with_delta``'s low-rank term where ``deltas`` has factors.
        Modules that are not packed (e.g. GPT-2's Conv1D) get the delta by a forward hook."""
        done: list[torch.nn.Module] = []
        handles = []
        hook = _rows_hook if with_delta is _packed_rows else _single_hook
        packed = packed or {}
        for name, module in self.packed.modules.items():
            factors = deltas.get(name)
            weight = packed.get(name)
            if factors is not None:
                forward = functools.partial(with_delta, self.packed.packed(name) if weight is None else weight,
                                            module.bias, *factors)
            elif weight is not None:
                forward = functools.partial(_packed_linear, weight, module.bias)
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
