"""How a route's adapters are combined: the strategies, their options, and the composed value.

Every strategy reduces the selected adapters to one pair of factors per target module,
``A [R, in]`` and ``B [out, R]`` with weights and LoRA scalings folded in, so that the layer
computes ``W x + B (A x)``:

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
  (default: the largest input rank) by SVD, computed in fp32, then cast back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

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


