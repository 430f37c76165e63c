"""Pruning methods against independent reference implementations, and the model driver.

References here are written from the formulas, in float64 numpy or torch, without the
package's mask-selection code: a per-row argsort for magnitude and Wanda, and for
SparseGPT a column-by-column optimal-brain-surgeon sweep that inverts the remaining
Hessian explicitly at every column (no Cholesky factor, no blocks, no lazy updates).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from sparsellm.prune import (
    ColumnNormAccumulator,
    HessianAccumulator,
    load_calibration_ids,
    load_sparsity_map,
    magnitude_prune,
    outlier_ratio,
    owl_layer_sparsity,
    prune_model,
    prune_weight,
    sample_sequences,
    sparsegpt_prune,
    wanda_prune,
)


def k_pruned(n: int, s: float) -> int:
    return int(math.floor(s * n + 0.5))


def random_weight(rows: int, cols: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g).to(dtype)


def correlated_inputs(tokens: int, cols: int, seed: int, rank: int = 6, noise: float = 0.1) -> torch.Tensor:
    """X [tokens, cols] with a random low-rank-plus-noise covariance: strongly correlated columns."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(rank, cols, generator=g) * torch.rand(cols, generator=g) * 3
    return torch.randn(tokens, rank, generator=g) @ mixing + noise * torch.randn(tokens, cols, generator=g)


def accumulate(cls, x: torch.Tensor, batches: int = 3):
    acc = cls(x.shape[-1])
    for part in x.chunk(batches):
        acc.add(part)
    return acc


def reference_row_mask(scores: np.ndarray, s: float) -> np.ndarray:
    """Prune the k lowest scores of each row; ties to the lower column."""
    mask = np.ones(scores.shape, dtype=bool)
    k = k_pruned(scores.shape[1], s)
    for i, row in enumerate(scores):
        mask[i, np.argsort(row, kind="stable")[:k]] = False
    return mask


def reference_nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    mask = np.ones(scores.shape, dtype=bool)
    for i in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            mask[i, g + np.argsort(scores[i, g : g + m], kind="stable")[: m - n]] = False
    return mask


def reference_sparsegpt(w, x, s, blocksize, nm=None, percdamp=0.01):
    """Column-by-column OBS in float64 with explicit inverses of the remaining Hessian."""
    w = w.double().numpy().copy()
    x = x.double().numpy()
    h = 2 * x.T @ x / x.shape[0]
    h += percdamp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    rows, cols = w.shape
    mask = np.ones(w.shape, dtype=bool)

    def saliency(c0, c1):
        return np.stack([w[:, c] ** 2 / np.linalg.inv(h[c:, c:])[0, 0] for c in range(c0, c1)], axis=1)

    for j in range(cols):
        if nm is None and j % blocksize == 0:
            end = min(j + blocksize, cols)
            sal = saliency(j, end)
            k = k_pruned(end, s) - k_pruned(j, s)
            for i in range(rows):
                mask[i, j + np.argsort(sal[i], kind="stable")[:k]] = False
        if nm is not None and j % nm[1] == 0:
            mask[:, j : j + nm[1]] = reference_nm_mask(saliency(j, j + nm[1]), *nm)
        hinv = np.linalg.inv(h[j:, j:])
        q = np.where(mask[:, j], w[:, j], 0.0)
        w[:, j:] -= np.outer((w[:, j] - q) / hinv[0, 0], hinv[0, :])
    return np.where(mask, w, 0.0), mask


# ---------------------------------------------------------------- exact sparsity

SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.9]


def run_method(method: str, w: torch.Tensor, x: torch.Tensor, s=None, nm=None):
    if method == "magnitude":
        return magnitude_prune(w, s, nm=nm)
    if method == "wanda":
        return wanda_prune(w, accumulate(ColumnNormAccumulator, x), s, nm=nm)
    return sparsegpt_prune(w, accumulate(HessianAccumulator, x), s, nm=nm, blocksize=16)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("s", SPARSITIES)
def test_exact_row_sparsity(method, s):
    w = random_weight(24, 52, seed=11)
    x = correlated_inputs(300, 52, seed=12)
    result = run_method(method, w, x, s)
    expected = 52 - k_pruned(52, s)
    assert (result.mask.sum(dim=1) == expected).all()
    assert torch.equal(result.weight != 0, result.mask)
    assert result.weight.dtype == w.dtype and result.mask.dtype == torch.bool


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), "4:8"])
def test_exact_nm_pattern(method, nm):
    w = random_weight(16, 48, seed=13)
    x = correlated_inputs(200, 48, seed=14)
    result = run_method(method, w, x, nm=nm)
    n, m = (int(v) for v in nm.split(":")) if isinstance(nm, str) else nm
    groups = result.mask.reshape(16, 48 // m, m).sum(dim=2)
    assert (groups == n).all()
    assert torch.equal(result.weight != 0, result.mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_low_precision_keeps_dtype_and_values(method, dtype):
    w = random_weight(8, 32, seed=15, dtype=dtype)
    x = correlated_inputs(100, 32, seed=16).to(dtype)
    result = run_method(method, w, x, 0.5)
    assert result.weight.dtype == dtype
    assert (result.mask.sum(dim=1) == 16).all()
    if method != "sparsegpt":  # no weight update: kept weights are bit-identical
        assert torch.equal(result.weight[result.mask], w[result.mask])


# ---------------------------------------------------------------- against references

@pytest.mark.parametrize("s", [0.3, 0.6, 0.9])
def test_magnitude_matches_reference(s):
    w = random_weight(10, 37, seed=21)
    result = magnitude_prune(w, s)
    expected = reference_row_mask(np.abs(w.numpy()), s)
    assert np.array_equal(result.mask.numpy(), expected)
    assert torch.equal(result.weight, w * result.mask)


def test_magnitude_layer_scope():
    w = random_weight(12, 20, seed=22)
    result = magnitude_prune(w, 0.65, scope="layer")
    assert int((~result.mask).sum()) == k_pruned(240, 0.65)
    kept, dropped = w.abs()[result.mask], w.abs()[~result.mask]
    assert kept.min() >= dropped.max()
    assert result.mask.sum(dim=1).unique().numel() > 1  # rows differ: not per-row selection


@pytest.mark.parametrize("s", [0.5, 0.8])
def test_wanda_matches_reference(s):
    w = random_weight(14, 40, seed=31)
    x = correlated_inputs(256, 40, seed=32) * torch.linspace(0.1, 5, 40)
    result = wanda_prune(w, accumulate(ColumnNormAccumulator, x, batches=4), s)
    xn = x.double().numpy()
    scores = np.abs(w.double().numpy()) * np.sqrt((xn**2).sum(axis=0))[None, :]
    expected = reference_row_mask(scores, s)
    assert np.array_equal(result.mask.numpy(), expected)
    assert not np.array_equal(expected, reference_row_mask(np.abs(w.numpy()), s))  # activations matter
    # the Hessian accumulator and an explicit norm vector give the same scores
    same = wanda_prune(w, accumulate(HessianAccumulator, x), s)
    assert torch.equal(same.mask, result.mask)
    explicit = wanda_prune(w, torch.from_numpy(np.sqrt((xn**2).sum(axis=0))).float(), s)
    assert torch.equal(explicit.mask, result.mask)


def test_wanda_nm_matches_reference():
    w = random_weight(9, 24, seed=33)
    x = correlated_inputs(128, 24, seed=34)
    result = wanda_prune(w, accumulate(ColumnNormAccumulator, x), nm=(2, 4))
    scores = np.abs(w.double().numpy()) * np.sqrt((x.double().numpy() ** 2).sum(axis=0))
    assert np.array_equal(result.mask.numpy(), reference_nm_mask(scores, 2, 4))


@pytest.mark.parametrize("blocksize", [1, 7, 16, 40, 128])
@pytest.mark.parametrize("s", [0.5, 0.7])
def test_sparsegpt_matches_column_by_column_reference(blocksize, s):
    w = random_weight(12, 40, seed=41)
    x = correlated_inputs(400, 40, seed=42, rank=10, noise=0.3)
    result = sparsegpt_prune(w, accumulate(HessianAccumulator, x), s, blocksize=blocksize)
    ref_w, ref_mask = reference_sparsegpt(w, x, s, blocksize)
    assert np.array_equal(result.mask.numpy(), ref_mask)
    scale = np.abs(ref_w).max()
    assert np.abs(result.weight.double().numpy() - ref_w).max() < 2e-4 * scale


@pytest.mark.parametrize("blocksize", [4, 8, 12])
def test_sparsegpt_nm_matches_reference(blocksize):
    w = random_weight(10, 24, seed=43)
    x = correlated_inputs(300, 24, seed=44, rank=8, noise=0.3)
    result = sparsegpt_prune(w, accumulate(HessianAccumulator, x), nm=(2, 4), blocksize=blocksize)
    ref_w, ref_mask = reference_sparsegpt(w, x, None, blocksize, nm=(2, 4))
    assert np.array_equal(result.mask.numpy(), ref_mask)
    assert np.abs(result.weight.double().numpy() - ref_w).max() < 2e-4 * np.abs(ref_w).max()


def test_sparsegpt_updates_the_kept_weights():
    w = random_weight(8, 32, seed=45)
    x = correlated_inputs(200, 32, seed=46)
    result = sparsegpt_prune(w, accumulate(HessianAccumulator, x), 0.5)
    assert not torch.allclose(result.weight[result.mask], w[result.mask])


@pytest.mark.parametrize("s", [0.5, 0.7])
def test_reconstruction_error_ordering(s):
    """On correlated inputs SparseGPT reconstructs W X^T better than Wanda, and Wanda better than magnitude."""
    w = random_weight(48, 64, seed=51)
    x = correlated_inputs(1024, 64, seed=52, rank=6, noise=0.05)

    def error(pruned):
        return float(torch.linalg.norm((w - pruned) @ x.T))

    errors = {
        "magnitude": error(magnitude_prune(w, s).weight),
        "wanda": error(wanda_prune(w, accumulate(ColumnNormAccumulator, x), s).weight),
        "sparsegpt": error(sparsegpt_prune(w, accumulate(HessianAccumulator, x), s).weight),
    }
    assert errors["sparsegpt"] < 0.5 * errors["wanda"], errors
    assert errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_dead_input_columns():
    w = random_weight(8, 24, seed=53)
    x = correlated_inputs(100, 24, seed=54)
    x[:, [3, 10, 11]] = 0.0
    result = sparsegpt_prune(w, accumulate(HessianAccumulator, x), 0.5, blocksize=8)
    assert torch.isfinite(result.weight).all()
    assert (result.mask.sum(dim=1) == 12).all()
    assert not result.mask[:, [3, 10, 11]].any()  # free to prune: chosen first


def test_accumulators_add_up_batches():
    x = correlated_inputs(90, 12, seed=55).reshape(3, 30, 12)  # [batch, seq, in]
    h = HessianAccumulator(12)
    c = ColumnNormAccumulator(12)
    for sample in x:
        h.add(sample)
        c.add(sample)
    flat = x.reshape(-1, 12).double()
    assert h.ntokens == c.ntokens == 90
    torch.testing.assert_close(h.hessian().double(), 2 * flat.T @ flat / 90, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.column_norms().double(), flat.norm(dim=0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- OWL

def test_owl_sparsities_average_to_target():
    rng = np.random.default_rng(61)
    ratios = rng.uniform(0.001, 0.05, size=12).tolist()
    for target in (0.5, 0.7):
        values = owl_layer_sparsity(ratios, target, lam=0.08)
        assert abs(np.mean(values) - target) < 1e-9
        assert max(values) - min(values) == pytest.approx(0.16)
        order = np.argsort(ratios)  # more outliers -> lower sparsity
        assert np.all(np.diff(np.asarray(values)[order]) <= 1e-12)
    assert owl_layer_sparsity([0.02, 0.02, 0.02], 0.6) == pytest.approx([0.6] * 3)


def test_owl_clips_to_range():
    values = owl_layer_sparsity([0.0, 0.5, 1.0], 0.01, lam=0.08)
    assert min(values) == 0.0 and max(values) <= 0.99


def test_outlier_ratio_counts_scores_above_m_times_mean():
    g = torch.Generator().manual_seed(62)
    a, b = torch.rand(10, 20, generator=g), torch.rand(30, generator=g) * 10
    everything = torch.cat([a.reshape(-1), b])
    expected = float((everything > 3 * everything.mean()).float().mean())
    assert outlier_ratio([a, b], threshold=3.0) == pytest.approx(expected)
    assert expected > 0


# ---------------------------------------------------------------- argument validation

@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity_is_rejected(bad):
    w = random_weight(4, 8, seed=71)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        magnitude_prune(w, bad)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        wanda_prune(w, accumulate(ColumnNormAccumulator, correlated_inputs(16, 8, seed=72)), bad)


def test_shape_mismatches_are_rejected():
    w = random_weight(4, 8, seed=73)
    x9 = correlated_inputs(16, 9, seed=74)
    with pytest.raises(ValueError, match="8"):
        wanda_prune(w, accumulate(ColumnNormAccumulator, x9), 0.5)
    with pytest.raises(ValueError, match="8"):
        sparsegpt_prune(w, accumulate(HessianAccumulator, x9), 0.5)
    with pytest.raises(ValueError, match=r"\[9\]|\[\.\.\., 9\]"):
        HessianAccumulator(9).add(correlated_inputs(4, 8, seed=75))
    with pytest.raises(ValueError, match="2-D"):
        magnitude_prune(torch.randn(8), 0.5)
    with pytest.raises(ValueError, match="no calibration tokens"):
        wanda_prune(w, ColumnNormAccumulator(8), 0.5)


def test_bad_patterns_and_methods_are_rejected():
    w = random_weight(4, 10, seed=76)
    with pytest.raises(ValueError, match="multiple of 4"):
        magnitude_prune(w, nm=(2, 4))
    with pytest.raises(ValueError, match="contradicts"):
        magnitude_prune(random_weight(4, 8, seed=77), 0.7, nm="2:4")
    with pytest.raises(ValueError, match="1 <= n < m"):
        magnitude_prune(w, nm=(4, 4))
    with pytest.raises(ValueError, match="unknown pruning method 'obs'"):
        prune_weight(w, "obs", 0.5)
    with pytest.raises(ValueError, match="needs calibration statistics"):
        prune_weight(w, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        magnitude_prune(torch.full((2, 4), float("nan")), 0.5)


# ---------------------------------------------------------------- model driver

def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_opt(seed: int):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32,
    )
    return OPTForCausalLM(config).eval()


def calibration(seed: int, nsamples: int = 6, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(0, 64, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sequential_reference(model, ids, method, sparsity):
    """Prune layer by layer, collecting each layer's inputs by running the whole (partly pruned) model."""
    base = model.model.decoder if hasattr(model.model, "decoder") else model.model
    for layer in base.layers:
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        accs = [(HessianAccumulator if method == "sparsegpt" else ColumnNormAccumulator)(m.in_features) for m in linears]
        handles = [m.register_forward_hook(lambda mod, a, out, acc=acc: acc.add(a[0])) for m, acc in zip(linears, accs)]
        model(ids, use_cache=False)
        for h in handles:
            h.remove()
        for m, acc in zip(linears, accs):
            m.weight.copy_(prune_weight(m.weight, method, sparsity, acc).weight)


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_model_matches_sequential_reference(family, method):
    make = tiny_llama if family == "llama" else tiny_opt
    model, reference = make(81), make(81)
    ids = calibration(82)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, ids, method=method, sparsity=0.6, batch_size=4)
    sequential_reference(reference, ids, method, 0.6)
    pruned = model.state_dict()
    names = {t.name + ".weight" for t in report.tensors}
    expected_names = {k for k in dense if k.endswith("proj.weight") or k.endswith(("fc1.weight", "fc2.weight"))}
    expected_names = {k for k in expected_names if ".layers." in k}
    assert names == expected_names
    for key, value in pruned.items():
        if key in names:
            assert torch.equal(value != 0, reference.state_dict()[key] != 0), key
            torch.testing.assert_close(value, reference.state_dict()[key], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(value, dense[key]), f"{key} must not change"
    for t in report.tensors:
        assert t.sparsity == pytest.approx(k_pruned(t.shape[1], 0.6) / t.shape[1])
    assert report.to_dict()["method"] == method


def test_prune_model_magnitude_needs_no_data_and_nm():
    model = tiny_llama(83)
    report = prune_model(model, None, method="magnitude", sparsity=0.5)
    assert all(t.sparsity == 0.5 for t in report.tensors)
    model = tiny_llama(84)
    report = prune_model(model, calibration(85), method="wanda", sparsity=None, nm="2:4")
    q = model.model.layers[1].self_attn.q_proj.weight
    assert ((q != 0).reshape(q.shape[0], -1, 4).sum(dim=2) == 2).all()
    assert report.nm == (2, 4)


def test_prune_model_owl_varies_by_layer():
    model = tiny_llama(86)
    with torch.no_grad():  # give layer 1 a few outlier input features
        model.model.layers[1].input_layernorm.weight[:3] *= 40
    report = prune_model(model, calibration(87), method="wanda", sparsity=0.6, layer_sparsity="owl")
    values = report.layer_sparsity
    assert np.mean(values) == pytest.approx(0.6)
    assert values[1] == min(values) and max(values) - min(values) == pytest.approx(0.16)
    for t in report.tensors:
        layer = int(t.name.split(".")[2])
        assert t.target_sparsity == pytest.approx(values[layer])
        assert t.sparsity == pytest.approx(k_pruned(t.shape[1], values[layer]) / t.shape[1])


def test_prune_model_sparsity_map_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0": 0.3, "model.layers.2.mlp.down_proj.weight": 0.8}))
    model = tiny_llama(88)
    report = prune_model(model, calibration(89), method="sparsegpt", sparsity=0.5, layer_sparsity=path)
    targets = {t.name: t.target_sparsity for t in report.tensors}
    assert targets["model.layers.0.self_attn.q_proj"] == 0.3
    assert targets["model.layers.2.mlp.down_proj"] == 0.8
    assert targets["model.layers.1.mlp.up_proj"] == 0.5
    assert load_sparsity_map(path) == {0: 0.3, "model.layers.2.mlp.down_proj": 0.8}


def test_prune_model_rejects_bad_arguments(tmp_path):
    model = tiny_llama(90)
    with pytest.raises(ValueError, match="needs calibration token ids"):
        prune_model(model, None, method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prune_model(model, torch.full((2, 4), 64), method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="1.2"):
        prune_model(model, calibration(91), method="wanda", sparsity=1.2)
    with pytest.raises(ValueError, match="model.layers.7"):
        prune_model(model, calibration(91), sparsity=0.5, layer_sparsity={"model.layers.7.mlp.up_proj": 0.5})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        prune_model(model, calibration(91), sparsity=0.5, layer_sparsity=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unsupported model"):
        prune_model(nn.Linear(4, 4), None, method="magnitude")


# ---------------------------------------------------------------- calibration ids

@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_calibration_files_round_trip(tmp_path, suffix):
    ids = calibration(92, nsamples=3, seqlen=5)
    path = tmp_path / f"calib{suffix}"
    if suffix == ".npy":
        np.save(path, ids.numpy())
    elif suffix == ".pt":
        torch.save(ids, path)
    else:
        from safetensors.torch import save_file

        save_file({"input_ids": ids}, str(path))
    assert torch.equal(load_calibration_ids(path, vocab_size=64), ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        load_calibration_ids(path, vocab_size=10)


def test_sampled_calibration_is_seeded():
    model = tiny_llama(93)
    a = sample_sequences(model, 3, 12, seed=1, batch_size=2)
    b = sample_sequences(model, 3, 12, seed=1, batch_size=2)
    c = sample_sequences(model, 3, 12, seed=2, batch_size=2)
    assert a.shape == (3, 12) and (a[:, 0] == 1).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("values", ["integers", "zeros", "fp16", "continuous"])
def test_row_selection_breaks_ties_by_index(values):
    """The linear-time selection drops exactly what a stable sort would, ties included."""
    from sparsellm.prune.selection import lowest_per_row

    rng = np.random.default_rng(17)
    for rows, cols in [(1, 1), (3, 7), (16, 64), (40, 257)]:
        scores = {"integers": rng.integers(0, 4, (rows, cols)).astype(np.float32),
                  "zeros": np.zeros((rows, cols), np.float32),
                  "fp16": np.abs(rng.standard_normal((rows, cols))).astype(np.float16).astype(np.float32).round(1),
                  "continuous": np.abs(rng.standard_normal((rows, cols))).astype(np.float32)}[values]
        for s in (0.0, 0.3, 0.5, 0.9, 1.0):
            got = lowest_per_row(torch.from_numpy(scores), k_pruned(cols, s)).numpy()
            assert np.array_equal(got, reference_row_mask(scores, s)), (rows, cols, s)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_rejected(bad):
    from sparsellm.prune.selection import check_weight

    w = torch.randn(8, 16)
    w[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_weight(w)
    check_weight(torch.full((8, 16), 3e38))  # finite values whose sum overflows are fine
