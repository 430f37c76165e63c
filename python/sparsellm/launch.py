"""Tensor parallelism under mpirun: one process per GPU, all running one model.

    mpirun -n 2 python -m sparsellm generate --model opt66b-80-tp2 --prompt "Sparse weights are"
    mpirun -n 2 python my_script.py          # my_script: sparsellm.LLM(path) as on one GPU

``sparsellm.LLM(path)`` calls :func:`setup_tensor_parallel`: under mpirun (``tp=None`` detects the
world size from the launcher's environment) every rank

1. checks, before any GPU work, that the checkpoint's ``tp`` equals the world size, that the
   head count and FFN size divide by it and that its own ``rank{r}-of-{tp}.safetensors`` exists
   (``sparsellm._C.tensor_parallel_error``, the runtime's own check), and that its local rank has
   a GPU; the ranks exchange their results (``allgather`` over MPI), so a problem on any rank
   raises the same :class:`TensorParallelError` on every rank, listing each failing rank;
2. takes rank 0's NCCL unique id (``bcast`` over MPI, mpi4py) and its device = its rank among
   the processes of its host (``MPI_Comm_split_type(SHARED)``);
3. installs an exception hook: an uncaught error on one rank alone ends the whole job
   (``MPI_Abort``) instead of leaving the other ranks waiting in a collective.

The C++ runtime then joins the NCCL communicator, loads only this rank's shard and runs the same
steps as every other rank; every rank returns the same tokens (rank 0 is the one to print them).
A rank whose peer died stops within SPARSELLM_COMM_TIMEOUT_S seconds at most (default 120) and
mpirun normally ends the job as soon as a rank exits with an error.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from sparsellm.errors import InvalidArgument

# Environment variables holding the world size, as set by Open MPI, MPICH / Intel MPI (Hydra),
# MVAPICH.
_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class TensorParallelError(InvalidArgument):
    """A checkpoint or launch that does not fit the world; raised alike on every rank."""


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel run."""

    rank: int
    world: int
    local_rank: int
    device: int
    nccl_id: bytes
    comm: Any  # mpi4py.MPI.Intracomm (COMM_WORLD)


def launcher_world_size() -> int:
    """The number of processes the MPI launcher started (1 outside mpirun)."""
    for name in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value:
            try:
                return max(int(value), 1)
            except ValueError:
                pass
    return 1


def mpi():
    """mpi4py's MPI module; TensorParallelError naming what is missing without it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise TensorParallelError(
            f"tensor parallelism needs mpi4py (pip install mpi4py, with an MPI such as Open MPI installed) and "
            f"a launch with mpirun -n <tp>: {exc}") from None
    return MPI


def _check_tp(tp) -> None:
    if tp is not None and (isinstance(tp, bool) or not isinstance(tp, int) or tp < 1):
        raise InvalidArgument(f"tp must be a positive integer or None (detect under mpirun), got {tp!r}")


def check_launch(path: str | os.PathLike, tp: int | None = None):
    """The checks of :func:`setup_tensor_parallel` that need no GPU: ``tp`` against the world size,
    then the checkpoint against the world (tp, divisibility, this rank's file). Collective; raises the
    same TensorParallelError on every rank. Returns (MPI module, COMM_WORLD), or None when no tensor
    parallelism applies."""
    _check_tp(tp)
    launched = launcher_world_size()
    if tp == 1 or (tp is None and launched == 1):
        return None
    from sparsellm._native import native

    MPI = mpi()
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    wanted = world if tp is None else tp
    error = ""
    if wanted != world:
        error = (f"tp = {wanted} was asked for, but mpirun started {world} process(es); run with "
                 f"mpirun -n {wanted}")
    if not error:
        error = native().tensor_parallel_error(str(path), rank, world)
    _agree(comm, error, path, world)
    return MPI, comm


def setup_tensor_parallel(path: str | os.PathLike, tp: int | None = None) -> TensorParallel | None:
    """Bootstraps this rank for the checkpoint at ``path``; None when no tensor parallelism applies.

    ``tp=None``: the world size of the launcher (1 outside mpirun: a plain single-GPU run).
    ``tp=N``: must equal the world size. ``tp=1`` under mpirun runs an independent model per
    process. Collective over MPI.COMM_WORLD when the world size exceeds 1.
    """
    checked = check_launch(path, tp)
    if checked is None:
        return None
    from sparsellm._native import native

    lib = native()
    MPI, comm = checked
    rank, world = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank = local.Get_rank()
    local.Free()
    devices = lib.device_count()
    error = "" if local_rank < devices else (
        f"this process has local rank {local_rank}, but its host has {devices} GPU(s): tensor parallelism runs "
        "one process per GPU")
    _agree(comm, error, path, world)

    nccl_id = None
    id_error = ""
    if rank == 0:
        try:
            nccl_id = lib.nccl_unique_id()
        except Exception as exc:  # NcclError: no usable network interface, ...
            id_error = str(exc)
    id_error = comm.bcast(id_error, root=0)
    if id_error:
        raise TensorParallelError(f"rank 0 could not create the NCCL id: {id_error}")
    nccl_id = comm.bcast(nccl_id, root=0)
    _install_abort_hook(comm)
    return TensorParallel(rank=rank, world=world, local_rank=local_rank, device=local_rank, nccl_id=nccl_id,
                          comm=comm)


def _agree(comm, error: str, path, world: int) -> None:
    """Collective: raises the same TensorParallelError on every rank when any rank has an error."""
    errors = comm.allgather(error)
    if not any(errors):
        return
    lines = [f"rank {r}: {e}" for r, e in enumerate(errors) if e]  # the same message on every rank
    raise TensorParallelError(f"tensor-parallel launch of {path} over {world} ranks failed:\n" + "\n".join(lines))


def abort_job(comm, code: int = 1) -> None:
    """Ends every rank of the job (after an error on this rank alone, which would leave the others
    waiting for it in a collective)."""
    sys.stdout.flush()
    sys.stderr.flush()
    comm.Abort(code)


_hook_installed = False


def _install_abort_hook(comm) -> None:
    """An uncaught exception on one rank ends the job, except a TensorParallelError (every rank has it)."""
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        if not issubclass(kind, (TensorParallelError, KeyboardInterrupt)):
            abort_job(comm, 1)

    sys.excepthook = hook


class abort_job_on_error:
    """Context manager for code that runs on every rank of a tensor-parallel job: an exception on
    this rank alone (not a TensorParallelError, which every rank raises alike) is printed and ends
    the job at once (MPI_Abort), instead of leaving the other ranks waiting for this one in a
    collective. Outside mpirun, or before MPI was started, it does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None or issubclass(kind, (TensorParallelError, KeyboardInterrupt)):
            return False
        if launcher_world_size() > 1 and "mpi4py.MPI" in sys.modules:
            MPI = sys.modules["mpi4py.MPI"]
            if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
                print(f"rank {MPI.COMM_WORLD.Get_rank()}: error: {kind.__name__}: {value}; ending the job",
                      file=sys.stderr, flush=True)
                abort_job(MPI.COMM_WORLD, 1)
        return False


def rank0_stdout(rank: int):
    """Context manager: standard output of ranks other than 0 is dropped (every rank has the same
    results; rank 0 prints them)."""
    import contextlib

    if rank == 0:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(open(os.devnull, "w"))
