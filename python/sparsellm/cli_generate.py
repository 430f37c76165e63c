"""``sparsellm generate`` and ``sparsellm demo``: the command-line face of ``sparsellm.LLM``.

generate  loads a converted checkpoint and generates from text prompts (through the
          checkpoint's tokenizer) or from token ids; prints each prompt's continuation and
          a line with prefill ms, decode ms/step and tokens/s per batch. A checkpoint split
          with --tp N runs as `mpirun -n N python -m sparsellm generate ...` (rank 0 prints).
demo      needs nothing but a GPU: converts a random-weight OPT model sized to the GPU,
          dense and magnitude-pruned at a few sparsities (bench/e2e.py's checkpoints), runs
          each on the same random prompt ids, and prints decode speed, speedup, memory and
          whether each sparse model's greedy tokens equal those of the dense runtime on the
          same pruned weights (the same weights converted with format "dense").

Both check for a GPU before any heavy work and exit with status 2 and a clear message
when there is none (the other input errors exit 1, through cli.main).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

EXIT_NO_GPU = 2
DEMO_SHAPES = ("opt-1.3b", "opt-2.7b", "opt-6.7b")
DEMO_WEIGHT_SHARE = 0.25  # auto: the largest shape whose dense fp16 weights take at most this share of the GPU


def _gpu_or_message(command: str) -> dict | None:
    """The GPU's properties, or None after printing why this command cannot run."""
    from sparsellm._native import require_gpu

    try:
        return require_gpu()
    except Exception as exc:  # DeviceError without a GPU, NativeLibraryError without the built library
        print(f"sparsellm {command}: needs a CUDA GPU (compute capability 8.0 or newer) to run: {exc}",
              file=sys.stderr, flush=True)
        return None


def _ids(text: str) -> list[int]:
    try:
        ids = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"token ids must be comma-separated integers, got {text!r}") from None
    if not ids or any(v < 0 for v in ids):
        raise argparse.ArgumentTypeError(f"token ids must be one or more non-negative integers, got {text!r}")
    return ids


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _stats_line(stats: dict, batch: int) -> str:
    peak = stats.get("peak_mem_bytes")
    return (f"batch {batch}: prefill {stats['prefill_ms']:.1f} ms, decode {stats['decode_ms_per_step']:.2f} ms/step "
            f"({stats.get('decode_steps', 0)} steps), {stats['tokens_per_s']:.1f} tokens/s"
            + (f", peak GPU memory {peak / (1 << 30):.2f} GiB" if peak else ""))


def generate(argv: list[str]) -> int:
    """Generate text (or token ids) from a converted sparsellm checkpoint."""
    parser = argparse.ArgumentParser(prog="sparsellm generate", description=generate.__doc__)
    parser.add_argument("--model", required=True, metavar="DIR", help="sparsellm checkpoint directory")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", metavar="TEXT",
                         help="a text prompt (needs the checkpoint's tokenizer); repeat for a batch")
    prompts.add_argument("--prompt-ids", action="append", type=_ids, metavar="IDS",
                         help='token ids of a prompt, e.g. "2,100,7"; repeat for a batch')
    parser.add_argument("--max-new-tokens", type=_positive, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k cut (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus cut (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-batch", type=_positive,
                        help="sequences run at once (default: all prompts); more prompts run in several batches")
    parser.add_argument("--max-seq-len", type=_positive, help="KV cache length (default: the runtime's)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="launch each decode step's kernels directly")
    parser.add_argument("--ignore-eos", action="store_true", help="always make --max-new-tokens tokens")
    parser.add_argument("--show-ids", action="store_true", help="print the new token ids also when there is text")
    args = parser.parse_args(argv)
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    if args.top_k < 0:
        parser.error("--top-k must be >= 0")
    if not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")

    from sparsellm.convert import read_config

    config = read_config(args.model)  # a missing or malformed checkpoint is an input error (exit 1)
    vocab = config["model_config"].get("vocab_size")
    for ids in args.prompt_ids or []:
        bad = [v for v in ids if vocab is not None and v >= vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is not below the vocabulary size {vocab} of {args.model}")
    from sparsellm.launch import check_launch

    check_launch(args.model)  # under mpirun: the checkpoint against the world size, the same error on every rank
    if _gpu_or_message("generate") is None:
        return EXIT_NO_GPU

    from sparsellm.llm import LLM

    inputs = args.prompt if args.prompt is not None else args.prompt_ids
    batch = args.max_batch or len(inputs)
    options = dict(max_batch=batch, cuda_graphs=not args.no_cuda_graphs)
    if args.max_seq_len is not None:
        options["max_seq_len"] = args.max_seq_len
    from sparsellm.launch import abort_job_on_error, rank0_stdout

    # Under mpirun (tensor parallelism) every rank runs this; rank 0 prints, an error on one rank ends the job.
    with abort_job_on_error(), LLM(args.model, **options) as llm, rank0_stdout(getattr(llm, "rank", 0)):
        if args.prompt is not None and llm.tokenizer is None:
            raise ValueError(f"{args.model} has no tokenizer: give the prompts as token ids (--prompt-ids)")
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            outputs = llm.generate(chunk, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_at_eos=not args.ignore_eos)
            for index, (given, out) in enumerate(zip(chunk, outputs), start):
                shown = given if isinstance(given, str) else ",".join(map(str, given))
                print(f"[{index}] prompt: {shown}")
                if out.text is not None:
                    print(f"[{index}] output: {out.text}")
                if out.text is None or args.show_ids:
                    print(f"[{index}] ids: {','.join(map(str, out.token_ids))}")
                print(f"[{index}] finish: {out.finish_reason}, {len(out.token_ids)} new tokens")
            print(_stats_line(llm.last_stats, len(chunk)), flush=True)
    return 0


# ------------------------------------------------------------------------------------------- demo

def _pick_shape(gpu_bytes: int) -> str:
    from sparsellm.bench.e2e import model_shape

    chosen = DEMO_SHAPES[0]
    for name in DEMO_SHAPES:
        if 2 * model_shape(name).params <= DEMO_WEIGHT_SHARE * gpu_bytes:
            chosen = name
    return chosen


def _agreement(sparse: list[list[int]], dense: list[list[int]]) -> str:
    """'yes' when every sequence's tokens are equal, else where the first one differs."""
    total = sum(len(t) for t in dense)
    for seq, (a, b) in enumerate(zip(sparse, dense)):
        if a != b:
            step = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            same = sum(x == y for s, d in zip(sparse, dense) for x, y in zip(s, d))
            return f"no: seq {seq} differs at token {step} ({same}/{total} equal)"
    return "yes"


def demo(argv: list[str]) -> int:
    """Random-weight OPT sized to the GPU, dense and pruned: decode speed, memory, and sparse = dense-pruned?"""
    parser = argparse.ArgumentParser(prog="sparsellm demo", description=demo.__doc__)
    parser.add_argument("--model-shape", default="auto", choices=("auto",) + DEMO_SHAPES,
                        help=f"auto: the largest whose fp16 weights take <= {DEMO_WEIGHT_SHARE * 100:.0f}%% of the GPU")
    parser.add_argument("--sparsities", default="0.5,0.7,0.8", help="comma-separated, each in (0, 1)")
    parser.add_argument("--format", default="tiled_csl", help="sparse format of the pruned models")
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--prompt-len", type=_positive, default=64)
    parser.add_argument("--new-tokens", type=_positive, default=64)
    parser.add_argument("--workdir", metavar="DIR", help="where the checkpoints go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (and reuse them next time)")
    parser.add_argument("--quick", action="store_true", help="opt-125m and 16 new tokens")
    from sparsellm.bench.e2e import DEFAULT_JOBS

    parser.add_argument("--jobs", type=_positive, default=DEFAULT_JOBS,
                        help=f"conversions running at once (default {DEFAULT_JOBS})")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    try:
        sparsities = sorted({float(v) for v in args.sparsities.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}")
    if not sparsities or any(not 0 < s < 1 for s in sparsities):
        parser.error("--sparsities must each be in (0, 1)")
    if args.format in ("dense", "auto"):
        parser.error("--format names a sparse format; the dense model is always run")
    from sparsellm.convert.encoding import check_format

    check_format(args.format)
    gpu = _gpu_or_message("demo")
    if gpu is None:
        return EXIT_NO_GPU

    from sparsellm.bench.e2e import (
        GIB, CheckpointPipeline, Job, conversion_estimate_s, fits_gpu, model_shape, random_prompts,
    )
    from sparsellm.llm import LLM

    gpu_bytes = int(gpu["global_mem_bytes"])
    name = "opt-125m" if args.quick else (_pick_shape(gpu_bytes) if args.model_shape == "auto" else args.model_shape)
    new_tokens = 16 if args.quick else args.new_tokens
    shape = model_shape(name)
    seq_len = args.prompt_len + new_tokens
    # the dense model, then per sparsity the sparse checkpoint and the same pruned weights stored dense
    jobs = [Job(shape, 0.0, "dense", args.seed)]
    for s in sparsities:
        jobs += [Job(shape, s, args.format, args.seed), Job(shape, s, "dense", args.seed)]
    for job in jobs:
        if not fits_gpu(shape, job.bytes, args.batch, args.prompt_len, seq_len, gpu_bytes):
            raise ValueError(f"{job.label} at batch {args.batch} and {seq_len} tokens does not fit the "
                             f"{gpu_bytes / GIB:.0f} GiB of {gpu['name']}: lower --batch or pick a smaller "
                             "--model-shape")
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sparsellm-demo-")) if temporary else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep
    print(f"{gpu['name']} ({gpu_bytes / GIB:.0f} GiB): random-weight {name} ({shape.params / 1e9:.2f} B parameters, "
          f"{2 * shape.params / GIB:.1f} GiB fp16), batch {args.batch}, prompt {args.prompt_len}, "
          f"{new_tokens} new tokens, greedy", flush=True)
    print(f"converting {len(jobs)} checkpoints into {workdir} (magnitude pruning, {args.jobs} at a time, roughly "
          f"{conversion_estimate_s(jobs, args.jobs) / 60:.0f} min; --workdir DIR --keep reuses them)", flush=True)
    prompts = random_prompts(args.batch, args.prompt_len, shape.config["vocab_size"], args.seed)
    results = {}  # (sparsity, format) -> measurement
    pipeline = CheckpointPipeline(jobs, workdir, args.jobs, keep, lambda m: print(m, flush=True))
    started = time.perf_counter()
    try:
        for i, job in enumerate(jobs):
            path = pipeline.ready(i)
            if path is None:
                raise ValueError(pipeline.skipped[i])
            with LLM(str(path), max_batch=args.batch, max_seq_len=seq_len) as llm:
                llm.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)  # warm-up, graph capture
                out = llm.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)
                stats = dict(llm.last_stats)
            pipeline.done(i)
            stats["tokens"] = [g.token_ids for g in out]
            results[(job.sparsity, job.fmt)] = stats
            print(f"  ran {job.label}: {stats['decode_ms_per_step']:.2f} ms/step", flush=True)
    finally:
        pipeline.close()
        if temporary and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.0f} s" + (f"; checkpoints kept in {workdir}" if keep else ""))
    print(demo_table(results, sparsities, args.format, args.batch, new_tokens))
    return 0


def demo_table(results: dict, sparsities: list[float], fmt: str, batch: int, new_tokens: int) -> str:
    """The demo's table: one row for the dense model, one per sparsity in ``fmt``."""
    from sparsellm.bench.e2e import throughput

    dense = results[(0.0, "dense")]
    rows = [("dense", 0.0, dense, "-")]
    for s in sparsities:
        sparse, pruned_dense = results[(s, fmt)], results[(s, "dense")]
        rows.append((fmt, s, sparse, _agreement(sparse["tokens"], pruned_dense["tokens"])))
    head = ("format", "sparsity", "weight GiB", "peak GiB", "decode ms/step", "tokens/s", "speedup",
            "same tokens as dense")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s, st, agree in rows:
        tps = throughput(batch, new_tokens, st["prefill_ms"], st["decode_ms_per_step"])
        cells = (name, f"{s:.0%}", f"{st.get('weight_bytes', 0) / (1 << 30):.2f}",
                 f"{st.get('peak_mem_bytes', 0) / (1 << 30):.2f}", f"{st['decode_ms_per_step']:.2f}", f"{tps:.0f}",
                 f"{dense['decode_ms_per_step'] / st['decode_ms_per_step']:.2f}x", agree)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("speedup: dense decode ms/step ÷ this row's; same tokens: the sparse model's greedy tokens against "
                 "the dense runtime on the same pruned weights")
    return "\n".join(lines)
