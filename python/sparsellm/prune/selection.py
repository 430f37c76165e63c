"""Choosing which weights to keep, given one importance score per weight.

Every pruning method in this package ends in the same step. For a weight matrix
W [out, in] (``torch.nn.Linear`` order) it computes a score S_ij >= 0 (higher means
more important) and keeps the highest-scoring weights under one of three patterns:

* ``row`` (unstructured, the default): every output row i loses exactly
  k = round(s * in) weights, those with the lowest S_ij in that row.
* ``layer`` (unstructured): the whole matrix loses exactly round(s * out * in)
  weights, the lowest scores of the matrix.
* N:M (semi-structured): in every group of M consecutive input columns of a row
  (columns mM .. mM+M-1), the N highest scores are kept and M-N are zeroed, so the
  sparsity is 1 - N/M.

round(x) here is round-half-up, floor(x + 1/2), so counts never depend on
banker's rounding. Ties are broken deterministically by a stable sort: among equal
scores the lower column (or flattened) index is pruned first.

The module also holds the argument checks shared by the methods and the result type
they return.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import torch


class PruneResult(NamedTuple):
    """A pruned weight (same dtype and device as the input) and its keep-mask (True = kept)."""

    weight: torch.Tensor
    mask: torch.Tensor


def check_sparsity(sparsity: object, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float after checking 0 <= sparsity < 1."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"{what} must be in [0, 1), got {sparsity!r}")
    return value


def parse_nm(nm: object) -> tuple[int, int] | None:
    """Parse an N:M pattern given as ``(n, m)`` or ``"n:m"``; keep n of every m weights."""
    if nm is None:
        return None
    if isinstance(nm, str):
        parts = nm.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"N:M pattern must look like '2:4', got {nm!r}") from None
    else:
        try:
            n, m = nm  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(f"N:M pattern must be a pair (n, m) or 'n:m', got {nm!r}") from None
        if not (isinstance(n, int) and isinstance(m, int)):
            raise ValueError(f"N:M pattern must hold two integers, got {nm!r}")
    if not 1 <= n < m:
        raise ValueError(f"N:M pattern needs 1 <= n < m, got {n}:{m}")
    return n, m


def resolve_pattern(sparsity: object, nm: object) -> tuple[float, tuple[int, int] | None]:
    """Check (sparsity, nm) together; with N:M the sparsity may be omitted (it is 1 - n/m)."""
    pattern = parse_nm(nm)
    if pattern is None:
        if sparsity is None:
            raise ValueError("sparsity is required when no N:M pattern is given")
        return check_sparsity(sparsity), None
    n, m = pattern
    implied = 1.0 - n / m
    if sparsity is not None and abs(check_sparsity(sparsity) - implied) > 1e-9:
        raise ValueError(
            f"sparsity {sparsity!r} contradicts the N:M pattern {n}:{m} (which means {implied:g})"
        )
    return implied, pattern


def check_weight(weight: object) -> torch.Tensor:
    """Check that ``weight`` is a finite, floating-point 2-D tensor [out, in]."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty, shape {tuple(weight.shape)}")
    # A NaN or infinity makes the sum non-finite; only then (or on overflow) look closer.
    if not bool(torch.isfinite(weight.sum())) and not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or infinite values")
    return weight


def pruned_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity prunes: round-half-up of sparsity * n."""
    return int(math.floor(sparsity * n + 0.5))


def lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask that drops the ``k`` lowest scores of every row (stable: lower index first).

    The same mask as dropping the first ``k`` entries of a stable sort, found in linear
    time: the k-th smallest score of each row is the threshold and every score up to it
    is dropped; in the rows where more than k scores reach it (ties at the threshold),
    the tied scores of highest index are kept again until k remain dropped.
    """
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    drop = scores <= threshold
    excess = drop.sum(dim=1) - k  # ≥ 0: tied scores dropped beyond k
    rows = torch.nonzero(excess).flatten()
    if rows.numel():
        tied = scores[rows] == threshold[rows]
        rank = torch.cumsum(tied, dim=1)  # 1, 2, ... over each row's tied scores, by index
        keep_again = tied & (rank > rank[:, -1:] - excess[rows, None])  # the last `excess` tied scores
        drop[rows] &= ~keep_again
    return ~drop

def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the n highest of every m consecutive scores of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern {n}:{m} needs the input size to be a multiple of {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[..., : m - n]
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, False)
    return mask.reshape(rows, cols)


def keep_mask(
    scores: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    scope: str = "row",
) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in] under the pattern described in the module docstring."""
    if nm is not None:
        if scope != "row":
            raise ValueError(f"an N:M pattern is selected within rows; scope {scope!r} does not apply")
        return nm_mask(scores, *nm)
    if scope == "row":
        return lowest_per_row(scores, pruned_count(scores.shape[1], sparsity))
    if scope == "layer":
        flat = lowest_per_row(scores.reshape(1, -1), pruned_count(scores.numel(), sparsity))
        return flat.reshape(scores.shape)
    raise ValueError(f"scope must be 'row' or 'layer', got {scope!r}")


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the weights whose mask entry is False, keeping dtype and device."""
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
