"""Shared helpers of the GPU tests: random pruned weights and error measures."""
from __future__ import annotations

import torch

# ‖y − ref‖ / ‖ref‖ bounds against an fp32 reference on the same (rounded) inputs.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def pruned_weight(m, k, sparsity, dtype, gen, device="cuda"):
    """Trained-scale random weight with an unstructured mask; never all zeros
    unless sparsity is 1."""
    w = torch.randn(m, k, generator=gen, device=device) * 0.05
    keep = torch.rand(m, k, generator=gen, device=device) >= sparsity
    return (w * keep).to(dtype)


def rel_error(y, ref) -> float:
    y, ref = y.double(), ref.double()
    den = ref.norm().item()
    return (y - ref).norm().item() / den if den > 0 else y.norm().item()


def fp32_reference(x, w, bias=None):
    y = x.float() @ w.float().t()
    return y + bias.float() if bias is not None else y
