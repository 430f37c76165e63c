"""What a checkpoint of a given model holds: every tensor's name, shape, layer and split.

The list comes from the transformers model class itself, instantiated on the meta
device (no memory, no weights): its parameters, with tied ones listed once (a tied
LM head is stored only as the token embedding). Parameter names are those of the
Hugging Face causal-LM class (``model.decoder.layers.0.fc1.weight``, ...).

Pruned tensors are the weights of the linears inside decoder layers, exactly those
``sparsellm.prune.prune_model`` prunes; their module names (without ``.weight``) are
the keys of per-tensor sparsity targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sparsellm.errors import InvalidArgument

from .architectures import Architecture, sparse_rows_stack
from .tensor_parallel import shard_ranks, shard_shape


@dataclass(frozen=True)
class TensorPlan:
    """One stored tensor of the model."""

    name: str
    shape: tuple[int, ...]
    layer: int | None  # decoder layer index, None outside the decoder layers
    split: str  # see tensor_parallel.py
    module: str | None = None  # the linear's module name when this is a pruned weight

    @property
    def pruned(self) -> bool:
        return self.module is not None

    def ranks(self, tp: int) -> list[int]:
        return shard_ranks(self.split, tp)

    def shard_shape(self, tp: int) -> tuple[int, ...]:
        return shard_shape(self.shape, self.split, tp, self.name)


@dataclass
class ModelPlan:
    """The tensors of a model in storage order (that of the model's parameters), with the
    meta-device model they came from."""

    arch: Architecture
    config: Any
    tensors: list[TensorPlan]
    meta_model: Any  # torch.nn.Module on the meta device

    def groups(self) -> list[list[TensorPlan]]:
        """The order of conversion, in groups read together: each tensor outside the decoder
        layers on its own (embeddings and LM head are the largest tensors), then one group
        per decoder layer."""
        outside = [[t] for t in self.tensors if t.layer is None]
        layers = sorted({t.layer for t in self.tensors if t.layer is not None})
        return outside + [[t for t in self.tensors if t.layer == index] for index in layers]

    def choice_shape(self, item: TensorPlan, tp: int) -> tuple[int, ...]:
        """The [M, K] a rank multiplies ``item`` as: its shard, or for a linear of a stacked
        group (``Architecture.stacked``) the group's shards stacked by rows, where sparse
        parts of those rows would stack (``sparse_rows_stack``)."""
        shape = item.shard_shape(tp)
        group = self.arch.stacked_group(item.module) if item.module is not None else ()
        rows = [self._by_name[f"{module}.weight"].shard_shape(tp)[0] for module in group]
        if not group or not sparse_rows_stack(rows):
            return shape
        return (sum(rows), *shape[1:])

    @cached_property
    def _by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}

    @property
    def pruned(self) -> list[TensorPlan]:
        return [t for t in self.tensors if t.pruned]


def meta_model(config: Any) -> Any:
    """The transformers causal LM of ``config`` on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_plan(config: Any, arch: Architecture) -> ModelPlan:
    """Plan the tensors of the model described by ``config``."""
    from sparsellm.prune import decoder_layers, layer_linears

    model = meta_model(config)
    prefix, layers = decoder_layers(model)
    linear_splits: dict[str, tuple[int, str]] = {}  # module name -> (layer, split)
    for index, layer in enumerate(layers):
        for name, _ in layer_linears(layer):
            split = arch.linear_split(name)
            if split is None:
                raise InvalidArgument(
                    f"{arch.name}: decoder linear {name!r} has no tensor-parallel rule "
                    f"(column-parallel: {arch.column_parallel}, row-parallel: {arch.row_parallel})"
                )
            linear_splits[f"{prefix}.{index}.{name}"] = (index, split)

    layer_prefix = prefix + "."
    tensors = []
    for name, parameter in model.named_parameters():
        module, _, kind = name.rpartition(".")
        shape = tuple(int(s) for s in parameter.shape)
        if module in linear_splits:
            index, split = linear_splits[module]
            if kind == "weight":
                tensors.append(TensorPlan(name, shape, index, split, module))
            else:  # bias: split with the rows, or added once after the all-reduce
                tensors.append(TensorPlan(name, shape, index, "rows" if split == "rows" else "rank0"))
            continue
        index = int(name[len(layer_prefix):].split(".")[0]) if name.startswith(layer_prefix) else None
        tensors.append(TensorPlan(name, shape, index, "replicated"))
    return ModelPlan(arch, config, tensors, model)
