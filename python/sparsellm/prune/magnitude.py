"""Magnitude pruning: keep the weights of largest absolute value.

Score S_ij = |W_ij|. With ``scope="row"`` (default) every output row loses exactly
round(s * in) of its smallest-magnitude weights; with ``scope="layer"`` the whole
matrix loses round(s * out * in). An N:M pattern keeps the n largest |W_ij| of every
m consecutive inputs. No calibration data and no weight update: the kept weights are
returned unchanged.
"""

from __future__ import annotations

import torch

from .selection import PruneResult, apply_mask, check_weight, keep_mask, resolve_pattern


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in float32."""
    return check_weight(weight).detach().float().abs()


def magnitude_prune(
    weight: torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | str | None = None,
    scope: str = "row",
) -> PruneResult:
    """Prune ``weight`` [out, in] by magnitude; returns the pruned weight and its keep-mask."""
    target, pattern = resolve_pattern(sparsity, nm)
    mask = keep_mask(magnitude_scores(weight), target, pattern, scope)
    return PruneResult(apply_mask(weight.detach(), mask), mask)
