"""The oneDNN CPU backend: linear layers on prepacked weights, with the low-rank deltas added
inside their forwards (as PEFT keeps a backend per file, e.g. ``bnb.py``).

MKL's sgemm, behind ``nn.Linear`` on CPU, handles the few rows of a decoding batch poorly; the
oneDNN kernels that ``torch.compile`` uses on CPU after freezing make a batch of 8 rows cost
barely more than one row (figures in BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch

from .hooks import check_rows


def packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def packed_single(packed, bias, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return packed_linear(packed, bias, x) + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B)


def packed_rows(packed, bias, At: torch.Tensor, Bt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    check_rows(x, At)
    # out + (x At) Bt in one call: one op fewer per layer and step than linear, bmm, bmm, add.
    return torch.baddbmm(packed_linear(packed, bias, x), torch.bmm(x, At), Bt)


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
            y = packed_linear(torch.ops.mkldnn._reorder_linear_weight(w, 8), None, x)
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
            hit = self._packed[name] = (weight, key, packed, functools.partial(packed_linear, packed, bias), bias)
        return hit

    def packed(self, name: str) -> torch.Tensor:
        """The packed weight of module ``name``, repacked if its weight tensor was replaced."""
        return self._entry(name)[2]

    def forward(self, name: str) -> functools.partial:
        """Module ``name``'s forward on its packed weight (``x -> x W^T + b``)."""
        return self._entry(name)[3]

