"""Random-weight models of real shapes, generated one tensor at a time.

``random_model_config(spec)`` gives the transformers config of a named shape
(``NAMED_CONFIGS``: the published sizes of OPT and Llama 2) or of a config.json file.
``RandomWeights`` draws each tensor when asked, from its own generator seeded by
(seed, CRC-32 of the tensor name), so a tensor's values do not depend on which other
tensors are drawn, nor in what order. Values are on a trained model's scale:

* matrices, embeddings and biases: normal, mean 0, std ``std`` (0.02 by default);
* norm weights (1-D tensors of modules named ``*norm*``): 1 + normal(0, std).

No tensor is all zero or constant. The converter then prunes the decoder linears by
magnitude, per row, like any other checkpoint.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sparsellm.errors import InvalidArgument

from .model_plan import ModelPlan

_OPT_COMMON = {"model_type": "opt", "vocab_size": 50272, "max_position_embeddings": 2048,
               "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "activation_function": "relu"}
_LLAMA2_COMMON = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096,
                  "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                  "hidden_act": "silu"}


def _opt(hidden: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {**_OPT_COMMON, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "ffn_dim": 4 * hidden, "word_embed_proj_dim": hidden, **extra}


def _llama2(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int) -> dict[str, Any]:
    return {**_LLAMA2_COMMON, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "intermediate_size": ffn}


NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "opt-125m": _opt(768, 12, 12),
    "opt-350m": _opt(1024, 24, 16, word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": _opt(2048, 24, 32),
    "opt-2.7b": _opt(2560, 32, 32),
    "opt-6.7b": _opt(4096, 32, 32),
    "opt-13b": _opt(5120, 40, 40),
    "opt-30b": _opt(7168, 48, 56),
    "opt-66b": _opt(9216, 64, 72),
    "opt-175b": _opt(12288, 96, 96),
    "llama-2-7b": _llama2(4096, 32, 32, 32, 11008),
    "llama-2-13b": _llama2(5120, 40, 40, 40, 13824),
    "llama-2-70b": _llama2(8192, 80, 64, 8, 28672),
}


def random_model_config(spec: str | os.PathLike) -> tuple[Any, str]:
    """(transformers config, description) of a named shape or a config.json path."""
    from transformers import AutoConfig

    from .hf_reader import load_hf_config

    if isinstance(spec, str) and spec in NAMED_CONFIGS:
        values = dict(NAMED_CONFIGS[spec])
        return AutoConfig.for_model(values.pop("model_type"), **values), spec
    path = Path(spec)
    if not path.exists():
        raise InvalidArgument(
            f"random model config {str(spec)!r} is neither a named shape ({', '.join(NAMED_CONFIGS)}) "
            "nor an existing config.json"
        )
    return load_hf_config(path), str(path)


CHUNK_ELEMENTS = 1 << 22
DEFAULT_STD = 0.02  # of the values drawn, here and by the runtime for a generated checkpoint


def _normal(shape: tuple[int, ...], seed: list[int], std: float) -> np.ndarray:
    """Normal(0, std) float32 values; chunk c of CHUNK_ELEMENTS values comes from the generator
    seeded by seed + [c], so the values do not depend on how many threads draw them (numpy's
    generators release the GIL while filling, so the chunks are drawn in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    values = np.empty(int(np.prod(shape)), dtype=np.float32)

    def fill(chunk: int) -> None:
        part = values[chunk * CHUNK_ELEMENTS : (chunk + 1) * CHUNK_ELEMENTS]
        np.random.default_rng([*seed, chunk]).standard_normal(out=part, dtype=np.float32)
        part *= np.float32(std)

    chunks = -(-values.size // CHUNK_ELEMENTS)
    with ThreadPoolExecutor(max_workers=min(chunks, os.cpu_count() or 1) or 1) as pool:
        list(pool.map(fill, range(chunks)))
    return values.reshape(shape)


class RandomWeights:
    """A tensor source for the converter: every tensor of ``plan`` drawn at random."""

    def __init__(self, plan: ModelPlan, seed: int, std: float = DEFAULT_STD) -> None:
        self.shapes = {item.name: item.shape for item in plan.tensors}
        self.seed = seed
        self.std = std

    def tensor(self, name: str) -> Any:
        import torch

        values = _normal(self.shapes[name], [self.seed, zlib.crc32(name.encode())], self.std)
        module, _, kind = name.rpartition(".")
        if len(self.shapes[name]) == 1 and kind == "weight" and "norm" in module.rpartition(".")[2]:
            values += np.float32(1.0)
        return torch.from_numpy(values)

    @contextmanager
    def session(self) -> Iterator[Callable[[str], Any]]:
        yield self.tensor
