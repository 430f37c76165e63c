"""Reading a Hugging Face model directory tensor by tensor, memory-mapped.

A directory holds ``config.json`` (read with ``transformers.AutoConfig``) and the
weights in one of four layouts, looked for in this order (file names are the
transformers constants):

* ``model.safetensors.index.json`` + shards, or ``model.safetensors``,
* ``pytorch_model.bin.index.json`` + shards, or ``pytorch_model.bin``.

Safetensors files are opened with ``safetensors.safe_open`` and ``.bin`` files with
``torch.load(mmap=True, weights_only=True)``: nothing is read until a tensor is asked
for, and then only that tensor is copied out. Files are opened for one ``session`` (the
converter uses one per tensor) and released at its end, so the mapped pages of earlier
tensors do not stay resident.

Tensor names are those of the transformers causal-LM class; a name stored without the
leading ``model.`` (as in some OPT checkpoints saved from the base model) is found too.
Other stored tensors (such as RoPE ``inv_freq`` buffers) are ignored.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsellm.errors import FormatError

# Tokenizer and generation files copied next to the converted weights when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def _weight_layouts() -> list[tuple[str, str, bool]]:
    """(file name, kind, is an index) in lookup order."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    return [
        (SAFE_WEIGHTS_INDEX_NAME, "safetensors", True),
        (SAFE_WEIGHTS_NAME, "safetensors", False),
        (WEIGHTS_INDEX_NAME, "bin", True),
        (WEIGHTS_NAME, "bin", False),
    ]


def load_hf_config(path: str | os.PathLike) -> Any:
    """``AutoConfig`` of a model directory or of a config.json file, with clear errors."""
    from transformers import AutoConfig

    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"{config_file}: not a usable transformers config: {exc}") from None


class HFCheckpoint:
    """The weights of a Hugging Face model directory."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {self.directory}")
        self.config = load_hf_config(self.directory)

    @property
    def kind(self) -> str:
        """'safetensors' or 'bin'."""
        return self._weights[0]

    @property
    def files(self) -> dict[str, Path]:
        """Stored tensor name -> file."""
        return self._weights[1]

    @functools.cached_property
    def _weights(self) -> tuple[str, dict[str, Path]]:
        """The weight format and a map stored tensor name -> file (found on first use)."""
        for file_name, kind, is_index in _weight_layouts():
            path = self.directory / file_name
            if not path.is_file():
                continue
            if is_index:
                return kind, self._read_index(path)
            return kind, {name: path for name in self._stored_names(path, kind)}
        names = ", ".join(name for name, _, _ in _weight_layouts())
        raise FileNotFoundError(f"{self.directory}: no weights found (looked for {names})")

    def _read_index(self, path: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FormatError(f"{path}: not a weight index (a JSON object with 'weight_map'): {exc}") from None
        files = {}
        for name, shard in weight_map.items():
            shard_path = self.directory / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"{path} maps tensor {name} to {shard_path}, which does not exist")
            files[name] = shard_path
        return files

    @staticmethod
    def _stored_names(path: Path, kind: str) -> list[str]:
        with _WeightFile(path, kind) as handle:
            return list(handle.keys())

    def stored_name(self, name: str) -> str:
        """The name under which the checkpoint stores parameter ``name``."""
        for candidate in (name, name.removeprefix("model.")):
            if candidate in self.files:
                return candidate
        raise FormatError(
            f"{self.directory}: tensor {name} is not in the weight files "
            f"({', '.join(sorted({p.name for p in self.files.values()}))})"
        )

    def shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        """Shapes of the named tensors, read from file headers only."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[self.stored_name(name)], []).append(name)
        shapes = {}
        for path, file_names in by_file.items():
            with _WeightFile(path, self.kind) as handle:
                for name in file_names:
                    shapes[name] = handle.shape(self.stored_name(name))
        return shapes

    @contextmanager
    def session(self) -> Iterator[Callable[[str], Any]]:
        """A reader ``name -> torch.Tensor`` (a copy); the files it opened close at exit."""
        handles: dict[Path, _WeightFile] = {}

        def read(name: str) -> Any:
            stored = self.stored_name(name)
            path = self.files[stored]
            if path not in handles:
                handles[path] = _WeightFile(path, self.kind).__enter__()
            return handles[path].tensor(stored)

        try:
            yield read
        finally:
            for handle in handles.values():
                handle.__exit__(None, None, None)

    def tokenizer_files(self) -> list[Path]:
        return [self.directory / name for name in TOKENIZER_FILES if (self.directory / name).is_file()]


class _WeightFile:
    """One open weight file: names, shapes and tensor copies."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self._handle: Any = None

    def __enter__(self) -> "_WeightFile":
        try:
            if self.kind == "safetensors":
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="pt")
            else:
                import torch

                self._handle = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
                if not isinstance(self._handle, dict):
                    raise ValueError(f"holds a {type(self._handle).__name__}, not a state dict")
        except Exception as exc:  # safetensors, pickle and zip errors all mean a bad file
            raise FormatError(f"{self.path}: cannot read {self.kind} weights: {exc}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.kind == "safetensors" and self._handle is not None:
            self._handle.__exit__(None, None, None)
        self._handle = None

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        if self.kind == "safetensors":
            return tuple(self._handle.get_slice(name).get_shape())
        return tuple(self._handle[name].shape)

    def tensor(self, name: str) -> Any:
        try:
            if self.kind == "safetensors":
                return self._handle.get_tensor(name)
            return self._handle[name].clone()
        except Exception as exc:
            raise FormatError(f"{self.path}: cannot read tensor {name}: {exc}") from None
