"""Reading and validating sparsellm checkpoints (layout: docs/checkpoint.md).

A checkpoint is a directory with ``config.json`` and one safetensors file per
tensor-parallel rank, ``rank{r}-of-{tp}.safetensors``. ``read_config`` checks the
description in config.json; ``load_checkpoint`` also checks one rank's file against it
(size, sha256, every component's presence, dtype and shape, the Tiled-CSL or bitmap
structure) and returns its arrays; ``dense_weights`` decodes them back to dense
matrices with the numpy reference decoders.

A generated checkpoint (``source.kind`` "generated", generated.py) is config.json alone:
``read_config`` accepts it (no files, shards without components, the seed and std the
runtime draws from); ``load_checkpoint`` and ``dense_weights``, which need stored arrays,
refuse it with InvalidArgument.

Needs numpy and safetensors only, plus torch for bfloat16 checkpoints (numpy has no
bfloat16: such values come back as their uint16 bit patterns).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sparsellm.errors import FormatError, InvalidArgument

from .tensor_parallel import shard_ranks

FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
STORED_DTYPES = ("float16", "bfloat16")
# Sparse formats: the key suffix of the data component beside ``<name>.tile_offsets``.
SPARSE_DATA_COMPONENT = {"tiled_csl": "words", "bitmap": "tiles", "split24": "tiles"}
TENSOR_FORMATS = ("dense", *SPARSE_DATA_COMPONENT)
_REQUIRED_FIELDS = {
    "format_version": int, "architecture": str, "model_config": dict, "dtype": str, "tp": int,
    "tensors": dict, "files": dict, "pruning": dict,
}


def rank_file_name(rank: int, tp: int) -> str:
    return f"rank{rank}-of-{tp}.safetensors"


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _check_components(name: str, entry: dict, dtype: str, rank: str) -> None:
    """The components config.json lists for one shard are those of the tensor's format."""
    components = entry["shards"][rank]["components"]
    if entry["format"] == "dense":
        wanted = {name: (dtype, list(entry["shape"]))}
    else:
        data = SPARSE_DATA_COMPONENT[entry["format"]]
        wanted = {f"{name}.tile_offsets": ("uint32", None), f"{name}.{data}": ("uint32", None)}
    if set(components) != set(wanted):
        raise FormatError(f"rank {rank}: components {sorted(components)}, expected {sorted(wanted)}")
    for key, (want_dtype, want_shape) in wanted.items():
        spec = components[key]
        shape = spec["shape"]
        shape_ok = shape == want_shape if want_shape is not None else isinstance(shape, list) and len(shape) == 1
        if spec["dtype"] != want_dtype or not shape_ok:
            raise FormatError(f"rank {rank}: component {key} is {spec}, expected dtype {want_dtype} and "
                              + (f"shape {want_shape}" if want_shape is not None else "a 1-D shape"))


def is_generated(config: dict[str, Any]) -> bool:
    """Whether config.json describes a generated checkpoint (``source.kind`` "generated")."""
    source = config.get("source")
    return isinstance(source, dict) and source.get("kind") == "generated"


def _check_generated_shard(entry: dict, rank: str) -> None:
    """A shard of a generated checkpoint stores nothing: its components are an empty object."""
    if entry["shards"][rank]["components"] != {}:
        raise FormatError(f"rank {rank}: a generated checkpoint stores no components")


def _check_entry(name: str, entry: dict, dtype: str, tp: int, generated: bool = False) -> None:
    """One tensor entry of config.json (raises FormatError, KeyError or TypeError)."""
    if entry["format"] not in TENSOR_FORMATS:
        raise FormatError(f"unknown format {entry['format']!r}")
    shape = entry["shape"]
    ranks_allowed = (2,) if entry["format"] in SPARSE_DATA_COMPONENT else (1, 2)
    if not (isinstance(shape, list) and len(shape) in ranks_allowed
            and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise FormatError(f"bad shape {shape!r} for format {entry['format']}")
    ranks = {str(r) for r in shard_ranks(entry["split"], tp)}
    if set(entry["shards"]) != ranks:
        raise FormatError(f"shards for ranks {sorted(entry['shards'])}, expected {sorted(ranks)}")
    for rank in ranks:
        if not isinstance(entry["shards"][rank]["nnz"], int):
            raise FormatError(f"rank {rank}: nnz is not an integer")
        if generated:
            _check_generated_shard(entry, rank)
        else:
            _check_components(name, entry, dtype, rank)


def _check_files(config: dict[str, Any], path: Path) -> None:
    """The "files" field lists every rank file, or nothing for a generated checkpoint (whose
    source must give the runtime a seed and a std to draw from)."""
    if not is_generated(config):
        files = {rank_file_name(r, config["tp"]) for r in range(config["tp"])}
        if set(config["files"]) != files:
            hint = ' (only a generated checkpoint, source.kind "generated", lists none)' if not config["files"] else ""
            raise FormatError(f"{path}: 'files' lists {sorted(config['files'])}, expected {sorted(files)}{hint}")
        return
    source = config["source"]
    if config["files"]:
        raise FormatError(f"{path}: a generated checkpoint lists rank files {sorted(config['files'])}")
    seed, std = source.get("seed"), source.get("std")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FormatError(f"{path}: source.seed of a generated checkpoint must be a non-negative integer, got {seed!r}")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < float("inf"):
        raise FormatError(f"{path}: source.std of a generated checkpoint must be a positive number, got {std!r}")


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``DIR/config.json``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a complete sparsellm checkpoint")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: unsupported format_version {version!r} (this sparsellm reads {FORMAT_VERSION})")
    for field, kind in _REQUIRED_FIELDS.items():
        if not isinstance(config.get(field), kind):
            raise FormatError(f"{path}: field {field!r} missing or not a {kind.__name__}")
    tp, dtype = config["tp"], config["dtype"]
    if tp < 1 or dtype not in STORED_DTYPES:
        raise FormatError(f"{path}: bad tp {tp!r} or dtype {dtype!r}")
    _check_files(config, path)
    generated = is_generated(config)
    for name, entry in config["tensors"].items():
        try:
            _check_entry(name, entry, dtype, tp, generated)
        except (KeyError, TypeError, InvalidArgument) as exc:
            raise FormatError(f"{path}: tensor {name}: malformed entry ({exc!r})") from None
        except FormatError as exc:
            raise FormatError(f"{path}: tensor {name}: {exc}") from None
    return config


def _check_file(path: Path, record: dict, verify_hash: bool) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise FormatError(f"{path}: {size} bytes, but config.json records {record.get('bytes')} (truncated or altered)")
    if verify_hash and file_sha256(path) != record.get("sha256"):
        raise FormatError(f"{path}: sha256 differs from config.json (corrupt file)")


def _read_arrays(path: Path, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy (bfloat16 as uint16 bits)."""
    from safetensors import SafetensorError, safe_open

    arrays: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = set(handle.keys())
            if keys != set(dtypes):
                missing, extra = sorted(set(dtypes) - keys), sorted(keys - set(dtypes))
                raise FormatError(f"{path}: tensors do not match config.json (missing {missing}, unexpected {extra})")
            for key, dtype in dtypes.items():
                if dtype != "bfloat16":
                    arrays[key] = handle.get_tensor(key)
        bf16 = [key for key, dtype in dtypes.items() if dtype == "bfloat16"]
        if bf16:
            import torch

            with safe_open(str(path), framework="pt") as handle:
                for key in bf16:
                    arrays[key] = handle.get_tensor(key).view(torch.int16).numpy().view(np.uint16)
    except SafetensorError as exc:
        raise FormatError(f"{path}: not a readable safetensors file: {exc}") from None
    return arrays


def load_checkpoint(
    directory: str | os.PathLike, rank: int = 0, *, verify_hash: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, {component key: array}) of one rank, after validating everything.

    Raises FileNotFoundError for a missing directory or file and FormatError (naming the
    file and tensor) for anything inconsistent: a file whose size or sha256 differs from
    config.json, missing or extra components, a wrong dtype or shape, malformed Tiled-CSL.
    A generated checkpoint, which stores no arrays, raises InvalidArgument.
    """
    from sparsellm._native import native

    directory = Path(directory)
    config = read_config(directory)
    if is_generated(config):
        raise InvalidArgument(f"{directory} is a generated checkpoint: its weights are drawn at load, none are stored")
    tp = config["tp"]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < tp:
        raise InvalidArgument(f"rank must be in [0, {tp}) for {directory}, got {rank!r}")
    file_name = rank_file_name(rank, tp)
    path = directory / file_name
    _check_file(path, config["files"][file_name], verify_hash)

    specs: dict[str, dict] = {}
    for name, entry in config["tensors"].items():
        if str(rank) in entry["shards"]:
            specs.update(entry["shards"][str(rank)]["components"])
    arrays = _read_arrays(path, {key: spec["dtype"] for key, spec in specs.items()})
    for key, spec in specs.items():
        if list(arrays[key].shape) != spec["shape"]:
            raise FormatError(f"{path}: tensor {key} has shape {list(arrays[key].shape)}, config.json says {spec['shape']}")

    for name, entry in config["tensors"].items():
        shard = entry["shards"].get(str(rank))
        if shard is None or entry["format"] not in SPARSE_DATA_COMPONENT:
            continue
        rows, cols = entry["shape"]
        offsets = arrays[f"{name}.tile_offsets"]
        words = arrays[f"{name}.{SPARSE_DATA_COMPONENT[entry['format']]}"]
        try:
            stored = getattr(native(), f"validate_{entry['format']}")(offsets, words, rows, cols)
        except FormatError as exc:
            kind = {"tiled_csl": "Tiled-CSL", "split24": "split 2:4"}.get(entry["format"], entry["format"])
            raise FormatError(f"{path}: tensor {name}: invalid {kind} data: {exc}") from None
        if stored != shard["nnz"]:
            raise FormatError(f"{path}: tensor {name} stores {stored} nonzeros, config.json says {shard['nnz']}")
    return config, arrays


def as_numpy_values(bits: np.ndarray, dtype: str) -> np.ndarray:
    """float16 bit patterns as float16; bfloat16 ones stay uint16 (numpy has no bfloat16)."""
    return bits.view(np.float16) if dtype == "float16" else bits.view(np.uint16)


def dense_weights(directory: str | os.PathLike, rank: int = 0) -> dict[str, np.ndarray]:
    """{tensor name: dense array} of one rank: float16, or uint16 bit patterns for bfloat16.

    A generated checkpoint has no weights to decode (InvalidArgument, from ``load_checkpoint``)."""
    from sparsellm.formats import decode_bitmap, decode_split24, decode_tiled_csl

    decoders = {"tiled_csl": decode_tiled_csl, "bitmap": decode_bitmap, "split24": decode_split24}

    config, arrays = load_checkpoint(directory, rank)
    dtype = config["dtype"]
    weights = {}
    for name, entry in config["tensors"].items():
        if str(rank) not in entry["shards"]:
            continue
        if entry["format"] == "dense":
            bits = arrays[name]
        else:
            rows, cols = entry["shape"]
            data = arrays[f"{name}.{SPARSE_DATA_COMPONENT[entry['format']]}"]
            bits = decoders[entry["format"]](arrays[f"{name}.tile_offsets"], data, rows, cols)
        weights[name] = as_numpy_values(bits, dtype)
    return weights
