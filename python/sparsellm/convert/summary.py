"""A per-tensor table of a checkpoint (``sparsellm info``), from its config.json alone.

Per tensor and rank: name, format, shape (the rank's), sparsity (fraction of zeros in
the rank's shard), stored bytes (all components), and for Tiled-CSL the ratio of the
stored bytes to the same shard stored dense in float16. Totals per rank follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import rank_file_name

_ITEM_BYTES = {"float16": 2, "bfloat16": 2, "uint32": 4, "uint16": 2}


@dataclass(frozen=True)
class TensorRow:
    name: str
    format: str
    shape: tuple[int, ...]
    sparsity: float
    bytes: int

    @property
    def dense_fp16_bytes(self) -> int:
        return int(np.prod(self.shape)) * 2

    @property
    def ratio(self) -> float:
        return self.bytes / self.dense_fp16_bytes if self.dense_fp16_bytes else 0.0


def rank_rows(config: dict[str, Any], rank: int) -> list[TensorRow]:
    rows = []
    for name, entry in config["tensors"].items():
        shard = entry["shards"].get(str(rank))
        if shard is None:
            continue
        size = sum(_ITEM_BYTES[c["dtype"]] * int(np.prod(c["shape"])) for c in shard["components"].values())
        rows.append(TensorRow(name, entry["format"], tuple(entry["shape"]), shard["sparsity"], size))
    return rows


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def rank_table(config: dict[str, Any], rank: int) -> str:
    """The table of one rank, with totals."""
    rows = rank_rows(config, rank)
    width = max([len("name")] + [len(r.name) for r in rows])
    lines = [f"{'name':<{width}}  {'format':<9}  {'shape':>13}  {'sparsity':>8}  {'bytes':>12}  vs fp16"]
    for r in rows:
        shape = "x".join(str(s) for s in r.shape)
        ratio = f"{r.ratio:.3f}" if r.format == "tiled_csl" else ""
        lines.append(f"{r.name:<{width}}  {r.format:<9}  {shape:>13}  {r.sparsity:>8.4f}  {r.bytes:>12}  {ratio}")
    stored = sum(r.bytes for r in rows)
    dense = sum(r.dense_fp16_bytes for r in rows)
    tiled = [r for r in rows if r.format == "tiled_csl"]
    tiled_stored, tiled_dense = sum(r.bytes for r in tiled), sum(r.dense_fp16_bytes for r in tiled)
    lines.append(
        f"total: {len(rows)} tensors ({len(tiled)} tiled_csl), {stored} bytes ({_mib(stored)}); "
        f"dense fp16 would be {dense} bytes ({_mib(dense)}), ratio {stored / dense if dense else 0:.3f}"
    )
    if tiled:
        lines.append(f"tiled_csl tensors: {tiled_stored} bytes vs {tiled_dense} dense fp16, "
                     f"ratio {tiled_stored / tiled_dense:.3f}")
    return "\n".join(lines)


def checkpoint_summary(config: dict[str, Any], ranks: list[int]) -> str:
    """Header lines, then one table per rank."""
    pruning = config["pruning"]
    head = [
        f"architecture {config['architecture']}, dtype {config['dtype']}, tensor parallelism {config['tp']}",
        f"pruning: {pruning.get('method')} at {pruning.get('sparsity')} "
        f"(achieved {pruning.get('achieved_sparsity', 0):.4f} over the pruned tensors)",
    ]
    parts = ["\n".join(head)]
    for rank in ranks:
        file_name = rank_file_name(rank, config["tp"])
        parts.append(f"rank {rank} of {config['tp']} ({file_name}, {config['files'][file_name]['bytes']} bytes)\n"
                     + rank_table(config, rank))
    return "\n\n".join(parts)
