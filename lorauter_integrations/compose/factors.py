"""The composition maths: adapters' factors -> one (A, B) pair per module. Pure tensor code,
testable without a model; the strategies are described in `compose.config`.

This computes what PEFT's ``add_weighted_adapter`` computes, directly on tensors, which avoids
its traps (a no-op when the adapter name already exists, module injection at every call) and
lets a composition be cached.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..adapters.pool import AdapterWeights
from ..errors import CompositionError
from .config import CompositionConfig

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

