"""Importer of llama2.c checkpoints (the "legacy" export, version 0) into transformers.

File layout, little-endian:

    header: 7 x int32 = dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len
            (vocab_size > 0: the classifier shares the token embedding; < 0: it does not)
    float32 arrays, each matrix in nn.Linear order [out, in], head_dim = dim / n_heads:
        token_embedding [vocab, dim]
        rms_att [n_layers, dim]
        wq [n_layers, n_heads*head_dim, dim]      wk, wv [n_layers, n_kv_heads*head_dim, dim]
        wo [n_layers, dim, n_heads*head_dim]
        rms_ffn [n_layers, dim]
        w1 (gate), w3 (up) [n_layers, hidden_dim, dim]   w2 (down) [n_layers, dim, hidden_dim]
        rms_final [dim]
        freq_cis_real, freq_cis_imag [max_seq_len, head_dim/2]   (optional; recomputable)
        wcls [vocab, dim]                                          (only when not shared)

The model: x <- x + wo . attn(rope(wq . n(x)), rope(wk . n(x)), wv . n(x)) and
x <- x + w2 . (silu(w1 . n(x)) * (w3 . n(x))), with n = RMSNorm (eps 1e-5), then the
final RMSNorm and the classifier. Query head h uses key/value head h // (n_heads/n_kv_heads).

RoPE layout. llama2.c rotates interleaved pairs (x[2i], x[2i+1]) of each head by
the angle pos * theta^(-2i/head_dim); transformers' Llama rotates (x[i], x[i + head_dim/2])
by the same angle. Since q.k is invariant under permuting the components of both q and
k alike, reordering the rows of wq and wk within each head as
[0, 2, 4, ..., head_dim-2, 1, 3, ..., head_dim-1] turns one layout into the other
exactly; wv and wo are unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
HEADER_BYTES = 4 * len(HEADER_FIELDS)
RMS_NORM_EPS = 1e-5
ROPE_THETA = 10000.0
BOS_ID, EOS_ID = 1, 2


@dataclass(frozen=True)
class Llama2cHeader:
    """The header of a llama2.c checkpoint (``vocab_size`` made positive, the sign kept as ``shared_classifier``)."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def array_shapes(self, with_freq_cis: bool) -> dict[str, tuple[int, ...]]:
        """Shapes of the float32 arrays after the header, in file order."""
        layers, dim, hidden, vocab = self.n_layers, self.dim, self.hidden_dim, self.vocab_size
        q_rows, kv_rows = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embedding": (vocab, dim),
            "rms_att": (layers, dim),
            "wq": (layers, q_rows, dim),
            "wk": (layers, kv_rows, dim),
            "wv": (layers, kv_rows, dim),
            "wo": (layers, dim, q_rows),
            "rms_ffn": (layers, dim),
            "w1": (layers, hidden, dim),
            "w2": (layers, dim, hidden),
            "w3": (layers, hidden, dim),
            "rms_final": (dim,),
        }
        if with_freq_cis:
            shapes["freq_cis_real"] = (self.max_seq_len, self.head_dim // 2)
            shapes["freq_cis_imag"] = (self.max_seq_len, self.head_dim // 2)
        if not self.shared_classifier:
            shapes["wcls"] = (vocab, dim)
        return shapes

    def file_size(self, with_freq_cis: bool) -> int:
        """Bytes a file with this header must have."""
        return HEADER_BYTES + 4 * sum(int(np.prod(s)) for s in self.array_shapes(with_freq_cis).values())


def _parse_header(values: list[int], path: Path) -> Llama2cHeader:
    fields = dict(zip(HEADER_FIELDS, values))
    vocab = fields["vocab_size"]
    header = Llama2cHeader(**{**fields, "vocab_size": abs(vocab)}, shared_classifier=vocab > 0)
    bad = [f"{name}={value}" for name, value in fields.items() if (abs(value) if name == "vocab_size" else value) <= 0]
    if bad:
        raise ValueError(f"{path}: not a llama2.c checkpoint, header has non-positive {', '.join(bad)}")
    problems = []
    if header.dim % header.n_heads:
        problems.append(f"dim {header.dim} is not a multiple of n_heads {header.n_heads}")
    elif header.head_dim % 2:
        problems.append(f"head_dim {header.head_dim} is odd (RoPE needs pairs)")
    if header.n_heads % header.n_kv_heads:
        problems.append(f"n_heads {header.n_heads} is not a multiple of n_kv_heads {header.n_kv_heads}")
    if problems:
        raise ValueError(f"{path}: inconsistent llama2.c header: {'; '.join(problems)}")
    return header


def read_llama2c(path: str | os.PathLike) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """Read and check a llama2.c checkpoint; returns its header and float32 arrays in file layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"llama2.c checkpoint not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is too short for a llama2.c header ({HEADER_BYTES} bytes)")
    raw_header = np.fromfile(path, dtype="<i4", count=len(HEADER_FIELDS))
    header = _parse_header([int(v) for v in raw_header], path)
    sizes = {flag: header.file_size(flag) for flag in (True, False)}
    if size == sizes[True]:
        with_freq_cis = True
    elif size == sizes[False]:
        with_freq_cis = False
    else:
        raise ValueError(
            f"{path}: file has {size} bytes but its header ({header}) implies {sizes[True]} bytes "
            f"with the freq_cis arrays or {sizes[False]} without"
        )
    data = np.memmap(path, dtype="<f4", mode="r", offset=HEADER_BYTES)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in header.array_shapes(with_freq_cis).items():
        count = int(np.prod(shape))
        arrays[name] = np.array(data[offset : offset + count], dtype=np.float32).reshape(shape)
        offset += count
        if not np.isfinite(arrays[name]).all():
            raise ValueError(f"{path}: array {name} contains NaN or infinite values")
    return header, arrays


def interleaved_to_half_split(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection [n_heads*head_dim, in] from interleaved-pair to half-split RoPE."""
    head_dim = weight.shape[0] // n_heads
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    rows = (torch.arange(n_heads)[:, None] * head_dim + order[None, :]).reshape(-1)
    return weight[rows]


def llama2c_config(header: Llama2cHeader):
    """The transformers LlamaConfig of a llama2.c model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_dim,
        hidden_act="silu",
        max_position_embeddings=header.max_seq_len,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=header.shared_classifier,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def load_llama2c(path: str | os.PathLike):
    """Load a llama2.c checkpoint as a float32 ``transformers.LlamaForCausalLM`` in eval mode."""
    from transformers import LlamaForCausalLM

    header, arrays = read_llama2c(path)
    t = {name: torch.from_numpy(array) for name, array in arrays.items()}
    state = {
        "model.embed_tokens.weight": t["token_embedding"],
        "model.norm.weight": t["rms_final"],
        "lm_head.weight": t["token_embedding"] if header.shared_classifier else t["wcls"],
    }
    for i in range(header.n_layers):
        prefix = f"model.layers.{i}"
        state.update({
            f"{prefix}.input_layernorm.weight": t["rms_att"][i],
            f"{prefix}.self_attn.q_proj.weight": interleaved_to_half_split(t["wq"][i], header.n_heads),
            f"{prefix}.self_attn.k_proj.weight": interleaved_to_half_split(t["wk"][i], header.n_kv_heads),
            f"{prefix}.self_attn.v_proj.weight": t["wv"][i],
            f"{prefix}.self_attn.o_proj.weight": t["wo"][i],
            f"{prefix}.post_attention_layernorm.weight": t["rms_ffn"][i],
            f"{prefix}.mlp.gate_proj.weight": t["w1"][i],
            f"{prefix}.mlp.down_proj.weight": t["w2"][i],
            f"{prefix}.mlp.up_proj.weight": t["w3"][i],
        })
    model = LlamaForCausalLM(llama2c_config(header)).float()
    expected = set(model.state_dict())
    if expected != set(state):
        raise RuntimeError(
            f"llama2.c import does not cover transformers' Llama parameters: missing "
            f"{sorted(expected - set(state))}, extra {sorted(set(state) - expected)}"
        )
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            parameter.copy_(state[name])
    if header.shared_classifier and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("transformers did not tie the classifier to the token embedding")
    return model.eval()
