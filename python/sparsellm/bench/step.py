"""Where a decode step's time goes: ``python -m sparsellm.bench step --out DIR``.

Generates with a random-weight model (``write_generated``: nothing to download) under
PyTorch's profiler (CUPTI kernel records, CUDA graphs replayed as in ``bench e2e``) and
splits each decode step among its kernels. Kernels of a step overlap (chained launches:
an SpMM's blocks start streaming weights while the kernel before it ends), so a kernel's
duration says little about what it costs the step. Each kernel is charged instead with
what it adds to the step's span, in stream order:

    cost_i = end_i − max(end_j for j < i in the step)      (≥ 0; the step's first cost counts
                                                             from the previous step's end)

so the costs of a step sum to its span. Kernels are grouped by kind (SpMM per format,
cuBLAS GEMM, norm, rotary, attention, …) and the linear layers' kernels by role within
the layer (qkv, o, gate_up, down for Llama; qkv, out_proj, fc1, fc2 for OPT; lm_head).
The step's floor is the weight bytes ÷ the copy rate measured in the same run.

Writes step-<gpu>.json ({"gpu", "commit", "date", "copy_gbps", "records": [{model, format,
sparsity, batch, steps, step_ms, unprofiled_step_ms, weight_bytes,
kernels: [{group, role, calls, cost_us, duration_us}]}]})
and step-<gpu>.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

ROLES = {"llama": ("qkv", "o", "gate_up", "down"), "opt": ("qkv", "out_proj", "fc1", "fc2")}

SPLIT_K_SUM = "splitKreduce"  # cuBLAS's split-K reduction: part of the GEMM before it

# (substring of the kernel's name, group), first match wins
GROUPS = (
    ("spmm_split24", "spmm split24"), ("spmm_bitmap", "spmm bitmap"), ("spmm_tiled_csl", "spmm tiled_csl"),
    (SPLIT_K_SUM, "cublas gemm"), ("nvjet", "cublas gemm"), ("gemm", "cublas gemm"), ("xmma", "cublas gemm"),
    ("cutlass", "cublas gemm"), ("norm", "norm"), ("rope", "rotary + kv write"), ("kv_cache", "kv write"),
    ("attention_combine", "attention combine"), ("attention", "attention"), ("all_reduce", "all-reduce"),
    ("nccl", "all-reduce"), ("embedding", "embedding"), ("sampl", "sampling"), ("activation", "activation"),
    ("decode_bookkeeping", "bookkeeping"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="output directory (default results)")
    p.add_argument("--model", default="llama-2-7b", help="a shape of sparsellm.convert.NAMED_CONFIGS")
    p.add_argument("--formats", default="dense,split24", help="comma-separated; dense is sparsity 0")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=16, help="decode steps profiled (after a warm-up generate)")
    p.add_argument("--max-seq-len", type=int,
                   help="the runtime's max sequence length, which sets the decode attention's split "
                        "(default prompt + 128, as bench e2e's default run)")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--seed", type=int, default=1234)


def group_of(name: str) -> str:
    low = name.lower()
    return next((g for key, g in GROUPS if key.lower() in low), "other")


def is_linear(group: str) -> bool:
    return group.startswith("spmm") or group == "cublas gemm"


def step_costs(kernels: list[tuple[str, float, float]], family: str, layers: int) -> list[list[dict]]:
    """kernels: (name, start_us, end_us) of one stream, sorted by start. Returns per decode step
    its kernels with group, role and cost (module docstring). A pass (prefill or decode step)
    ends with the bookkeeping kernel after its sampling; the first pass (the prefill) is dropped,
    and so is any pass with fewer linear kernels than the most seen. Roles are named where a pass
    has one linear kernel per role and layer plus the LM head (projections stacked, as the runtime
    does), else left empty."""
    ends = [i for i, k in enumerate(kernels) if group_of(k[0]) == "bookkeeping"]
    roles = ROLES.get(family, ())
    passes = []
    for s, e in zip(ends, ends[1:]):
        prev_end = max(k[2] for k in kernels[:s + 1])
        rows, linear = [], -1
        for name, start, end in kernels[s + 1:e + 1]:
            group = group_of(name)
            if is_linear(group) and SPLIT_K_SUM not in name:
                linear += 1
            rows.append(dict(name=name, group=group, linear=linear if is_linear(group) else -1,
                             duration_us=end - start, cost_us=max(0.0, end - prev_end)))
            prev_end = max(prev_end, end)
        passes.append((linear + 1, rows))
    most = max((n for n, _ in passes), default=0)
    named = bool(roles) and most == len(roles) * layers + 1
    for n, rows in passes:
        for r in rows:
            i = r.pop("linear")
            r["role"] = "" if i < 0 or not named else "lm_head" if i == most - 1 else roles[i % len(roles)]
    return [rows for n, rows in passes if n == most]


def kernel_names(steps: list[list[dict]]) -> dict[str, list[str]]:
    """The distinct kernel names of each group (shortened), to check the grouping by."""
    names = defaultdict(set)
    for rows in steps:
        for r in rows:
            names[r["group"]].add(r["name"][:120])
    return {g: sorted(v) for g, v in sorted(names.items())}


def summarize(steps: list[list[dict]]) -> list[dict]:
    """Per (group, role): calls per step, and the median over steps of their summed cost and duration."""
    per_step = [defaultdict(lambda: [0, 0.0, 0.0]) for _ in steps]
    for acc, rows in zip(per_step, steps):
        for r in rows:
            a = acc[(r["group"], r["role"])]
            a[0] += 1
            a[1] += r["cost_us"]
            a[2] += r["duration_us"]
    keys = sorted({k for acc in per_step for k in acc}, key=lambda k: (not is_linear(k[0]), k))
    return [dict(group=g, role=role, calls=per_step[-1][(g, role)][0],
                 cost_us=statistics.median(acc[(g, role)][1] for acc in per_step),
                 duration_us=statistics.median(acc[(g, role)][2] for acc in per_step)) for g, role in keys]


def profile_generate(llm, prompts: list[list[int]], steps: int) -> tuple[list[tuple[str, float, float]], float]:
    """The kernels (name, start µs, end µs) of a generate of steps + 1 tokens (a prefill and `steps`
    decode steps) under the profiler, sorted by start, and the decode step's time (ms) of the same
    generate run without the profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def generate():
        llm.generate(prompts, max_new_tokens=steps + 1, temperature=0.0, stop_at_eos=False)

    generate()  # warm-up: graph capture, allocator, clocks
    generate()
    unprofiled_ms = llm.last_stats["decode_ms_per_step"]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate()
        torch.cuda.synchronize()
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower()]
    return sorted(kernels, key=lambda k: k[1]), unprofiled_ms


def run(args: argparse.Namespace) -> int:
    import torch

    from sparsellm.bench.e2e import measure_copy_gbps, model_shape, random_prompts
    from sparsellm.bench.spmm import _commit
    from sparsellm.convert import write_generated
    from sparsellm.format_choice import gpu_tag
    from sparsellm.llm import LLM

    shape = model_shape(args.model)
    family = shape.config["model_type"]
    layers = int(shape.config["num_hidden_layers"])
    batches = [int(b) for b in args.batches.split(",")]
    max_seq_len = args.max_seq_len or args.prompt_len + 128
    if max_seq_len < args.prompt_len + args.steps + 1:
        raise SystemExit(f"--max-seq-len {max_seq_len} holds no prompt of {args.prompt_len} "
                         f"and {args.steps + 1} new tokens")
    gpu = torch.cuda.get_device_name()
    doc = dict(gpu=gpu, commit=_commit(), date=datetime.date.today().isoformat(), copy_gbps=measure_copy_gbps(),
               records=[])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in args.formats.split(","):
        sparsity = 0.0 if fmt == "dense" else args.sparsity
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint"
            write_generated(shape.name, path, sparsity=sparsity, format="dense" if fmt == "dense" else fmt,
                            seed=args.seed)
            llm = LLM(str(path), max_batch=max(batches), max_seq_len=max_seq_len,
                      cuda_graphs=not args.no_cuda_graphs)
            try:
                for b in batches:
                    prompts = random_prompts(b, args.prompt_len, shape.config["vocab_size"], args.seed + b)
                    kernels, unprofiled_ms = profile_generate(llm, prompts, args.steps)
                    steps = step_costs(kernels, family, layers)
                    if not steps:
                        print(f"{fmt} batch {b}: no whole decode step in the profile (kernel records missing?)")
                        continue
                    rec = dict(model=shape.name, format=fmt, sparsity=sparsity, batch=b, prompt_len=args.prompt_len,
                               max_seq_len=max_seq_len, steps=len(steps),
                               step_ms=statistics.median(sum(r["cost_us"] for r in s) for s in steps) / 1e3,
                               unprofiled_step_ms=unprofiled_ms,
                               weight_bytes=llm.weight_bytes, kernels=summarize(steps),
                               kernel_names=kernel_names(steps))
                    doc["records"].append(rec)
                    print(f"{fmt} {sparsity:.0%} batch {b}: {rec['step_ms']:.3f} ms a step over {len(steps)} steps "
                          f"({unprofiled_ms:.3f} ms without the profiler)")
            finally:
                llm.close()
    tag = gpu_tag(gpu)
    (out / f"step-{tag}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"step-{tag}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    lines = [f"# Where a decode step's time goes on {doc['gpu']} (commit {doc['commit']}, {doc['date']})", "",
             "Cost: what a kernel adds to the step's span in stream order (bench/step.py); duration: from its "
             "start to its end, which for a chained kernel includes its wait for the kernels before it. Medians "
             f"over the profiled steps, µs a step. Copy bandwidth {doc['copy_gbps']:.0f} GB/s.", ""]
    for r in doc["records"]:
        lines += [f"## {r['model']}, {r['format']} {r['sparsity']:.0%}, batch {r['batch']}: "
                  f"{r['step_ms']:.3f} ms a step ({r['unprofiled_step_ms']:.3f} without the profiler; weight-bytes "
                  f"floor {r['weight_bytes'] / doc['copy_gbps'] / 1e6:.3f} ms; prompt {r['prompt_len']} tokens, "
                  f"max length {r['max_seq_len']})", "",
                  "| kernels | role | calls a step | cost µs | cost a call µs | duration a call µs |",
                  "|---|---|---|---|---|---|"]
        for k in r["kernels"]:
            n = max(k["calls"], 1)
            lines.append(f"| {k['group']} | {k['role']} | {k['calls']} | {k['cost_us']:.1f} | "
                         f"{k['cost_us'] / n:.2f} | {k['duration_us'] / n:.2f} |")
        lines.append("")
    return "\n".join(lines)
