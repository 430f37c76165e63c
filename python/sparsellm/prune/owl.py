"""Per-layer sparsity: OWL (outlier-weighted layerwise sparsity) and sparsity maps.

OWL gives decoder layers with more activation outliers a lower sparsity. For layer l,
with Wanda scores S = |W_ij| * ||X_j||_2 of all its pruned linears taken together,

    D_l = #{S > M * mean(S)} / #S            (outlier ratio, M = 5 by default),
    r_l = 2 (D_l - min D) / (max D - min D) - 1   in [-1, 1]   (0 when all D_l are equal),
    s_l = target - lambda * r_l               (lambda = 0.08 by default),

then s_l is shifted so that its mean is exactly the target and clipped to [0, 0.99].
The clipping can move the mean only when the target lies within lambda of 0 or
0.99. Layers thus get sparsities in [target - lambda, target + lambda].

A sparsity map can also be given as JSON: ``{"3": 0.6, ...}`` (decoder-layer index)
and/or ``{"model.layers.3.mlp.up_proj": 0.7, ...}`` (tensor name, with or without
``.weight``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .selection import check_sparsity

MAX_LAYER_SPARSITY = 0.99


def outlier_ratio(scores: Iterable[torch.Tensor], threshold: float = 5.0) -> float:
    """Fraction of the scores (all tensors together) above ``threshold`` times their mean."""
    if not threshold > 0:
        raise ValueError(f"outlier threshold must be positive, got {threshold!r}")
    flat = [s.detach().float().reshape(-1) for s in scores]
    if not flat or sum(f.numel() for f in flat) == 0:
        raise ValueError("outlier_ratio needs at least one non-empty score tensor")
    total = sum(f.numel() for f in flat)
    mean = sum(float(f.sum()) for f in flat) / total
    above = sum(int((f > threshold * mean).sum()) for f in flat)
    return above / total


def owl_layer_sparsity(ratios: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """Per-layer sparsities from outlier ratios (formula in the module docstring)."""
    target = check_sparsity(target, "target sparsity")
    if not 0 <= lam < 1:
        raise ValueError(f"OWL lambda must be in [0, 1), got {lam!r}")
    values = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("owl_layer_sparsity needs at least one layer")
    spread = float(values.max() - values.min())
    normalized = 2 * (values - values.min()) / spread - 1 if spread > 0 else torch.zeros_like(values)
    sparsity = target - lam * normalized
    sparsity = sparsity - sparsity.mean() + target
    return sparsity.clamp(0.0, MAX_LAYER_SPARSITY).tolist()


def load_sparsity_map(source: str | os.PathLike | Mapping) -> dict[int | str, float]:
    """Read a sparsity map (JSON file or mapping); integer-like keys become layer indices."""
    if isinstance(source, Mapping):
        raw, where = source, "sparsity map"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"sparsity map file not found: {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"sparsity map {path} is not valid JSON: {exc}") from None
        where = str(path)
        if not isinstance(raw, dict):
            raise ValueError(f"sparsity map {path} must hold a JSON object, got {type(raw).__name__}")
    parsed: dict[int | str, float] = {}
    for key, value in raw.items():
        name = str(key).strip()
        index: int | str = int(name) if name.lstrip("-").isdigit() else name.removesuffix(".weight")
        if isinstance(index, int) and index < 0:
            raise ValueError(f"{where}: layer index must be non-negative, got {key!r}")
        parsed[index] = check_sparsity(value, f"{where}: sparsity of {key!r}")
    return parsed
