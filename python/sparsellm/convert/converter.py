"""Converting a model to a sparsellm checkpoint: ``convert`` (Hugging Face) and ``convert_random``.

Every argument is checked and the whole source is inspected (config, architecture,
tensor-parallel divisibility, every tensor's presence and shape, the output path)
before anything is written. Then one tensor at a time, each tensor is read (its source
file open only meanwhile), pruned (streamed magnitude pruning) or taken from its decoder
layer pruned with calibration (Wanda / SparseGPT / OWL, one layer at a time, see
pruning.py), converted to the checkpoint dtype, split across ranks, encoded per shard and
appended to its rank file (checkpoint_writer.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sparsellm.errors import FormatError

from .architectures import architecture_of, check_tensor_parallel
from .checkpoint import FORMAT_VERSION
from .checkpoint_writer import CheckpointWriter, check_output_dir
from .encoding import (
    canonical_zeros, check_dtype, check_format, choose_format, encode, format_fields, nonzero_count, possible_components, to_bits,
)
from .model_plan import ModelPlan, TensorPlan, model_plan
from .pruning import (
    PruningSpec, check_pattern_fits, prune_layerwise, prune_loaded_model, prune_streamed, pruning_record,
    tensor_targets,
)
from .tensor_parallel import split_tensor

logger = logging.getLogger("sparsellm.convert")
TensorSource = Callable[[], AbstractContextManager[Callable[[str], Any]]]


def _default_dtype(config: Any) -> str:
    """The config's dtype when it is float16 or bfloat16, else float16."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else ""
    return name if name in ("float16", "bfloat16") else "float16"


def _model_config(config: Any) -> dict[str, Any]:
    return json.loads(config.to_json_string(use_diff=False))


def config_fields(
    plan: ModelPlan, *, dtype: str, tp: int, tensors: dict[str, dict], pruning: dict[str, Any],
    describe: dict[str, Any],
) -> dict[str, Any]:
    """The fields of config.json but "files" and "copied_files" (``CheckpointWriter.commit`` adds those)."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": plan.arch.name,
        "model_config": _model_config(plan.config),
        "dtype": dtype,
        "tp": tp,
        "tensors": tensors,
        "pruning": pruning,
        **describe,
    }


def _store_tensor(
    item: TensorPlan, tensor: Any, writer: CheckpointWriter, *, tp: int, dtype: str, fmt: str,
    target: float | None, spec: PruningSpec, choice_shape: tuple[int, ...],
) -> dict[str, Any]:
    """Prune (if ``target`` is given), convert, split, encode and write one tensor; returns its entry.
    ``choice_shape``: the product's shape ``auto`` chooses by (``ModelPlan.choice_shape``)."""
    if tuple(tensor.shape) != item.shape:
        raise FormatError(f"tensor {item.name} has shape {tuple(tensor.shape)}, the config implies {item.shape}")
    if target is not None:
        bits = prune_streamed(tensor, target, spec, dtype, item.name)
    else:
        bits = to_bits(tensor, dtype, item.name)
    if item.pruned:
        canonical_zeros(bits)
    nnz = nonzero_count(bits)
    sparsity = 1.0 - nnz / bits.size
    chosen = choose_format(fmt, item.pruned, sparsity, choice_shape)
    shards = {}
    for rank, shard in split_tensor(bits, item.split, tp, item.name):
        components = {}
        for key, (component_dtype, array) in encode(item.name, shard, chosen, dtype).items():
            writer.write(rank, key, component_dtype, array)
            components[key] = {"dtype": component_dtype, "shape": list(array.shape)}
        shard_nnz = nonzero_count(shard)
        shards[str(rank)] = {"sparsity": 1.0 - shard_nnz / shard.size, "nnz": shard_nnz, "components": components}
    return {
        **format_fields(chosen), "shape": list(item.shard_shape(tp)), "full_shape": list(item.shape), "split": item.split,
        "pruned": item.pruned, "sparsity": sparsity, "nnz": nnz, "shards": shards,
    }


def _write_checkpoint(
    plan: ModelPlan, source: TensorSource, out: Path, *, tp: int, dtype: str, fmt: str, spec: PruningSpec,
    targets: Mapping[str, float] | None, overwrite: bool, progress: bool, describe: dict[str, Any],
    pruning_extra: dict[str, Any], copy_files: list[Path] = (),
) -> dict[str, Any]:
    """Stream every tensor of ``plan`` from ``source`` into a checkpoint at ``out``; returns its config."""
    from tqdm.auto import tqdm

    components: dict[int, list[tuple[str, int]]] = {rank: [] for rank in range(tp)}
    for item in plan.tensors:
        for rank in item.ranks(tp):
            components[rank] += possible_components(item.name, len(item.shape), item.pruned)
    tensors: dict[str, dict] = {}
    with CheckpointWriter(out, tp, components, overwrite) as writer:
        with tqdm(total=len(plan.tensors), desc="converting", unit="tensor", disable=not progress) as bar:
            for item in plan.tensors:
                target = targets[item.module] if targets is not None and item.pruned else None
                with source() as read:  # one tensor's file pages mapped at a time
                    tensor = read(item.name)
                tensors[item.name] = _store_tensor(item, tensor, writer, tp=tp, dtype=dtype, fmt=fmt,
                                                   target=target, spec=spec,
                                                   choice_shape=plan.choice_shape(item, tp))
                del tensor
                bar.update()
        config = config_fields(plan, dtype=dtype, tp=tp, tensors=tensors,
                               pruning=pruning_record(spec, plan, tensors, pruning_extra), describe=describe)
        return writer.commit(config, list(copy_files))


def _progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _check_source_shapes(plan: ModelPlan, hf: Any) -> None:
    shapes = hf.shapes([item.name for item in plan.tensors])
    for item in plan.tensors:
        if shapes[item.name] != item.shape:
            path = hf.files[hf.stored_name(item.name)]
            raise FormatError(f"{path}: tensor {hf.stored_name(item.name)} has shape {shapes[item.name]}, "
                              f"config.json implies {item.shape}")


def convert(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sparsity: float | None = None,
    method: str = "magnitude",
    calib: Any = None,
    nsamples: int = 128,
    seqlen: int = 256,
    tp: int = 1,
    dtype: str | None = None,
    format: str = "auto",
    layer_sparsity: str | os.PathLike | Mapping | None = None,
    nm: tuple[int, int] | str | None = None,
    seed: int = 1234,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    layerwise: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Prune a Hugging Face OPT or Llama-family model and write it as a sparsellm checkpoint.

    ``model``: a directory with config.json and safetensors or PyTorch .bin weights (sharded
    or not). ``method``: magnitude (streamed, no data), wanda or sparsegpt (pruned with
    calibration ids: ``calib`` a file for ``sparsellm.prune.load_calibration_ids``, an id
    tensor, or None / "default" for ``nsamples`` x ``seqlen`` tokens sampled from the model
    with ``seed``). ``layer_sparsity``: None, "owl" or a sparsity map; ``nm``: e.g. "2:4".
    ``tp``: ranks. ``dtype``: fp16 / bf16 (default: the model's if one of those, else fp16).
    ``format``: auto, tiled_csl or dense. Calibrated pruning reads one decoder layer at a
    time, in float32 on ``device`` (default: the GPU when torch sees one, else the CPU);
    ``layerwise=False`` loads the whole model in float32 into CPU memory instead and prunes
    it with ``prune_model`` (the same result on the CPU; needs memory for the whole model).
    Returns the checkpoint's config (as written to config.json).
    """
    from .hf_reader import HFCheckpoint

    log = log or logger.info
    spec = PruningSpec(method, sparsity, nm, layer_sparsity, calib, nsamples, seqlen, seed).checked()
    fmt = check_format(format)
    out = check_output_dir(out, overwrite)
    hf = HFCheckpoint(model)
    where = str(hf.directory / "config.json")
    arch = architecture_of(hf.config, where)
    check_tensor_parallel(hf.config, arch, tp, where)
    dtype = check_dtype(dtype) if dtype is not None else _default_dtype(hf.config)
    plan = model_plan(hf.config, arch)
    _check_source_shapes(plan, hf)
    check_pattern_fits(plan, spec)
    describe = {"source": {"kind": "hugging_face", "path": str(hf.directory.resolve()), "weights": hf.kind}}
    common = dict(tp=tp, dtype=dtype, fmt=fmt, spec=spec, overwrite=overwrite, progress=_progress(progress),
                  describe=describe, copy_files=hf.tokenizer_files())

    if not spec.needs_calibration:
        targets = tensor_targets(plan, spec)
        return _write_checkpoint(plan, hf.session, out, targets=targets, pruning_extra={}, **common)

    if layerwise:
        extra, layers = prune_layerwise(hf, plan, spec, _progress(progress), log, device)
        try:
            return _write_checkpoint(plan, layers, out, targets=None, pruning_extra=extra, **common)
        finally:
            layers.close()

    import torch
    from transformers import AutoModelForCausalLM

    log(f"{spec.method}: loading the whole model from {hf.directory} in float32 to calibrate")
    loaded = AutoModelForCausalLM.from_pretrained(str(hf.directory), dtype=torch.float32)
    extra = prune_loaded_model(loaded, spec, _progress(progress), log)
    parameters = dict(loaded.named_parameters())

    @contextmanager
    def in_memory() -> Iterator[Callable[[str], Any]]:
        yield lambda name: parameters[name].detach()

    return _write_checkpoint(plan, in_memory, out, targets=None, pruning_extra=extra, **common)


def random_plan(config: str | os.PathLike, tp: int) -> tuple[ModelPlan, str]:
    """(plan, description) of a named shape or config.json, after checking its architecture and ``tp``."""
    from .random_model import random_model_config

    model_config, description = random_model_config(config)
    arch = architecture_of(model_config, description)
    check_tensor_parallel(model_config, arch, tp, description)
    return model_plan(model_config, arch), description


def convert_random(
    config: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    layer_sparsity: str | os.PathLike | Mapping | None = None,
    tp: int = 1,
    dtype: str = "fp16",
    format: str = "auto",
    seed: int = 1234,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write a random-weight model of a real shape, magnitude-pruned per row, as a checkpoint.

    ``config``: a name from ``NAMED_CONFIGS`` or a path to a transformers config.json. Each
    tensor is drawn, pruned and encoded on its own (random_model.py): the dense model is
    never materialized. ``layer_sparsity`` may be a sparsity map (OWL needs a real model).
    """
    from .random_model import RandomWeights

    spec = PruningSpec("magnitude", sparsity, nm, layer_sparsity, None, seed=seed).checked()
    if spec.owl:
        from sparsellm.errors import InvalidArgument

        raise InvalidArgument("OWL layer sparsity needs calibration data, which a random model does not have")
    fmt = check_format(format)
    out = check_output_dir(out, overwrite)
    plan, description = random_plan(config, tp)
    dtype = check_dtype(dtype)
    check_pattern_fits(plan, spec)
    weights = RandomWeights(plan, seed)
    describe = {"source": {"kind": "random", "config": description, "seed": seed, "std": weights.std}}
    return _write_checkpoint(
        plan, weights.session, out, tp=tp, dtype=dtype, fmt=fmt, spec=spec, targets=tensor_targets(plan, spec),
        overwrite=overwrite, progress=_progress(progress), describe=describe, pruning_extra={},
    )
