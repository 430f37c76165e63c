"""Wanda: pruning by weights and activations (no weight update).

For a linear layer with calibration inputs X [tokens, in], the score of weight W_ij is

    S_ij = |W_ij| * ||X_j||_2,     ||X_j||_2 = sqrt(sum_t X_tj^2),

the magnitude of the weight times the norm of the input feature it multiplies. The
scores are compared within each output row: row i loses exactly round(s * in) of its
lowest-scoring weights (or, with an N:M pattern, the m - n lowest of every m
consecutive inputs). Kept weights are returned unchanged.
"""

from __future__ import annotations

import torch

from .selection import PruneResult, apply_mask, check_weight, keep_mask, resolve_pattern
from .statistics import InputStatistics


def input_norms(stats: InputStatistics | torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """||X_j||_2 [in] (float32, on the weight's device) from statistics or a given norm vector."""
    if isinstance(stats, torch.Tensor):
        if stats.dim() != 1 or stats.shape[0] != weight.shape[1]:
            raise ValueError(
                f"input norms of shape {tuple(stats.shape)} do not match weight of shape "
                f"{tuple(weight.shape)} (expected [{weight.shape[1]}])"
            )
        norms = stats.detach().float()
        if bool((norms < 0).any()) or not bool(torch.isfinite(norms).all()):
            raise ValueError("input norms must be finite and non-negative")
    else:
        stats.check_weight(weight)
        norms = stats.column_norms()
    return norms.to(weight.device)


def wanda_scores(weight: torch.Tensor, stats: InputStatistics | torch.Tensor) -> torch.Tensor:
    """S = |W| * ||X_j||_2 broadcast over rows, float32 [out, in]."""
    check_weight(weight)
    return weight.detach().float().abs() * input_norms(stats, weight)[None, :]


def wanda_prune(
    weight: torch.Tensor,
    stats: InputStatistics | torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | str | None = None,
) -> PruneResult:
    """Prune ``weight`` [out, in] by Wanda scores; ``stats`` gives the input column norms."""
    target, pattern = resolve_pattern(sparsity, nm)
    mask = keep_mask(wanda_scores(weight, stats), target, pattern, "row")
    return PruneResult(apply_mask(weight.detach(), mask), mask)
