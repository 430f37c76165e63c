"""Operations on torch CUDA tensors, on the current stream.

    linear(x, weight, bias)  dense  Y = X · Wᵀ (+ b) through cuBLASLt
    spmm(x, weight, bias)    sparse Y = X · Wᵀ (+ b), W a SparseWeight

x has shape [..., K]; the result has shape [..., M] and x's dtype. Both take an
optional preallocated ``out`` (no allocation in a decode loop).
"""
from __future__ import annotations

from sparsellm._native import native
from sparsellm._torch import check_cuda_tensor, dtype_name, scratch, torch
from sparsellm.errors import InvalidArgument
from sparsellm.sparse_weight import SparseWeight


def _flatten(x, k: int):
    if x.dim() < 1 or x.shape[-1] != k:
        raise InvalidArgument(f"x has shape {tuple(x.shape)}; its last dimension must be in_features = {k}")
    n = x.numel() // k
    if n == 0:
        raise InvalidArgument(f"x has shape {tuple(x.shape)}: no rows to multiply")
    return n


def _output(out, x, m: int):
    shape = (*x.shape[:-1], m)
    if out is None:
        return torch().empty(shape, dtype=x.dtype, device=x.device)
    check_cuda_tensor("out", out, x.dtype, x.device)
    if tuple(out.shape) != shape:
        raise InvalidArgument(f"out has shape {tuple(out.shape)}, expected {shape}")
    return out


def _check_bias(bias, m: int, dtype, device):
    if bias is None:
        return 0
    check_cuda_tensor("bias", bias, dtype, device)
    if bias.shape != (m,):
        raise InvalidArgument(f"bias has shape {tuple(bias.shape)}, expected ({m},)")
    return bias.data_ptr()


def linear(x, weight, bias=None, out=None):
    """Dense Y = X · Wᵀ (+ bias) with cuBLASLt; W is [M, K]. Writes into ``out`` when given."""
    torch_ = torch()
    check_cuda_tensor("weight", weight)
    check_cuda_tensor("x", x, weight.dtype, weight.device)
    if weight.dim() != 2:
        raise InvalidArgument(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    m, k = weight.shape
    n = _flatten(x, k)
    bias_ptr = _check_bias(bias, m, weight.dtype, weight.device)
    y = _output(out, x, m)
    C = native()
    with torch_.cuda.device(x.device):
        ws = scratch("gemm", C.DENSE_GEMM_WORKSPACE_BYTES, x.device, zeroed=False)
        C.dense_gemm(x.data_ptr(), weight.data_ptr(), bias_ptr, y.data_ptr(), n, m, k, dtype_name(x.dtype),
                     ws.data_ptr(), ws.numel(), torch_.cuda.current_stream(x.device).cuda_stream)
    return y


def spmm(x, weight: SparseWeight, bias=None, out=None):
    """Sparse Y = X · Wᵀ (+ bias) with W encoded (SparseWeight, any format). Writes into ``out`` when given."""
    torch_ = torch()
    if not isinstance(weight, SparseWeight):
        raise InvalidArgument(f"weight must be a sparsellm SparseWeight, got {type(weight).__name__}")
    check_cuda_tensor("x", x, weight.dtype, weight.device)
    m, k = weight.shape
    n = _flatten(x, k)
    bias_ptr = _check_bias(bias, m, weight.dtype, weight.device)
    y = _output(out, x, m)
    C = native()
    blocks = weight.plan.shape[0]
    with torch_.cuda.device(x.device):
        nbytes = C.spmm_workspace_bytes(m, n, blocks)
        ws = scratch("spmm", nbytes, x.device, zeroed=True)
        C.spmm(weight.format, x.data_ptr(), bias_ptr, y.data_ptr(), n, weight.data.data_ptr(),
               weight.buffers["tile_offsets"].data_ptr(), m, k, dtype_name(x.dtype),
               weight.plan.data_ptr(), blocks, ws.data_ptr(), ws.numel(),
               torch_.cuda.current_stream(x.device).cuda_stream)
    return y
