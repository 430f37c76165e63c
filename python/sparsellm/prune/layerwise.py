"""A causal LM whose weights stay in their files until a stage of pruning needs them.

``StreamedModel(config, session)`` instantiates the transformers model of ``config``
with every parameter on the meta device (no memory) and every buffer real (RoPE
``inv_freq`` is computed from the config, as transformers does when it loads a model).
Parameters are then read on demand, through ``session`` (a context manager yielding
``read(name) -> torch.Tensor``, e.g. ``HFCheckpoint.session``), converted to float32
on the compute device, and dropped back to the meta device when the stage ends:

* ``capture``: the modules outside the decoder layers that run before layer 0 (token
  and position embeddings, OPT's ``project_in``; not the LM head) are loaded, the model
  runs on the calibration ids until decoder layer 0, whose inputs are recorded, and
  they are released again;
* ``load(i)`` / ``release(i, layer)``: decoder layer i alone;
* ``whole_model()``: for sampling calibration ids from the model, the outside modules
  (LM head included) stay loaded and each decoder layer is loaded by a forward
  pre-hook and released by a forward hook, so one layer is resident at a time.

It is a ``LayerStore`` for ``sparsellm.prune.model.prune_layer_by_layer``: pruning
holds one decoder layer in float32, the calibration activations of two consecutive
layers (nsamples x seqlen x hidden x 4 bytes each) and the method's statistics (for
SparseGPT one Hessian in x in per linear), never the whole model. The computation is
the one ``prune_model`` does on a loaded float32 model, operation for operation, so
the pruned weights are identical on the same device.
"""

from __future__ import annotations

import copy
import ctypes
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from .model import LayerInput, _capture_layer_inputs, decoder_layers

TensorReader = Callable[[str], torch.Tensor]
TensorSession = Callable[[], AbstractContextManager[TensorReader]]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def return_free_memory() -> None:
    """Give the pages that the C heap holds free back to the system (glibc ``malloc_trim``).

    Layers and activations of a few MiB each are allocated and freed over and over; glibc's
    adaptive mmap threshold soon serves such sizes from the heap, where they fragment it, and
    the resident size then grows with the number of layers (measured: 12 MiB per layer of an
    OPT-125m shape). Trimming after each layer keeps it flat.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def default_device() -> torch.device:
    """The GPU when torch sees one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers stay real."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def empty_model(config: Any) -> nn.Module:
    """The float32 transformers causal LM of ``config``, parameters on meta, in eval mode.

    ``config`` is copied: transformers records the dtype in the config it builds from."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)
    return model.eval()


class StreamedModel:
    """A ``LayerStore`` reading parameters from weight files one stage at a time (module docstring)."""

    def __init__(self, config: Any, session: TensorSession, device: torch.device | str | None = None) -> None:
        try:
            self.device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"not a torch device: {device!r} ({exc})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU")
        self.model = empty_model(config)
        self.prefix, self.layers = decoder_layers(self.model)
        self._session = session
        # parameter path -> the path its tensor is stored under (tied parameters share the first)
        first: dict[int, str] = {}
        self._stored = {name: first.setdefault(id(p), name)
                        for name, p in self.model.named_parameters(remove_duplicate=False)}
        self._shapes = {name: tuple(p.shape) for name, p in self.model.named_parameters(remove_duplicate=False)}
        for module in self.model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.to(self.device)
        output = self.model.get_output_embeddings()
        self._head = next((name for name, m in self.model.named_modules() if m is output), None)
        self._outside = sorted({name.rpartition(".")[0] for name in self._stored
                                if not name.startswith(self.prefix + ".")})

    def __len__(self) -> int:
        return len(self.layers)

    # --- parameters in and out -------------------------------------------------------------

    def _under(self, modules: Sequence[str]) -> list[str]:
        return [name for name in self._stored if any(name.startswith(m + ".") for m in modules)]

    def _set(self, name: str, value: torch.Tensor) -> None:
        module_name, _, attr = name.rpartition(".")
        self.model.get_submodule(module_name)._parameters[attr] = nn.Parameter(value, requires_grad=False)

    def materialise(self, modules: Sequence[str]) -> None:
        """Read the parameters under the named modules, float32, onto the compute device."""
        loaded: dict[str, torch.Tensor] = {}
        with self._session() as read:
            for name in self._under(modules):
                source = self._stored[name]
                if source not in loaded:
                    tensor = read(source)
                    if tuple(tensor.shape) != self._shapes[name]:
                        raise ValueError(f"tensor {source} has shape {tuple(tensor.shape)}, "
                                         f"the model expects {self._shapes[name]}")
                    loaded[source] = tensor.to(dtype=torch.float32).to(self.device)
                    del tensor
                self._set(name, loaded[source])

    def release_modules(self, modules: Sequence[str]) -> None:
        """Put the parameters under the named modules back on the meta device (freeing them)."""
        for name in self._under(modules):
            self._set(name, torch.empty(self._shapes[name], dtype=torch.float32, device="meta"))
        return_free_memory()

    # --- the LayerStore interface ----------------------------------------------------------

    def load(self, index: int) -> nn.Module:
        """Decoder layer ``index`` with its parameters read, in float32 on the compute device."""
        self.materialise([f"{self.prefix}.{index}"])
        return self.layers[index]

    def release(self, index: int, layer: nn.Module | None = None) -> None:
        """Free decoder layer ``index``."""
        self.release_modules([f"{self.prefix}.{index}"])

    def capture(self, ids: torch.Tensor, batch_size: int) -> list[LayerInput]:
        """Inputs of decoder layer 0 on ``ids``; only the modules before the layers are loaded."""
        before = [name for name in self._outside if name != self._head]
        self.materialise(before)
        try:
            return _capture_layer_inputs(self.model, self.layers[0], ids, batch_size)
        finally:
            self.release_modules(before)

    @contextmanager
    def whole_model(self) -> Iterator[nn.Module]:
        """The model, runnable end to end with one decoder layer resident at a time."""
        def loader(index: int) -> Callable[..., None]:
            return lambda module, args: self.materialise([f"{self.prefix}.{index}"])

        def releaser(index: int) -> Callable[..., None]:
            return lambda module, args, output: self.release(index)

        handles = []
        for index, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(loader(index)))
            handles.append(layer.register_forward_hook(releaser(index)))
        try:
            self.materialise(self._outside)
            yield self.model
        finally:
            for handle in handles:
                handle.remove()
            self.release_modules(self._outside)
            for index in range(len(self.layers)):
                self.release(index)
