"""How the converter prunes: streamed magnitude pruning, or ``prune_model`` on a loaded model.

* Magnitude pruning with uniform sparsity, a sparsity map or an N:M pattern needs no
  data: each pruned weight is pruned as it streams through the converter, row block
  by row block (selection is per row, so blocks give exactly the whole-matrix result),
  in float32 from the stored values, then converted to the checkpoint dtype. This is
  what ``sparsellm.prune.prune_model`` does with ``method="magnitude"``.
* Wanda, SparseGPT and OWL need calibration activations. ``prune_layerwise`` prunes one
  decoder layer at a time (``sparsellm.prune.layerwise.StreamedModel``): the model is
  instantiated on the meta device, decoder layer i alone is read in float32 (onto the GPU
  when there is one), pruned on its calibration inputs and run to give layer i+1's inputs,
  while the writer takes its pruned tensors (``PrunedLayers``); OWL first makes a dense
  pass of the same kind. ``prune_loaded_model`` does the same with ``prune_model`` on a
  model loaded whole (the reference, for models that fit in memory). Token ids come from
  ``--calib FILE`` or, by default, are sampled from the model itself.

Argument errors come out as ``sparsellm.InvalidArgument``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsellm.errors import InvalidArgument

from .encoding import to_bits
from .model_plan import ModelPlan

ROW_BLOCK_ELEMENTS = 1 << 22  # weights pruned at a time: the stable sort needs ~20 bytes each (80 MiB)


def _argument(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call one of sparsellm.prune's functions, turning its ValueError into InvalidArgument."""
    try:
        return check(*args, **kwargs)
    except InvalidArgument:
        raise
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how; ``checked()`` validates it and resolves the N:M pattern."""

    method: str = "magnitude"
    sparsity: float | None = None
    nm: tuple[int, int] | str | None = None
    layer_sparsity: str | os.PathLike | Mapping | None = None  # None, "owl", a map file or mapping
    calib: Any = None  # None / "default" (sample from the model), a file path, or ids [nsamples, seqlen]
    nsamples: int = 128
    seqlen: int = 256
    seed: int = 1234

    def checked(self) -> "PruningSpec":
        from sparsellm.prune.selection import resolve_pattern
        from sparsellm.prune.weight import check_method

        _argument(check_method, self.method)
        sparsity, pattern = _argument(resolve_pattern, self.sparsity, self.nm)
        if pattern is not None and self.layer_sparsity is not None:
            raise InvalidArgument("an N:M pattern fixes every tensor's sparsity; drop the layer sparsity")
        if self.calib is not None and not (self.method != "magnitude" or self.owl):
            raise InvalidArgument("calibration data is used by wanda, sparsegpt and OWL only, not by magnitude pruning")
        _check_count(self.nsamples, "nsamples")
        _check_count(self.seqlen, "seqlen")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgument(f"seed must be a non-negative integer, got {self.seed!r}")
        return PruningSpec(self.method, sparsity, pattern, self.layer_sparsity, self.calib,
                           self.nsamples, self.seqlen, self.seed)

    @property
    def owl(self) -> bool:
        return isinstance(self.layer_sparsity, str) and self.layer_sparsity == "owl"

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.owl


def tensor_targets(plan: ModelPlan, spec: PruningSpec) -> dict[str, float]:
    """Target sparsity of every pruned tensor (module name -> sparsity) for streamed pruning."""
    from sparsellm.prune import load_sparsity_map
    from sparsellm.prune.model import tensor_targets  # the same resolution prune_model uses

    per_layer = None if spec.layer_sparsity is None else _argument(load_sparsity_map, spec.layer_sparsity)
    return _argument(tensor_targets, plan.meta_model, spec.sparsity, per_layer)


def check_pattern_fits(plan: ModelPlan, spec: PruningSpec) -> None:
    """An N:M pattern needs every pruned weight's input size to be a multiple of M."""
    if spec.nm is None:
        return
    n, m = spec.nm
    for item in plan.pruned:
        if item.shape[1] % m:
            raise InvalidArgument(f"N:M pattern {n}:{m} needs {item.name}'s input size ({item.shape[1]}) "
                                  f"to be a multiple of {m}")


def prune_streamed(tensor: Any, target: float, spec: PruningSpec, dtype: str, name: str) -> np.ndarray:
    """Magnitude-prune a weight [out, in] (row blocks, float32) and return its ``dtype`` bits."""
    from sparsellm.prune import prune_weight

    rows, cols = tensor.shape
    bits = np.empty((rows, cols), dtype=np.uint16)
    step = max(1, ROW_BLOCK_ELEMENTS // max(cols, 1))
    for first in range(0, rows, step):
        block = tensor[first : first + step].float()
        if target > 0:  # as prune_model: a tensor with target 0 is left alone
            try:
                block = _argument(prune_weight, block, "magnitude", None if spec.nm else target, nm=spec.nm).weight
            except InvalidArgument as exc:
                raise InvalidArgument(f"tensor {name}: {exc}") from None
        bits[first : first + step] = to_bits(block, dtype, name)
    return bits


def calibration_ids(
    config: Any, spec: PruningSpec, log: Callable[[str], None], model: Callable[[], AbstractContextManager[Any]]
) -> tuple[Any, dict[str, Any]]:
    """Token ids for Wanda / SparseGPT / OWL and a description for config.json.

    ``model()`` gives the runnable model, entered only when ids are sampled from it.
    """
    from sparsellm.prune import default_calibration_ids, load_calibration_ids
    from sparsellm.prune.calibration import check_calibration_ids

    vocab = getattr(config, "vocab_size", None)
    if spec.calib is None or (isinstance(spec.calib, str) and spec.calib == "default"):
        log(f"calibration: {spec.nsamples} sequences x {spec.seqlen} tokens sampled from the model itself "
            f"(seed {spec.seed}), not real text; pass --calib FILE to calibrate on real text")
        with model() as runnable:
            ids = default_calibration_ids(runnable, spec.nsamples, spec.seqlen, spec.seed)
        source: dict[str, Any] = {"source": "sampled from the model", "seed": spec.seed}
    elif isinstance(spec.calib, (str, os.PathLike)):
        ids = _argument(load_calibration_ids, spec.calib, vocab)
        source = {"source": "file", "file": str(spec.calib)}
        log(f"calibration: {ids.shape[0]} sequences x {ids.shape[1]} tokens from {spec.calib}")
    else:
        ids = _argument(check_calibration_ids, spec.calib, vocab)
        source = {"source": "token ids given by the caller"}
    return ids, {**source, "nsamples": int(ids.shape[0]), "seqlen": int(ids.shape[1])}


def _record(report: Any, calibration: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"calibration": calibration}
    if report.layer_sparsity is not None:
        record["owl"] = {"layer_targets": report.layer_sparsity, "outlier_ratios": report.outlier_ratios}
    return record


def prune_loaded_model(model: Any, spec: PruningSpec, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Prune a loaded transformers model in place with ``prune_model``; returns what config.json records."""
    from sparsellm.prune import prune_model

    ids = None
    calibration = None
    if spec.needs_calibration:
        ids, calibration = calibration_ids(model.config, spec, log, lambda: nullcontext(model))
    report = _argument(prune_model, model, ids, method=spec.method, sparsity=spec.sparsity,
                       layer_sparsity=spec.layer_sparsity, nm=spec.nm, progress=progress)
    return _record(report, calibration)


class PrunedLayers:
    """Tensor source for the checkpoint writer, pruning decoder layers as their tensors are asked for.

    ``read(name)`` serves a tensor outside the decoder layers from the weight files as stored,
    and a tensor of decoder layer i from layer i pruned (float32, moved to the CPU). Layers
    must be asked for in increasing order, which is the storage order; asking for layer i+1
    releases layer i. ``close()`` releases the last one.
    """

    def __init__(self, session: Callable[[], AbstractContextManager[Callable[[str], Any]]], plan: ModelPlan,
                 layers: Iterator[tuple[int, Any]], prefix: str) -> None:
        self._session, self._layers, self._prefix = session, layers, prefix
        self._layer_of = {item.name: item.layer for item in plan.tensors}
        self._index = -1
        self._parameters: dict[str, Any] = {}

    @contextmanager
    def __call__(self) -> Iterator[Callable[[str], Any]]:
        yield self.read

    def read(self, name: str) -> Any:
        index = self._layer_of[name]
        if index is None:
            with self._session() as read:
                return read(name)
        if index < self._index:
            raise RuntimeError(f"tensor {name} of decoder layer {index} asked for after layer {self._index}")
        while self._index < index:
            self._parameters = {}  # drop the references before the layer is released
            self._index, layer = _argument(next, self._layers)
            self._parameters = {f"{self._prefix}.{self._index}.{key}": value
                                for key, value in layer.named_parameters()}
        return self._parameters[name].detach().cpu()

    def close(self) -> None:
        self._parameters = {}
        self._layers.close()


def prune_layerwise(
    hf: Any, plan: ModelPlan, spec: PruningSpec, progress: bool, log: Callable[[str], None],
    device: Any = None,
) -> tuple[dict[str, Any], PrunedLayers]:
    """Calibrated pruning of a Hugging Face checkpoint one decoder layer at a time.

    Returns what config.json records and the tensor source the writer reads the pruned model
    from. OWL's dense pass runs here; the pruning pass runs as the writer reads.
    """
    from sparsellm.prune.layerwise import StreamedModel
    from sparsellm.prune.model import prune_layer_by_layer

    streamed = _argument(StreamedModel, plan.config, hf.session, device)
    log(f"{spec.method}: calibrating one decoder layer at a time on {streamed.device.type}")
    ids, calibration = calibration_ids(plan.config, spec, log, streamed.whole_model)
    report, layers = _argument(prune_layer_by_layer, streamed, ids, method=spec.method, sparsity=spec.sparsity,
                               layer_sparsity=spec.layer_sparsity, nm=spec.nm, progress=progress)
    return _record(report, calibration), PrunedLayers(hf.session, plan, layers, streamed.prefix)


def pruning_record(spec: PruningSpec, plan: ModelPlan, tensors: dict[str, dict], extra: dict[str, Any]) -> dict:
    """The "pruning" field of config.json: method, targets and the sparsity achieved."""
    layers: dict[int, list[float]] = {}
    for item in plan.pruned:
        entry = tensors[item.name]
        size = int(np.prod(item.shape))
        zeros, total = layers.setdefault(item.layer, [0.0, 0.0])
        layers[item.layer] = [zeros + entry["sparsity"] * size, total + size]
    all_zeros = sum(z for z, _ in layers.values())
    all_total = sum(t for _, t in layers.values())
    if spec.owl:
        mode: Any = "owl"
    elif spec.layer_sparsity is None:
        mode = "uniform"
    else:
        mode = {"map": dict(spec.layer_sparsity) if isinstance(spec.layer_sparsity, Mapping) else str(spec.layer_sparsity)}
    return {
        "method": spec.method,
        "sparsity": spec.sparsity,
        "nm": None if spec.nm is None else f"{spec.nm[0]}:{spec.nm[1]}",
        "layer_sparsity_mode": mode,
        "layer_sparsity": [z / t for z, t in (layers[i] for i in sorted(layers))],
        "achieved_sparsity": all_zeros / all_total if all_total else 0.0,
        "calibration": None,
        **extra,
    }
