"""Forward hooks that add a composition's low-rank delta to a module's output: one delta for
every row, or one per batch row (mixed routes in one forward pass)."""

from __future__ import annotations

import torch

from ..errors import CompositionError


def single_hook(A: torch.Tensor, B: torch.Tensor, module, args, output):
    return output + torch.nn.functional.linear(torch.nn.functional.linear(args[0], A), B)


def check_rows(x: torch.Tensor, At: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[0] != At.shape[0]:
        raise CompositionError(
            f"per-row adapters expect inputs [batch={At.shape[0]}, seq, features], got {tuple(x.shape)}"
        )


def rows_hook(At: torch.Tensor, Bt: torch.Tensor, module, args, output):
    x = args[0]
    check_rows(x, At)
    return output + torch.bmm(torch.bmm(x, At), Bt)

