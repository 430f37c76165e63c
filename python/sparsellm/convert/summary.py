"""A per-tensor table of a checkpoint (``sparsellm info``), from its config.json alone.

Per tensor and rank: name, format, shape (the rank's), sparsity (fraction of zeros in
the rank's shard), stored bytes (all components), the bytes of the same shard stored
dense in float16 and their ratio, and, for 2-D weights when a ``FormatPolicy`` is given,
the speedup over dense its speed model predicts for the shard at the policy's decode
batch (1.00 for dense). Linears the runtime stacks into one product (q/k/v, gate/up, in one
format: ``Architecture.stacked``) are predicted as that product, their rows summed. Totals
per rank follow.

A generated checkpoint stores nothing: its bytes are those its shards are expected to take
once the runtime has drawn them (``format_choice.weight_bytes`` at the target sparsity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsellm.format_choice import FormatPolicy, weight_bytes

from .architectures import ARCHITECTURES, sparse_rows_stack
from .checkpoint import SPARSE_DATA_COMPONENT, is_generated, rank_file_name

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


def expected_bytes(fmt: str, shape: list[int], sparsity: float) -> int:
    """Bytes of a generated shard once drawn: 2 per element dense, else the format's size model."""
    if fmt == "dense" or len(shape) != 2:
        return 2 * int(np.prod(shape))
    return round(weight_bytes(fmt, shape[0], shape[1], sparsity))


def rank_rows(config: dict[str, Any], rank: int) -> list[TensorRow]:
    generated = is_generated(config)
    rows = []
    for name, entry in config["tensors"].items():
        shard = entry["shards"].get(str(rank))
        if shard is None:
            continue
        if generated:
            size = expected_bytes(entry["format"], entry["shape"], shard["sparsity"])
        else:
            size = sum(_ITEM_BYTES[c["dtype"]] * int(np.prod(c["shape"])) for c in shard["components"].values())
        rows.append(TensorRow(name, entry["format"], tuple(entry["shape"]), shard["sparsity"], size))
    return rows


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def product_shapes(config: dict[str, Any], rows: list[TensorRow]) -> dict[str, tuple[int, int]]:
    """[M, K] of the product each 2-D row is multiplied in: its own shape, or for a linear of a
    stacked group whose members share one format and K, the group's rows summed. As the runtime
    (Linear::stack), sparse members stack by whole tile rows: every one but the last must have
    a multiple of 128 rows."""
    by_name = {r.name: r for r in rows}
    shapes = {r.name: r.shape for r in rows if len(r.shape) == 2}
    arch = ARCHITECTURES.get(config.get("architecture"))
    for name, shape in shapes.items():
        group = arch.stacked_group(name.removesuffix(".weight")) if arch else ()
        members = [by_name.get(f"{module}.weight") for module in group]
        if (members and all(m is not None and len(m.shape) == 2 for m in members)
                and len({m.format for m in members}) == 1 and len({m.shape[1] for m in members}) == 1
                and (members[0].format == "dense" or sparse_rows_stack([m.shape[0] for m in members]))):
            shapes[name] = (sum(m.shape[0] for m in members), shape[1])
    return shapes


def predicted_speedup(row: TensorRow, policy: FormatPolicy | None,
                      shape: tuple[int, int] | None = None) -> float | None:
    """Dense time over the row's format's time at the policy's decode batch, for the product of
    ``shape`` (default: the row's own); None for 1-D tensors."""
    if policy is None or len(row.shape) != 2 or 0 in row.shape or row.format not in policy.model.formats:
        return None
    m, k = shape or row.shape
    return policy.model.speedup(row.format, m, k, policy.decode_batch, row.sparsity)


def rank_table(config: dict[str, Any], rank: int, policy: FormatPolicy | None = None) -> str:
    """The table of one rank, with totals."""
    rows = rank_rows(config, rank)
    products = product_shapes(config, rows)
    width = max([len("name")] + [len(r.name) for r in rows])
    n = f"@N={policy.decode_batch}" if policy is not None else ""
    lines = [f"{'name':<{width}}  {'format':<9}  {'shape':>13}  {'sparsity':>8}  {'bytes':>12}  "
             f"{'dense bytes':>12}  {'vs fp16':>7}  speedup{n}"]
    for r in rows:
        shape = "x".join(str(s) for s in r.shape)
        speedup = predicted_speedup(r, policy, products.get(r.name))
        lines.append(f"{r.name:<{width}}  {r.format:<9}  {shape:>13}  {r.sparsity:>8.4f}  {r.bytes:>12}  "
                     f"{r.dense_fp16_bytes:>12}  {r.ratio:>7.3f}  {'' if speedup is None else f'{speedup:.2f}'}"
                     .rstrip())
    stored = sum(r.bytes for r in rows)
    dense = sum(r.dense_fp16_bytes for r in rows)
    sparse = [r for r in rows if r.format != "dense"]
    counts = ", ".join(f"{sum(r.format == f for r in rows)} {f}" for f in SPARSE_DATA_COMPONENT)
    sparse_stored, sparse_dense = sum(r.bytes for r in sparse), sum(r.dense_fp16_bytes for r in sparse)
    lines.append(
        f"total: {len(rows)} tensors ({counts}), {stored} bytes ({_mib(stored)}); "
        f"dense fp16 would be {dense} bytes ({_mib(dense)}), ratio {stored / dense if dense else 0:.3f}"
    )
    if sparse:
        lines.append(f"sparse tensors: {sparse_stored} bytes vs {sparse_dense} dense fp16, "
                     f"ratio {sparse_stored / sparse_dense:.3f}")
    if policy is not None:
        lines.append(f"speedup: predicted over dense at N={policy.decode_batch} by the {policy.model.gpu} model"
                     " (q/k/v and gate/up as the one product they are stacked into)")
    return "\n".join(lines)


def checkpoint_summary(config: dict[str, Any], ranks: list[int], policy: FormatPolicy | None = None) -> str:
    """Header lines, then one table per rank."""
    pruning = config["pruning"]
    head = [
        f"architecture {config['architecture']}, dtype {config['dtype']}, tensor parallelism {config['tp']}",
        f"pruning: {pruning.get('method')} at {pruning.get('sparsity')} "
        f"(achieved {pruning.get('achieved_sparsity', 0):.4f} over the pruned tensors)",
    ]
    if is_generated(config):
        source = config["source"]
        head.append(f"generated: config.json alone, the weights are drawn at load (seed {source['seed']}, "
                    f"std {source['std']}); bytes are those expected once drawn")
    parts = ["\n".join(head)]
    for rank in ranks:
        parts.append(f"rank {rank} of {config['tp']} ({_rank_file_description(config, rank)})\n"
                     + rank_table(config, rank, policy))
    return "\n\n".join(parts)


def _rank_file_description(config: dict[str, Any], rank: int) -> str:
    if is_generated(config):
        return "generated, no file"
    file_name = rank_file_name(rank, config["tp"])
    return f"{file_name}, {config['files'][file_name]['bytes']} bytes"
