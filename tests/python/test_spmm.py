"""SpMM (Tiled-CSL, bitmap and split 2:4 weights) against cuBLAS and an fp32 reference on the
same masked weights.

Bounds: ‖y − ref32‖/‖ref32‖ below TOLERANCE[dtype] (fp32 accumulation, one
rounding of the output), and never more than 2× cuBLAS's own error + 1e-4."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import sparsellm  # noqa: E402
from sparsellm import ops  # noqa: E402
from sparsellm.nn import SparseLinear  # noqa: E402
from sparsellm.sparse_weight import SparseWeight  # noqa: E402

from gpu_reference import TOLERANCE, fp32_reference, pruned_weight, rel_error  # noqa: E402

NS = [1, 2, 3, 7, 8, 16, 17, 31, 64, 100, 128, 256]
SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]
SHAPES = [(64, 172), (1000, 3000), (4097, 4095)]
DTYPES = [torch.float16, torch.bfloat16]
FORMATS = ["tiled_csl", "bitmap", "split24"]


def check_case(w, sw, n, gen, with_bias=True):
    m, k = w.shape
    x = torch.randn(n, k, generator=gen, device="cuda").to(w.dtype)
    b = torch.randn(m, generator=gen, device="cuda").to(w.dtype) if with_bias else None
    out = torch.full((n, m), float("nan"), dtype=w.dtype, device="cuda")  # poison
    y = ops.spmm(x, sw, b, out=out)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs remain"
    ref = fp32_reference(x, w, b)
    err = rel_error(y, ref)
    cublas_err = rel_error(torch.nn.functional.linear(x, w, b), ref)
    assert err < TOLERANCE[w.dtype], f"n={n}: error {err:.2e}"
    assert err <= 2 * cublas_err + 1e-4, f"n={n}: error {err:.2e} vs cuBLAS {cublas_err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("m,k", SHAPES)
def test_grid(m, k, sparsity, dtype, fmt):
    gen = torch.Generator(device="cuda").manual_seed(m * 31 + k + int(sparsity * 100))
    w = pruned_weight(m, k, sparsity, dtype, gen)
    sw = SparseWeight.from_dense(w, format=fmt)
    assert sw.format == fmt
    assert sw.nnz == int((w != 0).sum())
    for n in NS:
        check_case(w, sw, n, gen, with_bias=sparsity < 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_uneven_rows(dtype, fmt):
    """Half the rows fully dense, half empty: the stream-K split must cope with
    tiles of 8192 and of 0 nonzeros side by side."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    w = pruned_weight(2048, 1024, 0.0, dtype, gen)
    w[1::2] = 0
    w[:256] = 0  # two whole tile rows empty
    sw = SparseWeight.from_dense(w, format=fmt)
    for n in (1, 16, 64, 200):
        check_case(w, sw, n, gen)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,m,k", [("opt66b.qkv", 27648, 9216), ("opt66b.attn_out", 9216, 9216),
                                      ("opt66b.fc1", 36864, 9216), ("opt66b.fc2", 9216, 36864),
                                      ("opt175b.fc1.tp8", 6144, 12288)])
def test_benchmark_shapes(name, m, k, fmt):
    gen = torch.Generator(device="cuda").manual_seed(m + k)
    for sparsity, dtype in ((0.5, torch.float16), (0.8, torch.bfloat16)):
        w = pruned_weight(m, k, sparsity, dtype, gen)
        sw = SparseWeight.from_dense(w, format=fmt)
        for n in (1, 8, 16, 32, 64, 128):
            check_case(w, sw, n, gen)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_repeated_calls_are_deterministic(fmt):
    gen = torch.Generator(device="cuda").manual_seed(11)
    w = pruned_weight(4096, 4096, 0.7, torch.float16, gen)
    sw = SparseWeight.from_dense(w, format=fmt)
    x = torch.randn(16, 4096, generator=gen, device="cuda").half()
    first = ops.spmm(x, sw)
    for _ in range(5):
        assert torch.equal(ops.spmm(x, sw), first)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_linear_is_a_drop_in(fmt):
    torch.manual_seed(0)
    lin = torch.nn.Linear(1000, 700).cuda().half()
    sl = SparseLinear.from_dense(lin, sparsity=0.6, format=fmt)
    assert sl.weight.format == fmt
    assert abs(sl.weight.sparsity - 0.6) < 0.01
    pruned = lin.weight.detach().clone()
    from sparsellm.prune.magnitude import magnitude_prune

    pruned = magnitude_prune(pruned, 0.6).weight
    x = torch.randn(4, 9, 1000, device="cuda").half()
    y = sl(x)
    assert y.shape == (4, 9, 700)
    ref = fp32_reference(x.view(-1, 1000), pruned, lin.bias.detach()).view(4, 9, 700)
    assert rel_error(y, ref) < 2e-3


@pytest.mark.gpu
def test_rejects_bad_arguments():
    gen = torch.Generator(device="cuda").manual_seed(1)
    sw = SparseWeight.from_dense(pruned_weight(256, 128, 0.5, torch.float16, gen))
    good = torch.randn(4, 128, device="cuda").half()
    with pytest.raises(sparsellm.InvalidArgument, match="dtype"):
        ops.spmm(good.bfloat16(), sw)
    with pytest.raises(sparsellm.InvalidArgument, match="in_features"):
        ops.spmm(torch.randn(4, 127, device="cuda").half(), sw)
    with pytest.raises(sparsellm.InvalidArgument, match="contiguous"):
        ops.spmm(torch.randn(128, 4, device="cuda").half().t(), sw)
    with pytest.raises(sparsellm.InvalidArgument, match="CUDA"):
        ops.spmm(good.cpu(), sw)
    with pytest.raises(sparsellm.InvalidArgument, match="SparseWeight"):
        ops.spmm(good, torch.zeros(256, 128, device="cuda").half())
    with pytest.raises(sparsellm.InvalidArgument, match="out"):
        ops.spmm(good, sw, out=torch.empty(4, 255, device="cuda").half())


@pytest.mark.gpu
def test_bitmap_moves_fewer_bytes_than_tiled_csl_at_half_sparsity():
    gen = torch.Generator(device="cuda").manual_seed(3)
    w = pruned_weight(1024, 1024, 0.5, torch.float16, gen)
    tiled, bitmap = SparseWeight.from_dense(w), SparseWeight.from_dense(w, format="bitmap")
    assert bitmap.nbytes < 0.6 * tiled.nbytes
    x = torch.randn(8, 1024, generator=gen, device="cuda").half()
    assert rel_error(ops.spmm(x, bitmap), ops.spmm(x, tiled).float()) < 2e-3


@pytest.mark.gpu
def test_unknown_format_is_rejected():
    with pytest.raises(sparsellm.InvalidArgument, match="format"):
        SparseWeight.from_dense(torch.zeros(4, 4, device="cuda").half(), format="csr")
