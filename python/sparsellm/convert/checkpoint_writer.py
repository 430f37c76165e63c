"""Writing a sparsellm checkpoint directory atomically.

Everything is written into a hidden temporary directory next to the output
(``.NAME.partial-XXXX``); ``config.json`` is written last, with each rank file's size and
sha256, and the directory is renamed to its final name only then. A conversion that
fails or is interrupted removes the temporary directory; one that is killed leaves at
most a hidden ``.partial`` directory, never a directory at the output path.

An existing output path is an error unless ``overwrite`` is set, and even then only an
empty directory or a sparsellm checkpoint (a directory whose config.json has a
``format_version``) is replaced; the old one is removed after the new one is in place.

A generated checkpoint (``rank_files=False``) goes through the same steps with config.json
alone: its "files" is empty.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_NAME, file_sha256, rank_file_name
from .safetensors_writer import SafetensorsStreamWriter, header_bound


def _is_checkpoint(path: Path) -> bool:
    try:
        return "format_version" in json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Raise FileExistsError unless ``out`` may be written; returns it as a Path."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        if not out.parent.is_dir():
            raise FileNotFoundError(f"parent directory of the output does not exist: {out.parent}")
        return out
    if not overwrite:
        raise FileExistsError(f"output {out} already exists (pass overwrite / --overwrite to replace it)")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not _is_checkpoint(out)):
        raise FileExistsError(f"output {out} exists and is not a sparsellm checkpoint; refusing to replace it")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CheckpointWriter:
    """Context manager: ``write`` components per rank, then ``commit(config)``.

    ``components[rank]`` lists (key, ndim) of every component that rank's file may get;
    it sizes the reserved safetensors header. ``rank_files=False``: no rank file is made,
    ``commit`` publishes config.json alone (a generated checkpoint).
    """

    def __init__(
        self, out: str | os.PathLike, tp: int, components: dict[int, list[tuple[str, int]]], overwrite: bool = False,
        *, rank_files: bool = True,
    ) -> None:
        self.out = check_output_dir(out, overwrite)
        self.tp = tp
        self.rank_files = rank_files
        self.overwrite = overwrite
        self._components = components
        self._temp: Path | None = None
        self._writers: dict[int, SafetensorsStreamWriter] = {}
        self._committed = False

    def __enter__(self) -> "CheckpointWriter":
        self._temp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        try:
            for rank in range(self.tp if self.rank_files else 0):
                metadata = {"format": "sparsellm", "rank": str(rank), "tp": str(self.tp)}
                reserve = header_bound(self._components.get(rank, []), metadata)
                path = self._temp / rank_file_name(rank, self.tp)
                self._writers[rank] = SafetensorsStreamWriter(path, reserve, metadata)
        except BaseException:  # __exit__ does not run when __enter__ fails
            self.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, rank: int, key: str, dtype: str, array: Any) -> None:
        self._writers[rank].write(key, dtype, array)

    def commit(self, config: dict[str, Any], copy_files: list[Path] = ()) -> dict[str, Any]:
        """Finish the rank files, write config.json (with "files" filled in), publish the directory."""
        assert self._temp is not None, "commit() outside the context"
        files = {}
        for rank, writer in self._writers.items():
            writer.close()
            files[writer.path.name] = {"rank": rank, "bytes": writer.path.stat().st_size,
                                       "sha256": file_sha256(writer.path)}
        config = {**config, "files": files, "copied_files": [p.name for p in copy_files]}
        for path in copy_files:
            shutil.copyfile(path, self._temp / path.name)
        (self._temp / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        os.chmod(self._temp, 0o777 & ~_umask())
        self._publish()
        self._committed = True
        return config

    def _publish(self) -> None:
        check_output_dir(self.out, self.overwrite)  # it may have appeared meanwhile
        if not self.out.exists():
            os.rename(self._temp, self.out)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.replaced-", dir=self.out.parent))
        old = trash / "old"
        try:
            os.rename(self.out, old)
            os.rename(self._temp, self.out)
        except BaseException:  # put the old checkpoint back
            if old.exists() and not self.out.exists():
                os.rename(old, self.out)
            raise
        finally:
            if self.out.exists():
                shutil.rmtree(trash, ignore_errors=True)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._committed:
            return
        for writer in self._writers.values():
            writer.abort()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
