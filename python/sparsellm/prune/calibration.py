"""Calibration token ids: loading them from a file, or sampling them from a model.

Pruning with Wanda or SparseGPT needs token sequences ids [nsamples, seqlen] whose
activations stand for the data the model will see. They come from a file
(``load_calibration_ids``: ``.npy``, ``.pt`` or ``.safetensors`` holding one 2-D
integer array, the latter under the key ``input_ids``) or, when none is given, from
the model itself (``sample_sequences``): sequences drawn autoregressively from BOS at
temperature 1 with a seeded generator, x_{t+1} ~ softmax(logits_t / T). Sampling is
the built-in default for models shipped without a tokenizer or corpus; its tokens
follow the dense model's own distribution, not real text.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_CALIBRATION_SEED = 1234


def check_calibration_ids(ids: object, vocab_size: int | None = None, where: str = "calibration ids") -> torch.Tensor:
    """Return ``ids`` as an int64 tensor [nsamples, seqlen] after checking shape and range."""
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids)
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{where} must be a tensor or array [nsamples, seqlen], got {type(ids).__name__}")
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{where} must be 2-D [nsamples, seqlen] and non-empty, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{where} must hold integer token ids, got {ids.dtype}")
    ids = ids.long()
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise ValueError(f"{where} hold token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size})")
    return ids


def load_calibration_ids(path: str | os.PathLike, vocab_size: int | None = None) -> torch.Tensor:
    """Load calibration token ids [nsamples, seqlen] from .npy, .pt or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        ids = np.load(path, allow_pickle=False)
    elif suffix == ".pt":
        ids = torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "input_ids" not in tensors:
            raise ValueError(f"{path} has no tensor named 'input_ids' (found: {', '.join(tensors) or 'none'})")
        ids = tensors["input_ids"]
    else:
        raise ValueError(f"calibration file {path} must end in .npy, .pt or .safetensors")
    return check_calibration_ids(ids, vocab_size, where=str(path))


def _cache_keyword(model: torch.nn.Module) -> str:
    """Name of the forward argument that takes a KV cache (it changed across transformers versions)."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise ValueError(f"{type(model).__name__}.forward takes no KV cache argument")


@torch.no_grad()
def sample_sequences(
    model: torch.nn.Module,
    nsamples: int,
    seqlen: int,
    seed: int,
    *,
    bos_id: int = 1,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Draw ``nsamples`` sequences of ``seqlen`` tokens (BOS first) from a causal LM, on CPU int64."""
    from transformers import DynamicCache

    if nsamples < 1 or seqlen < 1 or batch_size < 1:
        raise ValueError(f"nsamples, seqlen and batch_size must be positive, got {nsamples}, {seqlen}, {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keyword = _cache_keyword(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for first in range(0, nsamples, batch_size):
            count = min(batch_size, nsamples - first)
            ids = torch.full((count, 1), bos_id, dtype=torch.long)
            cache = DynamicCache(config=model.config)
            step_input = ids
            for _ in range(seqlen - 1):
                logits = model(step_input.to(device), use_cache=True, **{keyword: cache}).logits[:, -1]
                probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
                step_input = torch.multinomial(probs, 1, generator=generator)
                ids = torch.cat([ids, step_input], dim=1)
            chunks.append(ids)
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def default_calibration_ids(
    model: torch.nn.Module, nsamples: int = 128, seqlen: int = 256, seed: int = DEFAULT_CALIBRATION_SEED
) -> torch.Tensor:
    """The built-in calibration set: ``nsamples`` x ``seqlen`` tokens sampled from the model itself."""
    bos = getattr(model.config, "bos_token_id", None)
    return sample_sequences(model, nsamples, seqlen, seed, bos_id=1 if bos is None else int(bos))
