"""One entry point for pruning a single weight matrix by method name.

``prune_weight(W, "magnitude" | "wanda" | "sparsegpt", sparsity, stats, nm=...)``
forwards to the method's function; ``statistics_for(method, in_features, device)``
makes the calibration accumulator that method needs (None for magnitude).
"""

from __future__ import annotations

import torch

from .magnitude import magnitude_prune
from .selection import PruneResult
from .sparsegpt import sparsegpt_prune
from .statistics import ColumnNormAccumulator, HessianAccumulator, InputStatistics
from .wanda import wanda_prune

METHODS = ("magnitude", "wanda", "sparsegpt")


def check_method(method: str) -> str:
    """Return ``method`` if it names a known pruning method, else raise ValueError."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")
    return method


def statistics_for(
    method: str, in_features: int, device: torch.device | str | None = None
) -> InputStatistics | None:
    """The calibration accumulator ``method`` needs, or None when it needs no data."""
    check_method(method)
    if method == "wanda":
        return ColumnNormAccumulator(in_features, device)
    if method == "sparsegpt":
        return HessianAccumulator(in_features, device)
    return None


def prune_weight(
    weight: torch.Tensor,
    method: str,
    sparsity: float | None = None,
    stats: InputStatistics | torch.Tensor | None = None,
    *,
    nm: tuple[int, int] | str | None = None,
    scope: str = "row",
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> PruneResult:
    """Prune one weight [out, in] and return (pruned weight, keep-mask).

    ``stats``: for Wanda an accumulator (or input-norm vector [in]); for SparseGPT a
    HessianAccumulator (or Hessian [in, in]); ignored by magnitude. ``scope`` applies to
    magnitude only; ``blocksize`` and ``percdamp`` to SparseGPT only.
    """
    check_method(method)
    if method == "magnitude":
        return magnitude_prune(weight, sparsity, nm=nm, scope=scope)
    if stats is None:
        raise ValueError(f"method {method!r} needs calibration statistics (stats=None was given)")
    if method == "wanda":
        return wanda_prune(weight, stats, sparsity, nm=nm)
    return sparsegpt_prune(weight, stats, sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp)
