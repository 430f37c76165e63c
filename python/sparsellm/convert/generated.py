"""Generated checkpoints: config.json alone, the weights drawn by the runtime at load.

A generated checkpoint describes a random-weight model of a real shape exactly as
``convert_random`` would store it (every tensor's format, shape, split and shards), but
holds no rank file: the C++ runtime draws every tensor on the GPU from the recorded seed
(normal(0, std); norm weights 1 + normal(0, std); a pruned weight keeps each element with
probability 1 − sparsity). This makes it possible to benchmark OPT-66B or OPT-175B without
writing or reading hundreds of GB (docs/checkpoint.md, "Generated checkpoints").

Differences from a converted checkpoint, in config.json: ``source.kind`` is "generated",
``files`` is empty, and every shard lists no components. ``sparsity`` and ``nnz`` are the
targets (the expectation of the drawn counts). Formats are the converter's: the runtime
draws bitmap weights on the GPU and Tiled-CSL ones dense on the GPU, encoded on the host.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .checkpoint_writer import CheckpointWriter, check_output_dir
from .converter import config_fields, random_plan
from .encoding import check_dtype, check_format, choose_format, format_fields
from .model_plan import TensorPlan
from .pruning import PruningSpec, pruning_record, tensor_targets
from .random_model import DEFAULT_STD


def expected_nnz(sparsity: float, shape: tuple[int, ...]) -> int:
    """round((1 − sparsity) · elements): the nonzeros a draw at ``sparsity`` keeps on average."""
    return round((1.0 - sparsity) * math.prod(shape))


def generated_entry(item: TensorPlan, target: float, requested: Any, tp: int,
                    choice_shape: tuple[int, ...]) -> dict[str, Any]:
    """One tensor's config.json entry: format, shapes and split as stored, targets for sparsity and nnz;
    ``auto`` chooses by ``choice_shape`` (``ModelPlan.choice_shape``)."""
    shard_shape = item.shard_shape(tp)
    return {
        **format_fields(choose_format(requested, item.pruned, target, choice_shape)),
        "shape": list(shard_shape), "full_shape": list(item.shape), "split": item.split, "pruned": item.pruned,
        "sparsity": target, "nnz": expected_nnz(target, item.shape),
        "shards": {str(rank): {"sparsity": target, "nnz": expected_nnz(target, shard_shape), "components": {}}
                   for rank in item.ranks(tp)},
    }


def write_generated(
    config: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sparsity: float | None = None,
    tp: int = 1,
    dtype: str = "fp16",
    format: str = "auto",
    seed: int = 1234,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the config.json of a generated checkpoint (module docstring) into the directory ``out``.

    ``config``: a name from ``NAMED_CONFIGS`` or a path to a transformers config.json;
    ``sparsity``: the target of every pruned weight (required, as for ``convert_random``);
    ``format``: auto, tiled_csl, bitmap or dense, as for a conversion. The directory is
    published atomically and replaces an existing checkpoint only with ``overwrite``, as a
    conversion does. Returns the config as written.
    """
    spec = PruningSpec("magnitude", sparsity, seed=seed).checked()
    fmt = check_format(format)
    out = check_output_dir(out, overwrite)
    plan, description = random_plan(config, tp)
    dtype = check_dtype(dtype)
    targets = tensor_targets(plan, spec)
    tensors = {item.name: generated_entry(item, targets[item.module] if item.pruned else 0.0, fmt, tp,
                                          plan.choice_shape(item, tp))
               for item in plan.tensors}
    describe = {"source": {"kind": "generated", "config": description, "seed": seed, "std": DEFAULT_STD}}
    fields = config_fields(plan, dtype=dtype, tp=tp, tensors=tensors, describe=describe,
                           pruning=pruning_record(spec, plan, tensors, {"generated": True}))
    with CheckpointWriter(out, tp, {}, overwrite, rank_files=False) as writer:
        return writer.commit(fields)
