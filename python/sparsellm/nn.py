"""torch.nn modules backed by the sparse kernels (inference only)."""
from __future__ import annotations

from sparsellm import ops
from sparsellm._torch import torch
from sparsellm.errors import InvalidArgument
from sparsellm.sparse_weight import SparseWeight

_nn = torch().nn


class SparseLinear(_nn.Module):
    """Drop-in for ``torch.nn.Linear`` at inference: y = x · Wᵀ + b with W stored
    compressed. Build it with :meth:`from_dense`."""

    def __init__(self, weight: SparseWeight, bias=None):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            bias = bias.detach().to(device=weight.device, dtype=weight.dtype).contiguous()
        self.register_buffer("bias", bias)

    @classmethod
    def from_dense(cls, linear, sparsity: float | None = None, format: str = "tiled_csl", device=None):
        """Encode ``linear``'s weight in ``format`` ("tiled_csl", "bitmap" or "split24").
        Entries that are zero are the pruned ones; with ``sparsity`` the
        smallest-magnitude fraction of each row is pruned first (see
        sparsellm.prune for calibrated methods)."""
        if not isinstance(linear, _nn.Linear):
            raise InvalidArgument(f"from_dense expects a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if sparsity is not None:
            from sparsellm.prune.magnitude import magnitude_prune

            w = magnitude_prune(w, sparsity).weight
        weight = SparseWeight.from_dense(w, format=format, device=device)
        return cls(weight, linear.bias)

    def forward(self, x):
        return ops.spmm(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight.format}, sparsity={self.weight.sparsity:.3f}, dtype={self.weight.dtype}")
