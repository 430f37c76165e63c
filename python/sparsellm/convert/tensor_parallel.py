"""Splitting a tensor across tensor-parallel ranks.

Every tensor has one split rule (the ``"split"`` field of a checkpoint tensor):

* ``rows``: split along dim 0 into ``tp`` equal contiguous blocks, block r to rank r.
  Column-parallel linears (their weight rows are output features) and their biases.
* ``columns``: split along dim 1 into ``tp`` equal contiguous blocks. Row-parallel
  linears (their weight columns are input features).
* ``rank0``: kept whole, on rank 0 only. Biases of row-parallel linears: every rank
  computes a partial output, the partial outputs are summed (all-reduce), and the bias
  is added once.
* ``replicated``: kept whole on every rank (embeddings, norms, LM head).

Because heads are stored consecutively in q/k/v rows (and in the input columns of the
attention output projection), contiguous blocks hold whole heads whenever ``tp``
divides the head counts; with ``tp`` dividing the key/value head count, rank r holds
KV heads [r*KV/tp, (r+1)*KV/tp) and exactly the query heads that attend to them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sparsellm.errors import InvalidArgument

SPLITS = ("rows", "columns", "rank0", "replicated")


def _split_axis(split: str) -> int | None:
    if split not in SPLITS:
        raise InvalidArgument(f"unknown split rule {split!r}; expected one of {', '.join(SPLITS)}")
    return {"rows": 0, "columns": 1}.get(split)


def shard_ranks(split: str, tp: int) -> list[int]:
    """The ranks that hold a tensor with this split rule."""
    _split_axis(split)
    return [0] if split == "rank0" else list(range(tp))


def shard_shape(shape: tuple[int, ...], split: str, tp: int, name: str = "tensor") -> tuple[int, ...]:
    """Shape of one rank's shard (all shards of a tensor have the same shape)."""
    axis = _split_axis(split)
    if axis is None:
        return tuple(shape)
    if len(shape) <= axis or shape[axis] % tp:
        raise InvalidArgument(f"{name}: shape {tuple(shape)} cannot be split {tp} ways along dim {axis}")
    out = list(shape)
    out[axis] //= tp
    return tuple(out)


def split_tensor(array: np.ndarray, split: str, tp: int, name: str = "tensor") -> Iterator[tuple[int, np.ndarray]]:
    """(rank, contiguous shard of ``array``) for each rank holding it, one shard made at a time."""
    axis = _split_axis(split)
    if axis is None:
        yield from ((rank, array) for rank in shard_ranks(split, tp))
        return
    size = shard_shape(array.shape, split, tp, name)[axis]
    index = [slice(None)] * array.ndim
    for rank in range(tp):
        index[axis] = slice(rank * size, (rank + 1) * size)
        yield rank, np.ascontiguousarray(array[tuple(index)])
