"""Validation of torch tensors at the API edge and per-stream scratch buffers."""
from __future__ import annotations

from sparsellm.errors import InvalidArgument

def torch():
    try:
        import torch as _torch
    except ImportError as exc:  # pragma: no cover - torch is a declared extra
        raise ImportError("sparsellm.ops and sparsellm.nn need PyTorch: pip install torch") from exc
    return _torch


def dtype_name(t) -> str:
    torch_ = torch()
    if t == torch_.float16:
        return "float16"
    if t == torch_.bfloat16:
        return "bfloat16"
    raise InvalidArgument(f"unsupported dtype {t}: sparsellm computes in torch.float16 or torch.bfloat16")


def check_cuda_tensor(name: str, t, dtype=None, device=None) -> None:
    torch_ = torch()
    if not isinstance(t, torch_.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cuda:
        raise InvalidArgument(f"{name} must be on a CUDA device, got {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise InvalidArgument(f"{name} has dtype {t.dtype}, expected {dtype}")
    if device is not None and t.device != device:
        raise InvalidArgument(f"{name} is on {t.device}, expected {device}")
    if not t.is_contiguous():
        raise InvalidArgument(f"{name} must be contiguous (call .contiguous())")


_scratch: dict = {}


def scratch(kind: str, nbytes: int, device, zeroed: bool):
    """A byte buffer of at least ``nbytes`` for (kind, device, current stream),
    grown when needed and kept: no allocation once sizes stop growing. A zeroed
    buffer is zero-filled when (re)allocated; users must leave it zero."""
    torch_ = torch()
    stream = torch_.cuda.current_stream(device).cuda_stream
    key = (kind, device, stream)
    buf = _scratch.get(key)
    if buf is None or buf.numel() < nbytes:
        size = max(nbytes, 256)
        buf = torch_.zeros(size, dtype=torch_.uint8, device=device) if zeroed else torch_.empty(
            size, dtype=torch_.uint8, device=device
        )
        _scratch[key] = buf
    return buf
