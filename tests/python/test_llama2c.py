"""The llama2.c importer against an independent numpy forward pass on the raw file.

The reference below reads the checkpoint bytes itself and runs the llama2.c model
directly on them in float64: interleaved-pair RoPE, RMSNorm, grouped-query attention
and a SwiGLU feed-forward. It shares no code with the importer, so a wrong RoPE
permutation, a swapped projection or a wrong head grouping shows up as a logit gap.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsellm.convert.llama2c import load_llama2c, read_llama2c

from shared_models import STORIES260K, needs_stories260k



# ---------------------------------------------------------------- numpy reference

def reference_weights(path: Path) -> dict:
    """Parse the file by hand: header, then float32 arrays in llama2.c order."""
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    floats = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
    hd = dim // heads
    sizes = [
        ("emb", (abs(vocab), dim)), ("att_norm", (layers, dim)),
        ("wq", (layers, heads * hd, dim)), ("wk", (layers, kv_heads * hd, dim)),
        ("wv", (layers, kv_heads * hd, dim)), ("wo", (layers, dim, heads * hd)),
        ("ffn_norm", (layers, dim)), ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)), ("w3", (layers, hidden, dim)), ("final_norm", (dim,)),
    ]
    w, pos = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        w[name] = floats[pos : pos + n].reshape(shape)
        pos += n
    # the classifier is the embedding, or (negative vocab_size) the last vocab x dim floats
    w["cls"] = w["emb"] if vocab > 0 else floats[-abs(vocab) * dim :].reshape(abs(vocab), dim)
    w.update(layers=layers, heads=heads, kv_heads=kv_heads, hd=hd)
    return w


def rms_norm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g


def rope_interleaved(x: np.ndarray, hd: int) -> np.ndarray:
    """Rotate pairs (x[2i], x[2i+1]) of each head [T, heads*hd] by pos * 10000^(-2i/hd)."""
    t = x.shape[0]
    pairs = x.reshape(t, -1, hd // 2, 2)
    freq = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    angle = np.arange(t)[:, None] * freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    a, b = pairs[..., 0], pairs[..., 1]
    return np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def reference_logits(w: dict, tokens: list[int]) -> np.ndarray:
    """Logits [T, vocab] of the llama2.c model for one sequence."""
    t, hd, heads, kv_heads = len(tokens), w["hd"], w["heads"], w["kv_heads"]
    x = w["emb"][tokens]
    causal = np.triu(np.full((t, t), -np.inf), k=1)
    for l in range(w["layers"]):
        h = rms_norm(x, w["att_norm"][l])
        q = rope_interleaved(h @ w["wq"][l].T, hd).reshape(t, heads, hd)
        k = rope_interleaved(h @ w["wk"][l].T, hd).reshape(t, kv_heads, hd)
        v = (h @ w["wv"][l].T).reshape(t, kv_heads, hd)
        out = np.empty((t, heads, hd))
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(hd) + causal
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[:, head] = (p / p.sum(axis=1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(t, -1) @ w["wo"][l].T
        h = rms_norm(x, w["ffn_norm"][l])
        gate = h @ w["w1"][l].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["w3"][l].T)) @ w["w2"][l].T
    return rms_norm(x, w["final_norm"]) @ w["cls"].T


# ---------------------------------------------------------------- tests on the real file

@pytest.fixture(scope="module")
def model():
    return load_llama2c(STORIES260K)


@needs_stories260k
def test_header_and_config(model):
    header, arrays = read_llama2c(STORIES260K)
    assert (header.dim, header.hidden_dim, header.n_layers, header.n_heads, header.n_kv_heads) == (64, 172, 5, 8, 4)
    assert (header.vocab_size, header.max_seq_len, header.shared_classifier) == (512, 512, True)
    assert "freq_cis_real" in arrays and "wcls" not in arrays
    cfg = model.config
    assert cfg.tie_word_embeddings and cfg.num_key_value_heads == 4 and cfg.rms_norm_eps == 1e-5
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32


@needs_stories260k
def test_logits_match_reference(model):
    w = reference_weights(STORIES260K)
    rng = np.random.default_rng(20261127)
    sequences = [[1] + rng.integers(0, 512, size=n - 1).tolist() for n in (1, 7, 33, 96)]
    for tokens in sequences:
        expected = reference_logits(w, tokens)
        with torch.no_grad():
            got = model(torch.tensor([tokens])).logits[0].double().numpy()
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() < 1e-4 * scale, f"sequence of {len(tokens)} tokens"


@needs_stories260k
def test_greedy_decoding_matches_reference(model):
    w = reference_weights(STORIES260K)
    ref, hf = [1], [1]
    for _ in range(60):
        ref.append(int(reference_logits(w, ref)[-1].argmax()))
        with torch.no_grad():
            hf.append(int(model(torch.tensor([hf])).logits[0, -1].argmax()))
    assert hf == ref


@needs_stories260k
def test_wrong_rope_layout_is_detected():
    """Without the row permutation the model runs but its logits differ: the check has teeth."""
    from sparsellm.convert.llama2c import interleaved_to_half_split

    header, arrays = read_llama2c(STORIES260K)
    wq = torch.from_numpy(arrays["wq"][0])
    permuted = interleaved_to_half_split(wq, header.n_heads)
    assert not torch.equal(permuted, wq)
    assert torch.equal(torch.sort(permuted, dim=0).values, torch.sort(wq, dim=0).values)
    # head 0, half-split row i is interleaved row 2i; row head_dim/2 + i is row 2i + 1
    hd = header.head_dim
    assert torch.equal(permuted[1], wq[2]) and torch.equal(permuted[hd // 2], wq[1])


# ---------------------------------------------------------------- file validation

def write_checkpoint(path: Path, header: tuple[int, ...], nfloats: int, seed: int) -> None:
    values = np.random.default_rng(seed).standard_normal(nfloats).astype("<f4")
    path.write_bytes(struct.pack("<7i", *header) + values.tobytes())


def tiny_floats(dim=8, hidden=12, layers=2, heads=2, kv=1, vocab=16, seq=4, freq=True, shared=True) -> int:
    hd = dim // heads
    n = vocab * dim + 2 * layers * dim + layers * dim * (2 * heads * hd + 2 * kv * hd) + 3 * layers * dim * hidden + dim
    return n + (2 * seq * hd // 2 if freq else 0) + (0 if shared else vocab * dim)


@pytest.mark.parametrize("freq,shared", [(True, True), (False, True), (True, False), (False, False)])
def test_tiny_file_variants_load(tmp_path, freq, shared):
    path = tmp_path / "tiny.bin"
    vocab = 16 if shared else -16
    write_checkpoint(path, (8, 12, 2, 2, 1, vocab, 4), tiny_floats(freq=freq, shared=shared), seed=7)
    model = load_llama2c(path)
    header, arrays = read_llama2c(path)
    assert ("freq_cis_real" in arrays) == freq and ("wcls" in arrays) == (not shared)
    expected_head = arrays["token_embedding"] if shared else arrays["wcls"]
    assert np.array_equal(model.lm_head.weight.detach().numpy(), expected_head)
    tokens = [1, 5, 3, 9]
    expected = reference_logits(reference_weights(path), tokens)
    with torch.no_grad():
        got = model(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "short.bin"
    write_checkpoint(path, (8, 12, 2, 2, 1, 16, 4), tiny_floats() - 3, seed=8)
    with pytest.raises(ValueError, match=r"short\.bin.*bytes"):
        load_llama2c(path)


@pytest.mark.parametrize(
    "header,message",
    [
        ((8, 12, 0, 2, 1, 16, 4), "n_layers=0"),
        ((8, 12, 2, 3, 1, 16, 4), "not a multiple of n_heads"),
        ((8, 12, 2, 2, 3, 16, 4), "not a multiple of n_kv_heads"),
        ((6, 12, 2, 2, 1, 16, 4), "odd"),
    ],
)
def test_bad_header_is_rejected(tmp_path, header, message):
    path = tmp_path / "bad.bin"
    write_checkpoint(path, header, 1000, seed=9)
    with pytest.raises(ValueError, match=message):
        read_llama2c(path)


def test_missing_and_tiny_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        read_llama2c(tmp_path / "nowhere.bin")
    stub = tmp_path / "stub.bin"
    stub.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="too short"):
        read_llama2c(stub)


def test_non_finite_weights_are_rejected(tmp_path):
    path = tmp_path / "nan.bin"
    write_checkpoint(path, (8, 12, 2, 2, 1, 16, 4), tiny_floats(), seed=10)
    raw = bytearray(path.read_bytes())
    raw[28 + 4 * 100 : 28 + 4 * 101] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="NaN"):
        read_llama2c(path)
