"""Dense GEMM through cuBLASLt against an fp32 reference."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import sparsellm  # noqa: E402
from sparsellm import ops  # noqa: E402

from gpu_reference import TOLERANCE, fp32_reference, rel_error  # noqa: E402


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,m,k", [(1, 64, 172), (7, 1000, 3000), (128, 4096, 4096), (33, 4097, 4095)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_fp32_reference(dtype, n, m, k, with_bias):
    gen = torch.Generator(device="cuda").manual_seed(n * 7 + m)
    x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
    w = (torch.randn(m, k, generator=gen, device="cuda") * 0.05).to(dtype)
    b = torch.randn(m, generator=gen, device="cuda").to(dtype) if with_bias else None
    out = torch.full((n, m), float("nan"), dtype=dtype, device="cuda")
    y = ops.linear(x, w, b, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert torch.isfinite(y).all()
    assert rel_error(y, fp32_reference(x, w, b)) < TOLERANCE[dtype]


@pytest.mark.gpu
def test_batched_leading_dimensions():
    x = torch.randn(2, 3, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    y = ops.linear(x, w)
    assert y.shape == (2, 3, 32)
    assert rel_error(y.view(6, 32), fp32_reference(x.view(6, 64), w)) < 2e-3


def test_rejects_cpu_tensors():
    x = torch.randn(2, 4, dtype=torch.float16)
    with pytest.raises(sparsellm.InvalidArgument, match="CUDA"):
        ops.linear(x, x)


@pytest.mark.gpu
def test_rejects_bad_arguments():
    w = torch.randn(8, 16, device="cuda", dtype=torch.float16)
    with pytest.raises(sparsellm.InvalidArgument, match="dtype"):
        ops.linear(torch.randn(2, 16, device="cuda", dtype=torch.bfloat16), w)
    with pytest.raises(sparsellm.InvalidArgument, match="in_features"):
        ops.linear(torch.randn(2, 15, device="cuda", dtype=torch.float16), w)
    with pytest.raises(sparsellm.InvalidArgument, match="contiguous"):
        ops.linear(torch.randn(16, 2, device="cuda", dtype=torch.float16).t(), w)
    with pytest.raises(sparsellm.InvalidArgument, match="float16 or torch.bfloat16"):
        ops.linear(torch.randn(2, 16, device="cuda"), w.float())
    with pytest.raises(sparsellm.InvalidArgument, match="bias"):
        ops.linear(torch.randn(2, 16, device="cuda", dtype=torch.float16), w,
                   torch.randn(7, device="cuda", dtype=torch.float16))
