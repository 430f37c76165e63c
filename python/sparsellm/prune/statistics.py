"""Calibration statistics of one linear layer's input, accumulated batch by batch.

A linear layer y = W x sees calibration activations X [tokens, in]. The pruning
methods need two summaries of X, both accumulated in float32 whatever the
activations' dtype, on the activations' device:

* ``ColumnNormAccumulator`` keeps the per-column sums of squares
  q_j = sum_t X_tj^2, so that ||X_j||_2 = sqrt(q_j) (Wanda's input norms).
* ``HessianAccumulator`` keeps S = X^T X and the token count n and gives the
  layer-wise reconstruction Hessian H = 2 S / n of the loss ||W X^T - W' X^T||^2 / n
  (SparseGPT). Its diagonal is 2 q / n, so it also yields the column norms.

Both take batches of any leading shape [..., in]; the leading dimensions are
flattened into tokens.
"""

from __future__ import annotations

import torch


class _InputAccumulator:
    """Shared bookkeeping: input width, token count and batch checks."""

    def __init__(self, in_features: int) -> None:
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.ntokens = 0

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"activations must have shape [..., {self.in_features}], got {shape}")
        return x.detach().reshape(-1, self.in_features).float()

    def _require_tokens(self) -> None:
        if self.ntokens == 0:
            raise ValueError(f"{type(self).__name__} has seen no calibration tokens")

    def check_weight(self, weight: torch.Tensor) -> None:
        """Raise ValueError unless ``weight`` [out, in] matches this accumulator's input width."""
        if weight.dim() != 2 or weight.shape[1] != self.in_features:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not match calibration statistics "
                f"of {self.in_features} input features"
            )

    def column_norms(self) -> torch.Tensor:
        """||X_j||_2 over all tokens seen, float32 [in]."""
        raise NotImplementedError


class ColumnNormAccumulator(_InputAccumulator):
    """Per-input-column sums of squares of the activations (memory O(in))."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        super().__init__(in_features)
        self.sq_sums = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of activations [..., in]."""
        tokens = self._tokens(x).to(self.sq_sums.device)
        self.sq_sums += tokens.square().sum(dim=0)
        self.ntokens += tokens.shape[0]

    def column_norms(self) -> torch.Tensor:
        self._require_tokens()
        return self.sq_sums.sqrt()


class HessianAccumulator(_InputAccumulator):
    """X^T X of the activations (memory O(in^2)), for H = 2 X^T X / ntokens."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        super().__init__(in_features)
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of activations [..., in]."""
        tokens = self._tokens(x).to(self.xtx.device)
        self.xtx.addmm_(tokens.T, tokens)
        self.ntokens += tokens.shape[0]

    def hessian(self) -> torch.Tensor:
        """H = 2 X^T X / ntokens as a float32 tensor [in, in] (a copy)."""
        self._require_tokens()
        return self.xtx * (2.0 / self.ntokens)

    def column_norms(self) -> torch.Tensor:
        self._require_tokens()
        return self.xtx.diagonal().clamp(min=0).sqrt()


InputStatistics = ColumnNormAccumulator | HessianAccumulator
