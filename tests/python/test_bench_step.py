"""The decode-step breakdown (sparsellm/bench/step.py): every kernel is charged with what it
adds to the step's span in stream order, so overlapping (chained) kernels are not counted
twice and a step's costs sum to its span; linear kernels get their role within the layer."""
from __future__ import annotations

import pytest

from sparsellm.bench.step import group_of, step_costs, summarize

LLAMA_LAYER = ["rms_norm_kernel", "spmm_split24_kernel", "rope_kernel", "attention_chunk_kernel",
               "attention_merge_kernel", "spmm_split24_kernel", "rms_norm_kernel", "spmm_split24_kernel",
               "spmm_split24_kernel"]
TAIL = ["rms_norm_kernel", "nvjet_hsh_128x64", "cublasLt::splitKreduce_kernel", "sampling_kernel",
        "decode_bookkeeping_kernel"]


def forward(t0: float, layers: int, overlap: float) -> list[tuple[str, float, float]]:
    """One pass: 10 µs kernels, each starting `overlap` µs before the previous one ends. The
    output rows are gathered by the embedding kernel too."""
    names = ["embedding_kernel"] + LLAMA_LAYER * layers + ["embedding_kernel"] + TAIL
    out, t = [], t0
    for name in names:
        out.append((name, t, t + 10.0))
        t += 10.0 - overlap
    return out


@pytest.mark.parametrize("overlap", [0.0, 4.0])
def test_costs_sum_to_the_span_and_roles_follow_the_layer(overlap):
    layers = 2
    kernels = forward(0.0, layers, 0.0)  # the prefill, dropped
    for _ in range(3):
        kernels += forward(kernels[-1][2] + 5.0, layers, overlap)
    steps = step_costs(kernels, "llama", layers)
    assert len(steps) == 3
    per_pass = 2 + len(LLAMA_LAYER) * layers + len(TAIL)
    for i, rows in enumerate(steps):
        first = kernels[per_pass * (i + 1)]
        last = kernels[per_pass * (i + 2) - 1]
        previous_end = kernels[per_pass * (i + 1) - 1][2]
        assert sum(r["cost_us"] for r in rows) == pytest.approx(last[2] - previous_end)
        assert rows[0]["cost_us"] == pytest.approx(first[2] - previous_end)
        assert all(r["cost_us"] == pytest.approx(10.0 - overlap) for r in rows[1:])
        roles = [r["role"] for r in rows if r["role"]]
        assert roles == ["qkv", "o", "gate_up", "down"] * layers + ["lm_head", "lm_head"]
    table = {(k["group"], k["role"]): k for k in summarize(steps)}
    assert table[("spmm split24", "qkv")]["calls"] == layers
    assert table[("cublas gemm", "lm_head")]["calls"] == 2  # the GEMM and its split-K reduction
    assert table[("norm", "")]["calls"] == 2 * layers + 1
    assert table[("norm", "")]["cost_us"] == pytest.approx((2 * layers + 1) * (10.0 - overlap))
    assert table[("embedding", "")]["calls"] == 2


def test_unstacked_passes_keep_their_kernels_without_roles():
    kernels = forward(0.0, 1, 0.0) + forward(200.0, 1, 0.0)
    steps = step_costs(kernels, "llama", 2)  # 2 layers expected, 1 seen: roles cannot be named
    assert len(steps) == 1 and not any(r["role"] for r in steps[0])


def test_kernel_groups():
    assert group_of("void sparsellm::(anonymous namespace)::spmm_bitmap_kernel<__half, 16>") == "spmm bitmap"
    assert group_of("sm90_xmma_gemm_f16f16_f32") == "cublas gemm"
    assert group_of("nvjet_hsh_64x8_64x16_2x1_v_bz_TNN") == "cublas gemm"
    assert group_of("void sparsellm::rms_norm_kernel<__half>") == "norm"
    assert group_of("something_else") == "other"
