"""The model families the converter reads, and their tensor-parallel rules.

Two layouts are supported, named after the checkpoint's ``"architecture"`` field:

* ``opt``: OPTForCausalLM (``model_type`` "opt").
* ``llama``: LlamaForCausalLM and models with the same decoder layout
  (``model_type`` "llama", "mistral", "qwen2").

Per family, the decoder linears are either column-parallel (their output rows are
split across ranks: attention q/k/v and the first FFN projections) or row-parallel
(their input columns are split: the attention output projection and the last FFN
projection). Every linear inside a decoder layer must fall in one of the two groups;
everything else (embeddings, norms, LM head) is replicated. Linears that read the same input
(q/k/v; Llama's gate/up) are ``stacked``: the runtime multiplies them as one weight when
their formats agree, so ``--format auto`` chooses their format by the stacked shape.

Tensor parallelism over ``tp`` ranks needs whole attention heads per rank, whole
key/value heads (hence whole GQA groups) per rank, and an even split of the FFN:
``parallel_sizes`` lists the sizes ``tp`` must divide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sparsellm.errors import InvalidArgument
from sparsellm.formats.tiled_csl import TILE_M


@dataclass(frozen=True)
class Architecture:
    """One supported model family."""

    name: str
    model_types: tuple[str, ...]
    column_parallel: tuple[str, ...]  # linear module names relative to a decoder layer
    row_parallel: tuple[str, ...]
    parallel_sizes: Callable[[Any], dict[str, int]]  # config -> {description: size}
    # Linears that read the same input, which the runtime stacks into one product when
    # their formats agree (Linear::stack in cpp/src/layers/linear.h).
    stacked: tuple[tuple[str, ...], ...] = ()

    def linear_split(self, module: str) -> str | None:
        """'rows' for a column-parallel linear, 'columns' for a row-parallel one, else None."""
        if module in self.column_parallel:
            return "rows"
        if module in self.row_parallel:
            return "columns"
        return None

    def stacked_group(self, module: str) -> tuple[str, ...]:
        """The full module names of the stacked group a linear (its full module name, e.g.
        "model.layers.3.self_attn.q_proj") belongs to, in stacking order; () if none."""
        for group in self.stacked:
            for member in group:
                if module.endswith("." + member):
                    prefix = module[: -len(member)]
                    return tuple(prefix + m for m in group)
        return ()


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def sparse_rows_stack(rows: list[int]) -> bool:
    """Whether sparse parts of these row counts stack (Linear::stack): by whole tile rows, so
    every part but the last has a multiple of 128 rows. Dense parts stack whatever their rows."""
    return all(r % TILE_M == 0 for r in rows[:-1])


def _opt_sizes(config: Any) -> dict[str, int]:
    return {
        "attention heads (num_attention_heads)": int(config.num_attention_heads),
        "FFN size (ffn_dim)": int(config.ffn_dim),
    }


def _llama_sizes(config: Any) -> dict[str, int]:
    heads = int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None)
    return {
        "attention heads (num_attention_heads)": heads,
        "key/value heads (num_key_value_heads)": int(kv_heads if kv_heads is not None else heads),
        "FFN size (intermediate_size)": int(config.intermediate_size),
    }


ARCHITECTURES: dict[str, Architecture] = {
    "opt": Architecture(
        name="opt",
        model_types=("opt",),
        column_parallel=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "fc1"),
        row_parallel=("self_attn.out_proj", "fc2"),
        parallel_sizes=_opt_sizes,
        stacked=(QKV,),
    ),
    "llama": Architecture(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        column_parallel=(
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj",
        ),
        row_parallel=("self_attn.o_proj", "mlp.down_proj"),
        parallel_sizes=_llama_sizes,
        stacked=(QKV, ("mlp.gate_proj", "mlp.up_proj")),
    ),
}

SUPPORTED_MODEL_TYPES = tuple(t for arch in ARCHITECTURES.values() for t in arch.model_types)


def architecture_of(config: Any, where: str) -> Architecture:
    """The family of a transformers config; ``where`` names its file in error messages."""
    model_type = getattr(config, "model_type", None)
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    raise InvalidArgument(
        f"{where}: unsupported architecture (model_type {model_type!r}); "
        f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def check_tensor_parallel(config: Any, arch: Architecture, tp: int, where: str) -> None:
    """Raise InvalidArgument unless ``tp`` splits heads, KV heads and the FFN evenly."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InvalidArgument(f"tensor parallelism must be a positive integer, got {tp!r}")
    for what, size in arch.parallel_sizes(config).items():
        if size % tp:
            raise InvalidArgument(
                f"{where}: tensor parallelism {tp} does not divide the {what} = {size}; "
                "each rank must hold whole heads and an equal share of the FFN"
            )
