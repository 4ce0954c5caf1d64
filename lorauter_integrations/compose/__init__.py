"""Composition: a `Route` -> one low-rank delta per LoRA layer, activated on the base model.

- `config`: the strategies and `CompositionConfig` (one typed value), the `Composition` value;
- `factors`: the maths (pure tensor functions);
- `hooks` / `packed`: how deltas are added to a layer (forward hooks; the oneDNN CPU backend);
- `composer`: `Composer` (cache, activation) and `Activation` (exact restore).
"""

from .composer import Activation, Composer
from .config import STRATEGIES, Composition, CompositionConfig, Strategy
from .factors import compose_factors
from .packed import PackedLinears, packed_kernels_available

__all__ = [
    "STRATEGIES", "Activation", "Composer", "Composition", "CompositionConfig", "PackedLinears", "Strategy",
    "compose_factors", "packed_kernels_available",
]
