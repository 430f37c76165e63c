"""Layer-by-layer one-shot pruning of a Hugging Face decoder-only model.

Supported: Llama-family models (``model.model.layers``: LlamaForCausalLM and the like)
and OPT (``model.model.decoder.layers``). In each decoder layer every ``nn.Linear`` is
pruned (Llama: q/k/v/o_proj, gate/up/down_proj; OPT: q/k/v/out_proj, fc1, fc2);
embeddings, norms and the LM head never are.

The sequential procedure, for calibration ids [nsamples, seqlen]:

1. Run the model on the calibration ids until decoder layer 0, where a forward
   pre-hook records the layer's inputs (hidden states and the keyword arguments the
   model passes: attention mask, position ids, rotary embeddings ...) and stops the
   forward pass.
2. For each decoder layer in order: hooks on its linears accumulate the statistics
   of their inputs while the recorded inputs run through the layer; the linears are
   pruned; the layer runs again, now pruned, and its outputs become the next layer's
   inputs. So every layer is calibrated on what the already-pruned layers below it
   produce.

Magnitude pruning needs no data and skips the passes (unless OWL asks for them).
With ``layer_sparsity="owl"`` a first pass over the dense model measures each layer's
outlier ratio of Wanda scores (see ``owl.py``) to set the per-layer sparsities.
Everything runs on the device the model is on.

The procedure is written once, over a ``LayerStore`` that hands out decoder layers one
at a time: ``prune_layer_by_layer(store, ...)`` returns the report and an iterator that
yields each layer once it is pruned. ``prune_model`` runs it over ``ResidentLayers`` (a
model in memory); ``layerwise.StreamedModel`` reads each layer from the weight files
when it is loaded and frees it when released, so that a converter can prune and write a
model that does not fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .calibration import check_calibration_ids
from .owl import load_sparsity_map, outlier_ratio, owl_layer_sparsity
from .selection import check_sparsity, parse_nm, resolve_pattern
from .statistics import ColumnNormAccumulator, InputStatistics
from .wanda import wanda_scores
from .weight import check_method, prune_weight, statistics_for


@dataclass
class TensorReport:
    """One pruned weight: its name, shape [out, in], target and achieved sparsity (fraction of zeros)."""

    name: str
    shape: tuple[int, int]
    target_sparsity: float
    sparsity: float


@dataclass
class PruneReport:
    """What ``prune_model`` did, tensor by tensor."""

    method: str
    nm: tuple[int, int] | None
    tensors: list[TensorReport] = field(default_factory=list)
    layer_sparsity: list[float] | None = None
    outlier_ratios: list[float] | None = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all pruned tensors together."""
        total = sum(t.shape[0] * t.shape[1] for t in self.tensors)
        zeros = sum(t.sparsity * t.shape[0] * t.shape[1] for t in self.tensors)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        data = asdict(self)
        data["sparsity"] = self.sparsity
        return data


class _LayerInputsCaptured(Exception):
    """Raised by the pre-hook on decoder layer 0 to stop the forward pass."""


LayerInput = tuple[tuple[Any, ...], dict[str, Any]]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers of a Llama-family or OPT causal LM, with their name prefix."""
    base = getattr(model, "model", None)
    decoder = getattr(base, "decoder", None)
    if isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return "model.decoder.layers", decoder.layers
    if isinstance(getattr(base, "layers", None), nn.ModuleList):
        return "model.layers", base.layers
    raise ValueError(
        f"unsupported model {type(model).__name__}: expected a Llama-family (model.layers) "
        "or OPT (model.decoder.layers) causal LM"
    )


def layer_linears(layer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear modules of one decoder layer, by name relative to the layer."""
    return [(name, module) for name, module in layer.named_modules() if isinstance(module, nn.Linear)]


def _capture_layer_inputs(
    model: nn.Module, first_layer: nn.Module, ids: torch.Tensor, batch_size: int
) -> list[LayerInput]:
    captured: list[LayerInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((tuple(args), dict(kwargs)))
        raise _LayerInputsCaptured

    device = model.get_input_embeddings().weight.device
    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for chunk in ids.split(batch_size):
            try:
                model(chunk.to(device), use_cache=False)
            except _LayerInputsCaptured:
                continue
            raise RuntimeError("decoder layer 0 was never called during the forward pass")
    finally:
        handle.remove()
    return captured


class LayerStore(Protocol):
    """Where the decoder layers of a model come from, one at a time.

    ``capture`` runs the model up to decoder layer 0 on calibration ids and returns that
    layer's recorded inputs; ``load(i)`` returns decoder layer i ready to run (on the
    device the inputs are on); ``release(i, layer)`` says that the caller is done with it.
    """

    prefix: str  # module path of the decoder layers, e.g. "model.layers"
    model: nn.Module  # the causal LM (its layers may be placeholders until loaded)

    def __len__(self) -> int: ...

    def capture(self, ids: torch.Tensor, batch_size: int) -> list[LayerInput]: ...

    def load(self, index: int) -> nn.Module: ...

    def release(self, index: int, layer: nn.Module) -> None: ...


class ResidentLayers:
    """The layers of a model that is entirely in memory: loading and releasing do nothing."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.prefix, self.layers = decoder_layers(model)

    def __len__(self) -> int:
        return len(self.layers)

    def capture(self, ids: torch.Tensor, batch_size: int) -> list[LayerInput]:
        return _capture_layer_inputs(self.model, self.layers[0], ids, batch_size)

    def load(self, index: int) -> nn.Module:
        return self.layers[index]

    def release(self, index: int, layer: nn.Module) -> None:
        pass


def _run_layer(layer: nn.Module, inputs: list[LayerInput]) -> list[LayerInput]:
    """Run every recorded input through ``layer``; outputs keep the recorded keyword arguments."""
    outputs = []
    for args, kwargs in inputs:
        out = layer(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        if args:
            outputs.append(((hidden, *args[1:]), kwargs))
        else:
            outputs.append(((), {**kwargs, "hidden_states": hidden}))
    return outputs


def _collect_statistics(
    layer: nn.Module, inputs: list[LayerInput], stats: dict[str, InputStatistics]
) -> None:
    linears = dict(layer_linears(layer))
    handles = []
    for name, accumulator in stats.items():
        def hook(module: nn.Module, args: tuple, output: torch.Tensor, acc: InputStatistics = accumulator) -> None:
            acc.add(args[0])

        handles.append(linears[name].register_forward_hook(hook))
    try:
        _run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _walk_layers(
    store: LayerStore,
    ids: torch.Tensor | None,
    batch_size: int,
    make_stats: Callable[[int, str, nn.Linear], InputStatistics | None],
    visit: Callable[[int, nn.Module, dict[str, InputStatistics]], None],
    progress: bool,
    description: str,
) -> Iterator[tuple[int, nn.Module]]:
    """Sequential pass, one layer at a time: load layer i, collect its statistics on its inputs,
    call ``visit``, run it (as ``visit`` left it) to get layer i+1's inputs, yield it, release it.

    With ``ids=None`` (magnitude pruning) nothing runs: each layer is loaded, visited with no
    statistics, yielded and released.
    """
    from tqdm.auto import tqdm

    inputs = store.capture(ids, batch_size) if ids is not None else None
    for index in tqdm(range(len(store)), desc=description, disable=not progress):
        layer = store.load(index)
        stats: dict[str, InputStatistics] = {}
        if inputs is not None:
            for name, linear in layer_linears(layer):
                accumulator = make_stats(index, name, linear)
                if accumulator is not None:
                    stats[name] = accumulator
            _collect_statistics(layer, inputs, stats)
        visit(index, layer, stats)
        del stats
        if inputs is not None:
            inputs = _run_layer(layer, inputs)
        yield index, layer
        store.release(index, layer)


def tensor_targets(
    model: nn.Module, sparsity: float | None, per_layer: Mapping[int | str, float] | None
) -> dict[str, float]:
    """Target sparsity of every prunable tensor (module name -> sparsity)."""
    prefix, layers = decoder_layers(model)
    names = {
        f"{prefix}.{index}.{name}": index
        for index, layer in enumerate(layers)
        for name, _ in layer_linears(layer)
    }
    per_layer = dict(per_layer or {})
    unknown = [
        key for key in per_layer
        if (isinstance(key, int) and key >= len(layers)) or (isinstance(key, str) and key not in names)
    ]
    if unknown:
        raise ValueError(
            f"sparsity map names {unknown!r}, which are not pruned tensors or layer indices of "
            f"this model ({len(layers)} layers, tensors like {next(iter(names))!r})"
        )
    targets = {}
    for name, index in names.items():
        value = per_layer.get(name, per_layer.get(index, sparsity))
        if value is None:
            raise ValueError(f"no sparsity for tensor {name!r}: give sparsity= or cover it in the map")
        targets[name] = value
    return targets


def _owl_sparsity(
    store: LayerStore, ids: torch.Tensor, target: float, batch_size: int, threshold: float, lam: float,
    progress: bool,
) -> tuple[list[float], list[float]]:
    """OWL's first pass over the dense layers: the outlier ratio of each, and the layer sparsities."""
    ratios: list[float] = []

    def visit(index: int, layer: nn.Module, stats: dict[str, InputStatistics]) -> None:
        linears = dict(layer_linears(layer))
        ratios.append(outlier_ratio((wanda_scores(linears[n].weight, s) for n, s in stats.items()), threshold))

    for _ in _walk_layers(
        store, ids, batch_size,
        lambda index, name, linear: ColumnNormAccumulator(linear.in_features, linear.weight.device),
        visit, progress, "OWL outlier ratios",
    ):
        pass
    return owl_layer_sparsity(ratios, target, lam), ratios


def prune_layer_by_layer(
    store: LayerStore,
    calib_ids: torch.Tensor | None,
    method: str = "wanda",
    sparsity: float | None = 0.5,
    layer_sparsity: str | os.PathLike | Mapping[int | str, float] | None = None,
    nm: tuple[int, int] | str | None = None,
    *,
    batch_size: int = 8,
    magnitude_scope: str = "row",
    blocksize: int = 128,
    percdamp: float = 0.01,
    owl_threshold: float = 5.0,
    owl_lambda: float = 0.08,
    progress: bool = False,
) -> tuple[PruneReport, Iterator[tuple[int, nn.Module]]]:
    """Check the arguments, run OWL's dense pass if asked, and return the report with an iterator
    that prunes the layers of ``store`` in order, yielding (index, pruned layer) while the layer
    is loaded. The report's tensor list fills as the iterator advances. Arguments as ``prune_model``.
    """
    check_method(method)
    pattern = parse_nm(nm)
    if sparsity is not None:
        check_sparsity(sparsity)
    if pattern is not None:
        sparsity, _ = resolve_pattern(sparsity, pattern)
        if layer_sparsity is not None:
            raise ValueError("an N:M pattern fixes the sparsity of every tensor; layer_sparsity must be None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    use_owl = isinstance(layer_sparsity, str) and layer_sparsity == "owl"
    needs_data = method != "magnitude" or use_owl
    ids = None
    if needs_data:
        if calib_ids is None:
            raise ValueError(f"method {method!r}{' with OWL' if use_owl else ''} needs calibration token ids")
        ids = check_calibration_ids(calib_ids, getattr(store.model.config, "vocab_size", None))

    report = PruneReport(method=method, nm=pattern)
    per_layer: Mapping[int | str, float] | None = None
    if use_owl:
        if sparsity is None:
            raise ValueError("OWL needs the target sparsity (sparsity=...)")
        layer_values, ratios = _owl_sparsity(store, ids, sparsity, batch_size, owl_threshold, owl_lambda, progress)
        report.layer_sparsity, report.outlier_ratios = layer_values, ratios
        per_layer = dict(enumerate(layer_values))
    elif layer_sparsity is not None:
        per_layer = load_sparsity_map(layer_sparsity)
    targets = tensor_targets(store.model, sparsity, per_layer)
    prefix = store.prefix

    def prune_layer(index: int, layer: nn.Module, stats: dict[str, InputStatistics]) -> None:
        for name, linear in layer_linears(layer):
            full_name = f"{prefix}.{index}.{name}"
            target = targets[full_name]
            if target > 0:
                result = prune_weight(
                    linear.weight, method, None if pattern else target, stats.get(name),
                    nm=pattern, scope=magnitude_scope, blocksize=blocksize, percdamp=percdamp,
                )
                linear.weight.copy_(result.weight)
            achieved = float((linear.weight == 0).float().mean())
            report.tensors.append(TensorReport(full_name, tuple(linear.weight.shape), target, achieved))

    def make_stats(index: int, name: str, linear: nn.Linear) -> InputStatistics | None:
        if targets[f"{prefix}.{index}.{name}"] == 0:
            return None
        return statistics_for(method, linear.in_features, linear.weight.device)

    data = ids if method != "magnitude" else None
    layers = _walk_layers(store, data, batch_size, make_stats, prune_layer, progress, f"pruning ({method})")
    return report, layers


@torch.no_grad()
def prune_model(
    model: nn.Module,
    calib_ids: torch.Tensor | None,
    method: str = "wanda",
    sparsity: float | None = 0.5,
    layer_sparsity: str | os.PathLike | Mapping[int | str, float] | None = None,
    nm: tuple[int, int] | str | None = None,
    *,
    batch_size: int = 8,
    magnitude_scope: str = "row",
    blocksize: int = 128,
    percdamp: float = 0.01,
    owl_threshold: float = 5.0,
    owl_lambda: float = 0.08,
    progress: bool = False,
) -> PruneReport:
    """Prune the decoder linears of ``model`` in place and return a per-tensor report.

    ``calib_ids`` [nsamples, seqlen] (int) is required by Wanda, SparseGPT and OWL.
    ``layer_sparsity``: None (uniform ``sparsity``), ``"owl"``, or a sparsity map (JSON
    path or mapping, keys = layer indices or tensor names; entries not in the map use
    ``sparsity``). ``nm`` = (n, m) or "n:m" for N:M sparsity (uniform only).
    """
    store = ResidentLayers(model)
    was_training = model.training
    model.eval()
    try:
        report, layers = prune_layer_by_layer(
            store, calib_ids, method, sparsity, layer_sparsity, nm, batch_size=batch_size,
            magnitude_scope=magnitude_scope, blocksize=blocksize, percdamp=percdamp,
            owl_threshold=owl_threshold, owl_lambda=owl_lambda, progress=progress,
        )
        for _ in layers:
            pass
    finally:
        model.train(was_training)
    return report
