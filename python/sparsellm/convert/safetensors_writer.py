"""Writing a safetensors file one array at a time.

``safetensors``' own writers take every tensor of a file at once, in memory; a rank
file of a large model does not fit. This writer appends each array to the file as it
comes and writes the header at the end, into space reserved at the start of the file.

The file is a standard safetensors file (read back with ``safetensors.safe_open``):

    8 bytes   N, little-endian uint64: the header length
    N bytes   header: JSON {key: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
              "__metadata__": {str: str}}, padded with spaces (0x20) to N
    data      the arrays back to back in the order written; offsets count from here

N is reserved up front from the keys and ranks of every array the file may hold
(``header_bound``), with each number at its widest (20 digits), and rounded up to a
multiple of 8 so that the data starts 8-byte aligned.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# safetensors dtype codes of the numpy dtypes the checkpoints hold; bfloat16 arrays are
# given as their uint16 bits together with dtype "BF16".
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "uint16": "U16", "uint32": "U32"}
_WIDEST_NUMBER = 2**64 - 1


def _entry(key: str, dtype: str, shape: Iterable[int], begin: int, end: int) -> str:
    value = {"dtype": dtype, "shape": [int(s) for s in shape], "data_offsets": [begin, end]}
    return json.dumps(key) + ":" + json.dumps(value, separators=(",", ":"))


def _header(entries: list[str], metadata: dict[str, str]) -> bytes:
    items = [json.dumps("__metadata__") + ":" + json.dumps(metadata, separators=(",", ":"))] + entries
    return ("{" + ",".join(items) + "}").encode()


def header_bound(components: Iterable[tuple[str, int]], metadata: dict[str, str]) -> int:
    """Bytes enough for the header of any file holding (a subset of) ``components``,
    given as (key, number of dimensions)."""
    widest = [_entry(key, "BF16", [_WIDEST_NUMBER] * ndim, _WIDEST_NUMBER, _WIDEST_NUMBER)
              for key, ndim in components]
    size = len(_header(widest, metadata))
    return -(-size // 8) * 8


class SafetensorsStreamWriter:
    """Append arrays to ``path``; ``close()`` writes the header. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, reserved_header: int, metadata: dict[str, str]) -> None:
        self.path = Path(path)
        self._reserved = reserved_header
        self._metadata = dict(metadata)
        self._entries: list[str] = []
        self._keys: set[str] = set()
        self._offset = 0
        self._file = open(self.path, "wb")
        self._file.seek(8 + self._reserved)

    def write(self, key: str, dtype: str, array: np.ndarray) -> None:
        """Append ``array`` under ``key``; ``dtype`` is a key of SAFETENSORS_DTYPES."""
        if key in self._keys:
            raise ValueError(f"{self.path}: tensor {key} written twice")
        data = np.ascontiguousarray(array)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        self._file.write(memoryview(data).cast("B"))
        end = self._offset + data.nbytes
        self._entries.append(_entry(key, SAFETENSORS_DTYPES[dtype], data.shape, self._offset, end))
        self._keys.add(key)
        self._offset = end

    def close(self) -> None:
        """Write the header into the reserved space and close the file."""
        if self._file.closed:
            return
        header = _header(self._entries, self._metadata)
        if len(header) > self._reserved:
            self._file.close()
            raise RuntimeError(f"{self.path}: header of {len(header)} bytes exceeds the {self._reserved} reserved")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self._reserved) + header + b" " * (self._reserved - len(header)))
        self._file.close()

    def abort(self) -> None:
        """Close without writing a header (the file is then not a valid safetensors file)."""
        self._file.close()

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
