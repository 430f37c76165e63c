"""All-reduce latency of the tensor-parallel communicator, peer-to-peer kernel against NCCL.

    mpirun -n 4 python -m sparsellm.bench allreduce --out DIR

Every rank joins two communicators, one with the peer-to-peer kernel (``SPARSELLM_PEER_ALL_REDUCE``
unset; NCCL where the GPUs cannot reach each other) and one with NCCL alone
(``SPARSELLM_PEER_ALL_REDUCE=0``). For each message size, a CUDA graph of ``--calls`` in-place
all-reduces of fresh random fp16 data is replayed ``--reps`` times after a barrier; the time per
all-reduce is the median replay over the calls (CUDA events on rank 0's stream, the ranks released
together). A decode step of Llama-2-70B at tp 4 all-reduces 8,192 values per token.

Writes DIR/allreduce-<gpu>-tp<W>.json and .md on rank 0.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
from pathlib import Path

SIZES = "8192,32768,131072,524288,1048576,4194304"  # fp16 elements: 16 KiB to 8 MiB


def add_arguments(p) -> None:
    p.add_argument("--out", default="results", help="output directory (default results)")
    p.add_argument("--sizes", default=SIZES, help="comma-separated fp16 element counts")
    p.add_argument("--calls", type=int, default=50, help="all-reduces per timed graph")
    p.add_argument("--reps", type=int, default=20, help="timed replays per size and path")


def run(args) -> int:
    import torch
    from mpi4py import MPI

    from sparsellm._native import native, require_gpu
    from sparsellm.bench.spmm import _commit
    from sparsellm.format_choice import gpu_tag

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if world < 2:
        raise SystemExit("bench allreduce runs under mpirun with at least 2 ranks")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    torch.cuda.set_device(local.Get_rank())
    local.Free()
    gpu = require_gpu()
    C = native()
    nccl_ids = comm.bcast([C.nccl_unique_id(), C.nccl_unique_id()] if rank == 0 else None, root=0)
    paths = {}
    for name, nccl_id, switch in (("peer", nccl_ids[0], None), ("nccl", nccl_ids[1], "0")):
        if switch is None:
            os.environ.pop("SPARSELLM_PEER_ALL_REDUCE", None)
        else:
            os.environ["SPARSELLM_PEER_ALL_REDUCE"] = switch
        paths[name] = C.Communicator(rank, world, nccl_id)
    os.environ.pop("SPARSELLM_PEER_ALL_REDUCE", None)

    stream = torch.cuda.Stream()
    gen = torch.Generator(device="cuda").manual_seed(rank)
    records = []
    for count in (int(v) for v in args.sizes.split(",")):
        x = torch.randn(count, device="cuda", dtype=torch.float16, generator=gen)
        for name, c in paths.items():
            if name == "peer" and not c.uses_peer_all_reduce:
                continue
            us = _time_path(torch, comm, c, x, stream, args.calls, args.reps)
            kernel = "peer" if c.takes_peer_path(count) else "nccl"
            records.append(dict(path=name, kernel=kernel, count=count, bytes=count * 2, us=round(us, 2),
                                bus_gbps=round(2 * (world - 1) / world * count * 2 / (us * 1e-6) / 1e9, 1)))
            if rank == 0:
                print(f"{name:5s} {count * 2:>9d} B  {us:8.2f} us", flush=True)
    for c in paths.values():
        c.close()
    if rank != 0:
        return 0
    doc = dict(gpu=gpu["name"], world=world, commit=_commit(), date=datetime.date.today().isoformat(),
               peer_max_bytes=C.PEER_ALL_REDUCE_MAX_BYTES, records=records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"allreduce-{gpu_tag(gpu['name'])}-tp{world}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{stem}.md").write_text(summary_markdown(doc))
    print(summary_markdown(doc))
    return 0


def _time_path(torch, comm, c, x, stream, calls: int, reps: int) -> float:
    """Median µs per all-reduce: a graph of `calls` in-place all-reduces, replayed `reps` times."""
    ptr, count = x.data_ptr(), x.numel()
    with torch.cuda.stream(stream):
        c.all_reduce_sum(ptr, count, "float16", stream.cuda_stream)  # eager first: NCCL connects outside capture
        c.synchronize(stream.cuda_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                c.all_reduce_sum(ptr, count, "float16", stream.cuda_stream)
        times = []
        for _ in range(reps):
            x.normal_()  # fresh data each replay (the sums grow otherwise)
            c.synchronize(stream.cuda_stream)
            comm.Barrier()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            graph.replay()
            end.record(stream)
            c.synchronize(stream.cuda_stream)
            times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def summary_markdown(doc) -> str:
    lines = [f"# All-reduce on {doc['world']} × {doc['gpu']} (commit {doc['commit']}, {doc['date']})", "",
             "In-place fp16 sum, µs per all-reduce (median of graph replays of back-to-back calls); "
             "bus GB/s = 2 (W − 1) / W × bytes / time.", "",
             "| bytes | path | kernel | µs | bus GB/s |", "|---|---|---|---|---|"]
    for r in sorted(doc["records"], key=lambda r: (r["bytes"], r["path"])):
        lines.append(f"| {r['bytes']} | {r['path']} | {r['kernel']} | {r['us']:.2f} | {r['bus_gbps']:.1f} |")
    return "\n".join(lines) + "\n"
