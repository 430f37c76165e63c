"""The C++ Linear layer (cpp/src/layers/linear.cpp) loaded from converted checkpoints.

Tiny random OPT models (awkward sizes: 160 and 520 are not multiples of the 128 × 64
tiles) are converted at sparsity 0, 0.6 and 0.9, stored as Tiled-CSL, bitmap and dense;
every decoder linear is loaded with ``_C.LinearLayer`` and run on random inputs, and
compared with ``x @ W.T + b`` in fp32, W decoded independently by the numpy reference
reader (``sparsellm.convert.dense_weights``).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparsellm.convert import convert_random, dense_weights  # noqa: E402

from gpu_reference import TOLERANCE, fp32_reference, rel_error  # noqa: E402

NS = [1, 5, 16, 33, 128, 300, 16, 64]  # after 300 rows (split 2:4: W expanded into the workspace) narrow ones again
MAX_N = 300
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
CASES = [  # (format, sparsity, dtype, tp)
    ("tiled_csl", 0.0, "fp16", 1),
    ("tiled_csl", 0.6, "fp16", 1),
    ("tiled_csl", 0.9, "fp16", 1),
    ("dense", 0.0, "fp16", 1),
    ("dense", 0.6, "fp16", 1),
    ("dense", 0.9, "fp16", 1),
    ("tiled_csl", 0.6, "bf16", 1),
    ("dense", 0.6, "bf16", 1),
    ("tiled_csl", 0.6, "fp16", 2),
    ("bitmap", 0.0, "fp16", 1),
    ("bitmap", 0.6, "fp16", 1),
    ("bitmap", 0.9, "bf16", 1),
    ("bitmap", 0.5, "fp16", 2),
    ("split24", 0.0, "fp16", 1),
    ("split24", 0.6, "fp16", 1),
    ("split24", 0.8, "bf16", 1),
    ("split24", 0.7, "fp16", 2),
]
TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _C():
    from sparsellm._native import native

    return native()


@pytest.fixture(scope="module")
def opt_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    config = transformers.OPTConfig(vocab_size=100, hidden_size=160, num_hidden_layers=2, ffn_dim=520,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=160)
    path.write_text(config.to_json_string())
    return path


def as_torch(array, dtype):
    """A dense weight from dense_weights (float16, or uint16 bits of bfloat16) as a CUDA tensor."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).cuda()
    return torch.from_numpy(array.copy()).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,sparsity,dtype_name,tp", CASES)
def test_linear_matches_torch(opt_config, tmp_path, fmt, sparsity, dtype_name, tp):
    C = _C()
    out = tmp_path / "ckpt"
    convert_random(opt_config, out, sparsity=sparsity, tp=tp, dtype=dtype_name, format=fmt, seed=7, progress=False)
    dtype = TORCH_DTYPE[dtype_name]
    gen = torch.Generator(device="cuda").manual_seed(int(sparsity * 10) + 100 * tp)
    stream = torch.cuda.current_stream().cuda_stream
    for rank in range(tp):
        weights = dense_weights(out, rank)
        info = C.inspect_checkpoint(str(out), rank)["tensors"]
        for layer in range(2):
            for linear in LINEARS:
                name = f"model.decoder.layers.{layer}.{linear}"
                w = as_torch(weights[f"{name}.weight"], dtype)
                bias_name = f"{name}.bias" if f"{name}.bias" in weights else ""  # row-parallel: rank 0 only
                b = as_torch(weights[bias_name], dtype) if bias_name else None
                zeros = float((w == 0).float().mean())
                assert zeros == pytest.approx(sparsity, abs=0.02), name
                lin = C.LinearLayer(str(out), rank, f"{name}.weight", bias_name, MAX_N)
                assert lin.format == fmt
                assert (lin.out_features, lin.in_features) == tuple(w.shape)
                stored = sum(c[2] for t in [f"{name}.weight", bias_name] if t for c in info[t]["components"].values())
                plan = C.spmm_plan_blocks() * 24 if fmt != "dense" else 0  # six int32 per block
                assert lin.device_bytes == stored + plan
                for n in NS:
                    x = torch.randn(n, w.shape[1], generator=gen, device="cuda").to(dtype)
                    y = torch.full((n, w.shape[0]), float("nan"), dtype=dtype, device="cuda")  # poison
                    lin.forward(x.data_ptr(), y.data_ptr(), n, stream)
                    torch.cuda.synchronize()
                    assert torch.isfinite(y).all(), f"{name} rank {rank} n={n}: unwritten outputs"
                    ref = fp32_reference(x, w, b)
                    err = rel_error(y, ref)
                    torch_err = rel_error(torch.nn.functional.linear(x, w, b), ref)
                    assert err < TOLERANCE[dtype], f"{name} rank {rank} n={n}: error {err:.2e}"
                    assert err <= 2 * torch_err + 1e-4, f"{name} rank {rank} n={n}: {err:.2e} vs torch {torch_err:.2e}"


@pytest.mark.gpu
def test_linear_repeated_calls_and_limits(opt_config, tmp_path):
    """The workspace is reused call after call (the SpMM leaves it zeroed); n beyond max_n is refused."""
    C = _C()
    out = tmp_path / "ckpt"
    convert_random(opt_config, out, sparsity=0.7, format="tiled_csl", seed=9, progress=False)
    name = "model.decoder.layers.1.fc2"
    weights = dense_weights(out, 0)
    w, b = as_torch(weights[f"{name}.weight"], torch.float16), as_torch(weights[f"{name}.bias"], torch.float16)
    lin = C.LinearLayer(str(out), 0, f"{name}.weight", f"{name}.bias", 64)
    side = torch.cuda.Stream()
    gen = torch.Generator(device="cuda").manual_seed(3)
    with torch.cuda.stream(side):
        for n in [64, 1, 64, 17, 64]:
            x = torch.randn(n, w.shape[1], generator=gen, device="cuda").half()
            y = torch.empty(n, w.shape[0], dtype=torch.half, device="cuda")
            lin.forward(x.data_ptr(), y.data_ptr(), n, side.cuda_stream)
            side.synchronize()
            assert rel_error(y, fp32_reference(x, w, b)) < TOLERANCE[torch.float16], n
    x = torch.zeros(65, w.shape[1], dtype=torch.half, device="cuda")
    with pytest.raises(C.InvalidArgument, match="n = 65 exceeds max_n = 64"):
        lin.forward(x.data_ptr(), x.data_ptr(), 65, 0)
    with pytest.raises(C.InvalidArgument, match="n must be positive"):
        lin.forward(x.data_ptr(), x.data_ptr(), 0, 0)


@pytest.mark.gpu
def test_out_of_memory_is_typed_and_recoverable(opt_config, tmp_path):
    """A workspace far beyond the GPU: OutOfMemory naming it with sizes; the GPU works afterwards."""
    C = _C()
    out = tmp_path / "ckpt"
    convert_random(opt_config, out, sparsity=0.7, format="tiled_csl", seed=9, progress=False)
    name = "model.decoder.layers.0.fc1.weight"
    with pytest.raises(C.OutOfMemory, match=r"out of GPU memory allocating \d+ bytes .* for SpMM workspace: .* free of"):
        C.LinearLayer(str(out), 0, name, "", 10**9)
    assert issubclass(C.OutOfMemory, MemoryError)
    lin = C.LinearLayer(str(out), 0, name, "", 8)
    x = torch.randn(8, lin.in_features, device="cuda").half()
    y = torch.empty(8, lin.out_features, device="cuda").half()
    lin.forward(x.data_ptr(), y.data_ptr(), 8, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    w = as_torch(dense_weights(out, 0)[name], torch.float16)
    assert rel_error(y, fp32_reference(x, w)) < TOLERANCE[torch.float16]
