"""SparseGPT: one-shot pruning with optimal-brain-surgeon weight updates.

Goal: for a linear layer with calibration inputs X [tokens, in], find a pruned W'
minimising the output error ||W X^T - W' X^T||^2 row by row. Its Hessian (the same
for every row) is H = 2 X^T X / ntokens.

Preparation
  * dead inputs (H_jj = 0, the feature is always zero) get H_jj = 1 and the
    corresponding weights are treated as free to prune (score 0);
  * dampening: H += lambda I with lambda = percdamp * mean(diag H);
  * U = upper Cholesky factor of H^-1, i.e. H^-1 = U^T U.

Why U: after columns 0..j-1 have been pruned or frozen, the inverse Hessian of the
remaining columns j.. is U[j:, j:]^T U[j:, j:], so its first row is U_jj U[j, j:] and
its first diagonal element is U_jj^2. The OBS step for column j of every row then is

    q_j   = W_ij if kept else 0,     e_i = (W_ij - q_j) / U_jj,
    W_i,j: <- W_i,j: - e_i U[j, j:],

which sets column j to q_j and optimally compensates in the later columns; the
saliency of pruning W_ij is W_ij^2 / U_jj^2.

Blocks and lazy updates. Columns are processed in blocks of ``blocksize`` (128).
Within a block the updates are applied column by column to the block only; the
accumulated errors E [out, block] update all later columns at once,
W[:, after] -= E U[block, after], which gives exactly the column-by-column result.

Mask selection. At the start of each block, with the block's weights up to date,
every row keeps the weights of largest W_ij^2 / U_jj^2 among the block's columns and
prunes k_b = round(s * end) - round(s * start) of them (start, end = the block's
column range). The counts add up to exactly round(s * in) per row, so the sparsity is
exact per row like the other methods. (The published reference code instead
thresholds the whole block across all rows at once; selecting per row keeps every
row equally sparse.) With an N:M pattern the m - n weights of smallest saliency are
chosen in each group of m columns when the sweep reaches the group's first column.
"""

from __future__ import annotations

import torch

from .selection import (
    PruneResult,
    apply_mask,
    check_weight,
    lowest_per_row,
    nm_mask,
    pruned_count,
    resolve_pattern,
)
from .statistics import HessianAccumulator


def _hessian(stats: HessianAccumulator | torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A float32 copy of H [in, in] on the weight's device, checked against the weight."""
    cols = weight.shape[1]
    if isinstance(stats, torch.Tensor):
        if stats.shape != (cols, cols):
            raise ValueError(
                f"Hessian of shape {tuple(stats.shape)} does not match weight of shape "
                f"{tuple(weight.shape)} (expected [{cols}, {cols}])"
            )
        hessian = stats.detach().float().clone()
    elif isinstance(stats, HessianAccumulator):
        stats.check_weight(weight)
        hessian = stats.hessian()
    else:
        raise ValueError(f"SparseGPT needs a HessianAccumulator or a Hessian tensor, got {type(stats).__name__}")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("Hessian contains NaN or infinite values")
    return hessian.to(weight.device)


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + percdamp * mean(diag H) * I)^-1, H^-1 = U^T U."""
    damped = hessian.clone()
    damped.diagonal().add_(percdamp * damped.diagonal().mean())
    lower, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        raise ValueError(
            f"Hessian is not positive definite after dampening with percdamp={percdamp}; "
            "use more calibration tokens or a larger percdamp"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def sparsegpt_prune(
    weight: torch.Tensor,
    stats: HessianAccumulator | torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | str | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> PruneResult:
    """Prune ``weight`` [out, in] with SparseGPT; ``stats`` gives the Hessian H = 2 X^T X / n."""
    target, pattern = resolve_pattern(sparsity, nm)
    check_weight(weight)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    if not percdamp >= 0:
        raise ValueError(f"percdamp must be non-negative, got {percdamp!r}")
    if pattern is not None:
        n, m = pattern
        if blocksize % m:
            raise ValueError(f"blocksize {blocksize} must be a multiple of m={m} for the {n}:{m} pattern")
        if weight.shape[1] % m:
            raise ValueError(f"N:M pattern {n}:{m} needs the input size to be a multiple of {m}, got {weight.shape[1]}")

    hessian = _hessian(stats, weight)
    w = weight.detach().float().clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    factor = inverse_hessian_factor(hessian, percdamp)

    rows, cols = w.shape
    mask = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        block_factor = factor[start:end, start:end]
        diag = block_factor.diagonal()
        errors = torch.zeros_like(block)
        if pattern is None:
            k = pruned_count(end, target) - pruned_count(start, target)
            block_mask = lowest_per_row(block.square() / diag.square(), k)
        else:
            block_mask = torch.ones_like(block, dtype=torch.bool)
        for j in range(end - start):
            if pattern is not None and j % m == 0:
                saliency = block[:, j : j + m].square() / diag[j : j + m].square()
                block_mask[:, j : j + m] = nm_mask(saliency, n, m)
            column = block[:, j]
            err = torch.where(block_mask[:, j], torch.zeros_like(column), column) / diag[j]
            block[:, j:] -= torch.outer(err, block_factor[j, j:])
            errors[:, j] = err
        w[:, start:end] = block
        mask[:, start:end] = block_mask
        w[:, end:] -= errors @ factor[start:end, end:]

    pruned = apply_mask(w, mask)
    # Dead inputs carry no calibration signal: a kept weight there keeps its original value.
    original = weight.detach().float()
    pruned[:, dead] = torch.where(mask[:, dead], original[:, dead], torch.zeros_like(original[:, dead]))
    return PruneResult(pruned.to(weight.dtype), mask)
