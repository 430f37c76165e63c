"""End-to-end generation benchmark: prefill and decode latency, tokens/s, tokens per
GPU-second and peak GPU memory of random-weight OPT and Llama models of real shapes, dense and
pruned to several sparsities in each sparse format, in our runtime (``sparsellm.LLM``)
and — with ``--hf`` — in Hugging Face transformers (fp16, same card, static and default
dynamic cache) at the same settings. Nothing to download.

Per model, one checkpoint per (sparsity, format) is converted into the work directory
(``convert_random``: magnitude pruning per row, seeded, so every sparsity of a model
prunes the same random weights), loaded once with max_batch = the largest batch that
fits, and run greedily on random prompt ids at each batch: one warm-up generate, then
``--reps`` timed ones (median). A checkpoint is deleted once measured unless ``--keep``;
conversions run ``--jobs`` at a time ahead of the GPU, within the free disk space.
Conversion is CPU-bound (drawing, magnitude-pruning and encoding every tensor): about
5–10 s per 10⁸ parameters per job (opt-125m, opt-350m) — 10–20 minutes per
OPT-13B checkpoint, so
``--convert-only --keep`` can prepare the work directory ahead of a timed run.

Timing, for both implementations:
  prefill_ms          the prompt's forward pass up to the first new token
  decode_ms_per_step  (total − prefill) / (gen_len − 1): one new token for every sequence
  tokens_per_s        batch · gen_len / (prefill + decode_ms_per_step · (gen_len − 1))
  floor_ms            weight bytes ÷ the device-to-device copy rate measured in the same
                      run (read + write bytes ÷ time, as in bench/spmm.py): the decode step
                      of a runtime that only streams its weights; floor_ratio = decode/floor

``--weights generated`` writes generated checkpoints instead (``write_generated``: config.json
alone, at once; the runtime draws the weights on the GPU at load, each pruned weight with a
random mask at the target sparsity; Tiled-CSL weights are drawn dense and encoded on the host,
bitmap ones drawn encoded). Their weight bytes, hence the decode speed, match converted ones of
the same sparsity in expectation; their values are not magnitude-pruned. No conversion, no disk:
OPT-66B and OPT-175B can be measured. Records carry ``weights``: converted or generated
(the transformers baseline's, drawn on the GPU, count as generated).

Tensor parallelism: ``--tp N`` runs as

    mpirun -n N python -m sparsellm.bench e2e --tp N [--weights generated] ...

Every rank runs the same loop (the same jobs, calls and order); rank 0 makes the
checkpoints (split for N ranks) while the other ranks wait at an MPI barrier, then
broadcasts each one's path; only rank 0 prints and writes the outputs. A GPU's share is
estimated per rank (its weight shard, its heads' KV cache). Records carry tp = gpus = N,
tokens_per_gpu_s = tokens_per_s / N, and floor and peak memory of one GPU (rank 0). ``--tp``
must equal the number of processes mpirun started; ``--hf`` runs on one GPU only.

Configurations that cannot run (checkpoint larger than the free disk, weights + KV cache
larger than the GPU) are skipped with a message in the output and in the JSON
(``skipped``), never silently. Writes e2e-<gpu>.json, .md and .png into ``--out``, after
every configuration, so that an interrupted run keeps what it measured; ``--append``
merges into an existing JSON (e.g. one model per invocation): a record replaces only the
one of the same model, tp, weights, implementation, format, sparsity, batch and lengths.
Each record carries the ``commit`` that measured it, so a merged file says where a
comparison spans two commits.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsellm.format_choice import gpu_tag

from .e2e_report import merged, record_line, summary_markdown, write_outputs

GIB = float(1 << 30)
RECORD_FIELDS = ("model", "tp", "gpus", "weights", "commit", "batch", "prompt_len", "gen_len", "impl", "format",
                 "sparsity", "prefill_ms", "decode_ms_per_step", "tokens_per_s", "tokens_per_gpu_s", "peak_mem_gib")
# GPU memory that neither the weights nor the KV cache take: CUDA context, cuBLAS workspaces, torch's allocator
GPU_RESERVE_BYTES = 2 << 30
DISK_RESERVE_BYTES = 2 << 30
DEFAULT_JOBS = max(1, min(4, (os.cpu_count() or 1) // 4))  # each job also runs multithreaded torch ops
HEARTBEAT_S = 60  # progress line while waiting for a conversion
CONVERT_PARAMS_PER_S = 1.5e7  # one conversion job's rate, measured on opt-125m / opt-350m (for estimates)


WEIGHTS = ("converted", "generated")
HF_WEIGHTS = "generated"  # the transformers baseline draws its dense weights on the GPU, stores none


def conversion_estimate_s(jobs: list, parallel: int) -> float:
    """Rough wall time to convert ``jobs`` ``parallel`` at a time (generated ones take none)."""
    converted = [job for job in jobs if not job.generated]
    parallel = max(1, min(parallel, len(converted) or 1))
    return sum(job.shape.params for job in converted) / CONVERT_PARAMS_PER_S / parallel
FIRST_TOKEN_ID = 3  # OPT: 0 <s>-like, 1 pad, 2 eos; random prompts avoid them


DEFAULTS = dict(models="opt-13b,opt-30b", batches="1,8,16,32,64", sparsities="0,0.5,0.7,0.8", formats="tiled_csl",
                gen_len=256)
QUICK = dict(models="opt-125m", batches="1,8", sparsities="0,0.7", formats="tiled_csl", gen_len=32)


def _csv(kind, text: str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def add_arguments(p) -> None:
    p.add_argument("--out", default="docs/benchmarks", help="output directory (default docs/benchmarks)")
    p.add_argument("--models", help=f"comma-separated OPT or Llama shapes of sparsellm.convert.NAMED_CONFIGS or "
                                    f"config.json paths (default {DEFAULTS['models']})")
    p.add_argument("--batches", help=f"default {DEFAULTS['batches']}")
    p.add_argument("--sparsities", help=f"0 is the dense model (default {DEFAULTS['sparsities']})")
    p.add_argument("--formats",
                   help=f"sparse formats of the pruned checkpoints, e.g. tiled_csl,bitmap (default {DEFAULTS['formats']})")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, help=f"new tokens per sequence (default {DEFAULTS['gen_len']})")
    p.add_argument("--hf", action="store_true", help="also Hugging Face transformers fp16 (static and dynamic cache)")
    p.add_argument("--quick", action="store_true",
                   help="defaults of a quick check: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--workdir", help="where checkpoints are converted (default: OUT/e2e-work)")
    p.add_argument("--keep", action="store_true", help="keep the converted checkpoints (and reuse them next time)")
    p.add_argument("--convert-only", action="store_true",
                   help="only convert the checkpoints into --workdir (implies --keep)")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                   help=f"conversions running at once (default: CPU cores / 4, 1 to 4: here {DEFAULT_JOBS})")
    p.add_argument("--reps", type=int, default=2, help="timed generates per batch (median; default 2)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run our decode steps without CUDA graphs")
    p.add_argument("--append", action="store_true", help="merge into an existing e2e-<gpu>.json")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random weights and prompts")
    p.add_argument("--weights", choices=WEIGHTS, default="converted",
                   help="converted: checkpoints converted by convert_random (default); generated: config.json "
                        "alone, the runtime draws the weights at load (no conversion, no disk)")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel GPUs; run as mpirun -n N python -m sparsellm.bench e2e --tp N ... (default 1)")


# ----------------------------------------------------------------------------------------------- estimates

def _stored_bytes(item, sparsity: float, fmt: str, tp: int) -> float:
    """Bytes of one rank's shard of ``item`` (a convert.model_plan.TensorPlan): a pruned weight in
    ``fmt`` by the formats' size model (format_choice.weight_bytes), anything else fp16."""
    from sparsellm.format_choice import weight_bytes

    shape = item.shard_shape(tp)
    if item.pruned and fmt != "dense" and sparsity > 0:
        return weight_bytes(fmt, shape[0], shape[1], sparsity)
    return 2.0 * math.prod(shape)


@dataclass
class ModelShape:
    """What the estimates need of a named OPT or Llama shape."""
    name: str
    hf_config: Any = field(repr=False)  # the transformers config
    tensors: list[Any] = field(repr=False)  # the model's convert.model_plan.TensorPlan items

    @property
    def config(self) -> dict[str, Any]:
        return self.hf_config.to_dict()

    @property
    def params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    def checkpoint_bytes(self, sparsity: float, fmt: str, tp: int = 1) -> int:
        """Bytes of the converted fp16 checkpoint, all rank files (replicated tensors on each)."""
        return int(sum(_stored_bytes(t, sparsity, fmt, tp) * len(t.ranks(tp)) for t in self.tensors)) + (1 << 20)

    def rank_bytes(self, sparsity: float, fmt: str, tp: int = 1) -> int:
        """Weight bytes of rank 0, the rank holding the most (it also holds the row-parallel biases)."""
        return int(sum(_stored_bytes(t, sparsity, fmt, tp) for t in self.tensors)) + (1 << 20)

    def kv_bytes(self, batch: int, seq_len: int, tp: int = 1) -> int:
        """KV cache bytes of one rank: its share of the KV heads (all heads for OPT), fp16."""
        c = self.config
        heads = c["num_attention_heads"]
        kv_width = (c.get("num_key_value_heads") or heads) * (c["hidden_size"] // heads)
        return 2 * c["num_hidden_layers"] * batch * seq_len * (kv_width // tp) * 2

    def workspace_bytes(self, batch: int, prompt_len: int) -> int:
        """Activations of a prefill of batch × prompt_len tokens (fp16) and fp32 logits."""
        c = self.config
        tokens = batch * prompt_len
        ffn = c.get("ffn_dim") or c["intermediate_size"]  # OPT, Llama
        return tokens * (4 * c["hidden_size"] + 2 * ffn) * 2 * 2 + batch * c["vocab_size"] * 4 * 2


def model_shape(name: str) -> ModelShape:
    from sparsellm.convert.architectures import architecture_of
    from sparsellm.convert.model_plan import model_plan
    from sparsellm.convert.random_model import random_model_config

    config, description = random_model_config(name)
    plan = model_plan(config, architecture_of(config, description))
    return ModelShape(name, config, list(plan.tensors))


def random_prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(FIRST_TOKEN_ID, vocab, size=(batch, prompt_len)).tolist()


# ------------------------------------------------------------------------------------------ checkpoints

@dataclass
class Job:
    """One checkpoint: a model shape at one sparsity in one format, for ``tp`` ranks, its weights
    converted (stored) or generated (drawn at load)."""
    shape: ModelShape
    sparsity: float
    fmt: str
    seed: int
    tp: int = 1
    weights: str = "converted"

    @property
    def generated(self) -> bool:
        return self.weights == "generated"

    @property
    def name(self) -> str:
        """Directory name of the checkpoint (a shape given as a config.json path is flattened)."""
        shape = re.sub(r"[^A-Za-z0-9._-]+", "_", self.shape.name).strip("_")
        tp = f"-tp{self.tp}" if self.tp > 1 else ""
        return f"{shape}-{self.fmt}-s{round(self.sparsity * 100):02d}{tp}{'-generated' if self.generated else ''}"

    @property
    def label(self) -> str:
        tp = f" tp{self.tp}" if self.tp > 1 else ""
        return f"{self.shape.name} {self.fmt} {self.sparsity:.0%}{tp}{' generated' if self.generated else ''}"

    @property
    def bytes(self) -> int:
        """Bytes on disk (a generated checkpoint's config.json is not counted)."""
        return 0 if self.generated else self.shape.checkpoint_bytes(self.sparsity, self.fmt, self.tp)

    @property
    def rank_bytes(self) -> int:
        """Weight bytes one GPU holds."""
        return self.shape.rank_bytes(self.sparsity, self.fmt, self.tp)


def _convert(name: str, out: str, sparsity: float, fmt: str, seed: int, tp: int = 1) -> float:
    """convert_random in a worker process; returns the seconds it took."""
    from sparsellm.convert import convert_random

    start = time.perf_counter()
    convert_random(name, out, sparsity=sparsity, format=fmt, seed=seed, tp=tp, progress=False)
    return time.perf_counter() - start


def _reusable(path: Path, job: Job) -> bool:
    """An existing converted checkpoint at ``path`` made from the same shape, seed, sparsity, format and tp."""
    if not (path / "config.json").is_file():
        return False
    try:
        from sparsellm.convert import read_config

        config = read_config(path)
    except Exception:
        return False
    source, pruning = config.get("source", {}), config.get("pruning", {})
    formats = {t["format"] for t in config["tensors"].values() if t["pruned"]}
    want = {"dense"} if job.fmt == "dense" or job.sparsity == 0 else {job.fmt}
    return (source.get("kind") == "random" and source.get("config") == job.shape.name
            and source.get("seed") == job.seed and config["tp"] == job.tp
            and math.isclose(pruning.get("sparsity") or 0.0, job.sparsity) and formats == want)


class CheckpointPipeline:
    """Converts the jobs' checkpoints into ``workdir``, up to ``jobs`` at once ahead of their use,
    never more at once than the free disk space holds; a generated job's checkpoint (config.json
    alone, seconds to write) is written here when asked for. ``ready(i)`` waits for job i's
    checkpoint and returns its path, or None (with a message) when it could not be made;
    ``done(i)`` deletes it unless ``keep``."""

    def __init__(self, job_list: list[Job], workdir: Path, jobs: int, keep: bool, log) -> None:
        self.jobs, self.workdir, self.keep, self.log = job_list, workdir, keep, log
        converting = any(not job.generated for job in job_list)
        self.pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=_spawn()) if converting else None
        self.width = max(1, jobs)
        self.futures: dict[int, Any] = {}
        self.reused: set[int] = set()
        self.skipped: dict[int, str] = {}
        self.in_use: set[int] = set()  # checkpoints handed out by ready() and not yet done()
        self.next = 0

    def path(self, i: int) -> Path:
        return self.workdir / self.jobs[i].name

    def _pending_bytes(self) -> int:
        return sum(self.jobs[i].bytes for i, f in self.futures.items() if not f.done())

    def _fill(self) -> None:
        while self.next < len(self.jobs) and len(self.futures) < self.width:
            i, job = self.next, self.jobs[self.next]
            path = self.path(i)
            if job.generated:  # written by ready()
                self.next += 1
                continue
            if _reusable(path, job):
                self.log(f"  reusing {path}")
                self.reused.add(i)
                self.next += 1
                continue
            free = shutil.disk_usage(self.workdir).free - self._pending_bytes() - DISK_RESERVE_BYTES
            if job.bytes > free:
                if (self.futures or self.in_use) and not self.keep:
                    return  # wait until a checkpoint converting or in use is done and deleted
                self.skipped[i] = (f"skipped {job.label}: its checkpoint needs ~{job.bytes / GIB:.1f} GiB, "
                                   f"{self.workdir} has {max(free, 0) / GIB:.1f} GiB free (use --workdir elsewhere)")
                self.log("  " + self.skipped[i])
                self.next += 1
                continue
            if path.exists():
                shutil.rmtree(path)
            self.log(f"  converting {job.label} -> {path} (~{job.bytes / GIB:.1f} GiB)")
            self.futures[i] = self.pool.submit(_convert, job.shape.name, str(path), job.sparsity, job.fmt, job.seed,
                                               job.tp)
            self.next += 1

    def _generate(self, i: int) -> Path | None:
        """Writes job i's generated checkpoint (config.json alone: no worker, no disk space to plan)."""
        from sparsellm.convert import write_generated

        job, path = self.jobs[i], self.path(i)
        if path.exists():
            shutil.rmtree(path)
        try:
            write_generated(job.shape.name, path, sparsity=job.sparsity, tp=job.tp, format=job.fmt, seed=job.seed)
        except Exception as exc:  # report, go on with the other configurations
            self.skipped[i] = f"skipped {job.label}: its generated checkpoint could not be written: {exc}"
            self.log("  " + self.skipped[i])
            return None
        self.log(f"  generated {job.label} -> {path} (config.json alone: the weights are drawn at load)")
        self.in_use.add(i)
        return path

    def ready(self, i: int) -> Path | None:
        # called for i = 0, 1, 2, ... with every earlier job done: nothing else holds the disk
        # when job i is not started yet, so _fill() starts, reuses or skips it
        self._fill()
        assert i < self.next, "CheckpointPipeline.ready() must be called in job order"
        if i in self.skipped:
            return None
        if self.jobs[i].generated:
            return self._generate(i)
        if i in self.reused:
            self.in_use.add(i)
            return self.path(i)
        future = self.futures.pop(i)
        waited = time.perf_counter()
        try:
            while True:
                try:
                    seconds = future.result(timeout=HEARTBEAT_S)
                    break
                except FuturesTimeout:
                    self.log(f"  ... still converting {self.jobs[i].label} "
                             f"(waiting {time.perf_counter() - waited:.0f} s)")
        except Exception as exc:  # report, go on with the other configurations
            self.skipped[i] = f"skipped {self.jobs[i].label}: conversion failed: {exc}"
            self.log("  " + self.skipped[i])
            shutil.rmtree(self.path(i), ignore_errors=True)
            self._fill()
            return None
        self.log(f"  converted {self.jobs[i].label} in {seconds:.0f} s "
                 f"(waited {time.perf_counter() - waited:.0f} s for it)")
        self.in_use.add(i)
        self._fill()
        return self.path(i)

    def done(self, i: int) -> None:
        self.in_use.discard(i)
        if not self.keep:
            shutil.rmtree(self.path(i), ignore_errors=True)
        self._fill()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if not self.keep:
            for i in list(self.futures) + list(self.in_use):
                shutil.rmtree(self.path(i), ignore_errors=True)


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------------------ measuring

def measure_copy_gbps() -> float:
    """The device-to-device copy rate of the current GPU (bench/timing.py), its buffers freed after."""
    import torch

    from sparsellm.bench.timing import Timer

    timer = Timer(torch, torch.device("cuda", torch.cuda.current_device()))
    gbps = timer.copy_gbps()
    del timer
    torch.cuda.empty_cache()
    return gbps


def measure_llm(llm, prompts: list[list[int]], gen_len: int, reps: int) -> dict[str, float]:
    """One warm-up generate (CUDA graph capture, allocator, clocks), then ``reps`` timed ones:
    greedy, no stop at EOS, so that every sequence makes gen_len tokens. Medians; the peak
    memory is the largest seen. Returns the record's timing fields plus the token ids."""
    llm.generate(prompts, max_new_tokens=gen_len, temperature=0.0, stop_at_eos=False)
    runs, tokens = [], None
    for _ in range(max(1, reps)):
        out = llm.generate(prompts, max_new_tokens=gen_len, temperature=0.0, stop_at_eos=False)
        runs.append(dict(llm.last_stats))
        tokens = [g.token_ids for g in out]
    prefill = statistics.median(r["prefill_ms"] for r in runs)
    decode = statistics.median(r["decode_ms_per_step"] for r in runs)
    return dict(prefill_ms=prefill, decode_ms_per_step=decode,
                peak_mem_bytes=max(r.get("peak_mem_bytes", 0) for r in runs),
                weight_bytes=runs[-1].get("weight_bytes", 0), tokens=tokens)


def throughput(batch: int, gen_len: int, prefill_ms: float, decode_ms: float) -> float:
    total_ms = prefill_ms + decode_ms * max(gen_len - 1, 0)
    return batch * gen_len * 1e3 / total_ms if total_ms > 0 else float("nan")


def fits_gpu(shape: ModelShape, weight_bytes: int, batch: int, prompt_len: int, seq_len: int, gpu_bytes: int,
             tp: int = 1) -> bool:
    """Whether one GPU holds ``weight_bytes`` (its rank's), its share of the KV cache and the workspaces."""
    need = (weight_bytes + shape.kv_bytes(batch, seq_len, tp) + shape.workspace_bytes(batch, prompt_len)
            + GPU_RESERVE_BYTES)
    return need <= gpu_bytes


def hf_random_model(torch, shape: ModelShape, device, seed: int):
    """OPTForCausalLM in fp16 with random weights, built on the meta device and materialized on
    the GPU (never in host memory): the same distribution as the converter's random weights."""
    from transformers import OPTForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("meta"):
            model = OPTForCausalLM(shape.hf_config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02, generator=gen)
            if p.ndim == 1 and name.endswith("weight") and "norm" in name.rpartition(".")[0].rpartition(".")[2]:
                p.add_(1.0)
    return model.eval()


def hf_measure(torch, model, prompts, gen_len: int, cache: str, reps: int) -> dict[str, float]:
    """Prefill = generate with 1 new token; decode = (full generate − prefill) / (gen_len − 1).
    ``cache``: "static" (transformers compiles the decode step) or "dynamic" (its default)."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    extra = {"cache_implementation": "static"} if cache == "static" else {}

    def generate_ms(new_tokens: int) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=1, **extra)
        if cuda:
            torch.cuda.synchronize(device)
        assert out.shape == (ids.shape[0], ids.shape[1] + new_tokens), out.shape
        return (time.perf_counter() - start) * 1e3

    with torch.inference_mode():
        for _ in range(2 if cache == "static" else 1):  # compilation and its cudagraph warm-up
            generate_ms(gen_len)
        generate_ms(1)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        prefill = statistics.median(generate_ms(1) for _ in range(max(1, reps)))
        full = statistics.median(generate_ms(gen_len) for _ in range(max(1, reps)))
    decode = (full - prefill) / max(gen_len - 1, 1)
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    return dict(prefill_ms=prefill, decode_ms_per_step=decode, peak_mem_bytes=peak)


def _record(shape: ModelShape, batch, args, impl, setting, fmt, sparsity, m: dict, copy_gbps: float, *,
            commit: str, tp: int = 1, weights: str = "converted") -> dict:
    """One measurement as a JSON record (RECORD_FIELDS and more); ``tp`` GPUs ran it at ``commit``."""
    tps = throughput(batch, args.gen_len, m["prefill_ms"], m["decode_ms_per_step"])
    rec = dict(model=shape.name, tp=tp, gpus=tp, weights=weights, commit=commit, batch=batch,
               prompt_len=args.prompt_len, gen_len=args.gen_len, impl=impl, format=fmt, sparsity=sparsity,
               prefill_ms=round(m["prefill_ms"], 3),
               decode_ms_per_step=round(m["decode_ms_per_step"], 4), tokens_per_s=round(tps, 1),
               tokens_per_gpu_s=round(tps / tp, 1), peak_mem_gib=round(m["peak_mem_bytes"] / GIB, 3), setting=setting)
    if m.get("weight_bytes"):
        floor_ms = m["weight_bytes"] / (copy_gbps * 1e9) * 1e3
        rec.update(weight_gib=round(m["weight_bytes"] / GIB, 3), floor_ms=round(floor_ms, 4),
                   floor_ratio=round(m["decode_ms_per_step"] / floor_ms, 3))
    return rec


# ------------------------------------------------------------------------------------------- the run

def _settings(args) -> None:
    for name, value in (QUICK if args.quick else DEFAULTS).items():  # what the command line leaves unset
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("prompt_len", "gen_len", "jobs", "reps", "tp"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    args.model_list = _csv(str, args.models)
    args.batch_list = sorted(set(_csv(int, args.batches)))
    args.sparsity_list = sorted(set(_csv(float, args.sparsities)))
    args.format_list = _csv(str, args.formats)
    if not args.model_list or not args.batch_list or not args.sparsity_list:
        raise ValueError("--models, --batches and --sparsities must each name at least one value")
    if any(b < 1 for b in args.batch_list):
        raise ValueError("--batches must be positive")
    if any(not 0 <= s < 1 for s in args.sparsity_list):
        raise ValueError("--sparsities must be in [0, 1)")
    if "dense" in args.format_list or "auto" in args.format_list:
        raise ValueError("--formats names sparse formats (sparsity 0 is the dense model)")
    from sparsellm.convert import NAMED_CONFIGS
    from sparsellm.convert.encoding import check_format

    for fmt in args.format_list:
        check_format(fmt)
    for name in args.model_list:
        if name not in NAMED_CONFIGS and not Path(name).is_file():
            raise ValueError(f"unknown model shape {name!r}: one of {', '.join(NAMED_CONFIGS)}, or a config.json")
        if args.hf and name in NAMED_CONFIGS and not name.startswith("opt-"):
            raise ValueError(f"--hf runs transformers' OPT only; {name} is not an OPT shape")
    if args.hf and args.tp > 1:
        raise ValueError("--hf runs the transformers baseline on one GPU: measure it in a run without --tp "
                         "and merge the two with --append")
    _check_launch(args)


def _check_launch(args) -> None:
    """--tp against the processes mpirun started (from the launcher's environment, the same on every rank);
    --convert-only runs as one process, whatever --tp."""
    from sparsellm.launch import launcher_world_size

    world = launcher_world_size()
    if args.convert_only:
        if world > 1:
            raise ValueError(f"--convert-only runs as one process, but mpirun started {world}: run it without mpirun")
        return
    if world == args.tp:
        return
    if world == 1:
        raise ValueError(f"--tp {args.tp} runs one process per GPU under mpirun: "
                         f"mpirun -n {args.tp} python -m sparsellm.bench e2e --tp {args.tp} ...")
    raise ValueError(f"--tp {args.tp}, but mpirun started {world} processes: pass --tp {world} "
                     f"or run mpirun -n {args.tp}")


def _world(tp: int):
    """MPI.COMM_WORLD of a tensor-parallel run (None for --tp 1), its size checked against ``tp``."""
    if tp == 1:
        return None
    from sparsellm.launch import mpi

    comm = mpi().COMM_WORLD
    if comm.Get_size() != tp:
        raise ValueError(f"--tp {tp}, but MPI has {comm.Get_size()} processes: run mpirun -n {tp}")
    return comm


def _bcast(comm, value):
    """Rank 0's ``value`` on every rank (the value itself without tensor parallelism)."""
    return value if comm is None else comm.bcast(value, root=0)


def _agreed(comm, error: str | None) -> str | None:
    """The first error of any rank (this rank's without tensor parallelism): every rank takes the same branch."""
    if comm is None:
        return error
    return next((f"rank {r}: {e}" for r, e in enumerate(comm.allgather(error)) if e), None)


def _jobs(args) -> list[Job]:
    from sparsellm.convert.architectures import architecture_of, check_tensor_parallel

    jobs = []
    for name in args.model_list:
        shape = model_shape(name)
        check_tensor_parallel(shape.hf_config, architecture_of(shape.hf_config, name), args.tp, name)
        for s in args.sparsity_list:
            for fmt in (["dense"] if s == 0 else args.format_list):
                jobs.append(Job(shape, s, fmt, args.seed, args.tp, args.weights))
    return jobs


def _barrier(comm, poll_s: float = 0.05) -> None:
    """An MPI barrier that sleeps while it waits: a blocking collective keeps a core busy, and the
    other ranks may wait minutes for rank 0's conversions, which need the cores."""
    if comm is None:
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_s)


class SharedCheckpoints:
    """The pipeline's checkpoints as every rank of a run sees them. Rank 0 runs the pipeline
    (``pipeline``; None on the other ranks); the other ranks wait at a barrier until it has
    made checkpoint i, so none loads one before it is complete, then get its path, or why there
    is none. ``done(i)`` waits until every rank has closed its model, then rank 0 deletes it."""

    def __init__(self, pipeline: CheckpointPipeline | None, comm) -> None:
        self.pipeline, self.comm = pipeline, comm

    def ready(self, i: int) -> tuple[Path | None, str]:
        answer = None
        if self.pipeline is not None:
            answer = (self.pipeline.ready(i), self.pipeline.skipped.get(i, ""))
        _barrier(self.comm)
        return _bcast(self.comm, answer)

    def done(self, i: int) -> None:
        _barrier(self.comm)
        if self.pipeline is not None:
            self.pipeline.done(i)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()


def _workdir(args) -> Path:
    return Path(args.workdir) if args.workdir else Path(args.out) / "e2e-work"


def _convert_only(args, jobs: list[Job], log) -> int:
    workdir = _workdir(args)
    log(f"{len(jobs)} checkpoints into {workdir} (roughly {conversion_estimate_s(jobs, args.jobs) / 60:.0f} min, "
        f"{args.jobs} at a time, unless reused)")
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = CheckpointPipeline(jobs, workdir, args.jobs, keep=True, log=log)
    try:
        made = [pipeline.ready(i) for i in range(len(jobs))]
    finally:
        pipeline.close()
    log(f"{sum(p is not None for p in made)} of {len(jobs)} checkpoints in {workdir}")
    return 0 if all(p is not None for p in made) else 1


def _gpu(comm) -> dict | None:
    """Rank 0's GPU properties on every rank, or None (after a message on each rank) when any rank has none."""
    from sparsellm._native import require_gpu

    gpu, error = None, None
    try:
        gpu = require_gpu()
    except Exception as exc:
        error = str(exc)
    error = _agreed(comm, error)
    if error:
        print(f"sparsellm bench e2e needs a CUDA GPU: {error}", file=sys.stderr)
        return None
    return _bcast(comm, gpu)


def run(args) -> int:
    _settings(args)
    jobs = _jobs(args)
    if args.convert_only:
        return _convert_only(args, jobs, lambda msg: print(msg, flush=True))
    comm = _world(args.tp)
    from sparsellm.launch import abort_job_on_error

    with abort_job_on_error():  # under mpirun, an error on one rank alone ends the job instead of a hang
        return _measure(args, jobs, comm)


def _measure(args, jobs: list[Job], comm) -> int:
    """The measurements, on every rank alike; rank 0 alone makes the checkpoints, prints and writes."""
    rank = 0 if comm is None else comm.Get_rank()
    out, workdir = Path(args.out), _workdir(args)
    keep = args.keep
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)

    gpu = _gpu(comm)
    if gpu is None:
        return 2
    from sparsellm.bench.spmm import _commit

    copy_gbps = _bcast(comm, measure_copy_gbps() if rank == 0 else None)
    gpu_bytes = int(gpu["global_mem_bytes"])
    tag = gpu_tag(gpu["name"])
    json_path = out / f"e2e-{tag}.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
    previous = json.loads(json_path.read_text()) if rank == 0 and args.append and json_path.exists() else None
    doc = dict(gpu=gpu["name"], commit=_commit(), date=datetime.date.today().isoformat(),
               copy_gbps=round(copy_gbps, 1),
               settings=dict(models=args.model_list, batches=args.batch_list, sparsities=args.sparsity_list,
                             formats=args.format_list, prompt_len=args.prompt_len, gen_len=args.gen_len,
                             reps=args.reps, cuda_graphs=not args.no_cuda_graphs, seed=args.seed, hf=args.hf,
                             tp=args.tp, weights=args.weights),
               records=[], skipped=[])
    what = ("generated checkpoints (config.json alone)" if args.weights == "generated" else
            f"checkpoints (roughly {conversion_estimate_s(jobs, args.jobs) / 60:.0f} min of conversion, "
            f"{args.jobs} at a time, unless reused)")
    log(f"{gpu['name']}: {gpu_bytes / GIB:.1f} GiB, copy bandwidth {copy_gbps:.0f} GB/s"
        + (f", {args.tp} GPUs (tensor parallelism)" if args.tp > 1 else "") + f"; {len(jobs)} {what} into {workdir}")

    def skip(message: str) -> None:
        log("  " + message)
        doc["skipped"].append(message)

    def save() -> None:
        if rank == 0:
            write_outputs(doc, out, tag, previous)

    runnable = _runnable(jobs, args, gpu_bytes, skip)
    pipeline = CheckpointPipeline([job for job, _ in runnable], workdir, args.jobs, keep, log) if rank == 0 else None
    checkpoints = SharedCheckpoints(pipeline, comm)
    try:
        for i, (job, batches) in enumerate(runnable):
            path, why = checkpoints.ready(i)
            if path is None:
                doc["skipped"].append(why)
                continue
            try:
                _measure_job(job, batches, path, args, comm, copy_gbps, doc, skip, save, log)
            finally:
                checkpoints.done(i)
        if args.hf:
            import torch

            device = torch.device("cuda", torch.cuda.current_device())
            for name in args.model_list:
                _run_hf(torch, next(j.shape for j in jobs if j.shape.name == name), args, device, gpu_bytes,
                        copy_gbps, doc, skip, save, log)
    finally:
        checkpoints.close()
        if rank == 0 and not keep and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()
    save()
    log(summary_markdown(doc if previous is None else merged(previous, doc)))
    return 0


def _runnable(jobs: list[Job], args, gpu_bytes: int, skip) -> list[tuple[Job, list[int]]]:
    """(job, the batches whose weights + KV cache + workspaces fit one GPU) of every job that fits at some batch."""
    seq_len = args.prompt_len + args.gen_len
    runnable = []
    for job in jobs:
        batches = [b for b in args.batch_list
                   if fits_gpu(job.shape, job.rank_bytes, b, args.prompt_len, seq_len, gpu_bytes, job.tp)]
        per_gpu = " per GPU" if job.tp > 1 else ""
        for b in sorted(set(args.batch_list) - set(batches)):
            skip(f"skipped {job.label} batch {b}: weights (~{job.rank_bytes / GIB:.1f} GiB{per_gpu}) + KV cache "
                 f"(~{job.shape.kv_bytes(b, seq_len, job.tp) / GIB:.1f} GiB{per_gpu}) + workspaces do not fit "
                 f"{gpu_bytes / GIB:.0f} GiB")
        if batches:
            runnable.append((job, batches))
    return runnable


def _measure_job(job: Job, batches: list[int], path: Path, args, comm, copy_gbps: float, doc, skip, save,
                 log) -> None:
    """Loads one checkpoint and measures it at each batch, on every rank alike (errors agreed between ranks)."""
    from sparsellm.llm import LLM

    seq_len = args.prompt_len + args.gen_len
    log(f"{job.label}: loading {path} (max batch {max(batches)}, max length {seq_len})")
    llm, error = None, None
    try:
        llm = LLM(str(path), max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=not args.no_cuda_graphs,
                  tp=args.tp)
    except Exception as exc:  # out of memory or an unsupported checkpoint: report, go on
        error = f"{type(exc).__name__}: {exc}"
    error = _agreed(comm, error)
    if error:
        skip(f"skipped {job.label}: loading failed: {error}")
        if llm is not None:
            llm.close()
        return
    try:
        for b in batches:
            prompts = random_prompts(b, args.prompt_len, job.shape.config["vocab_size"], args.seed + b)
            m, error = None, None
            try:
                m = measure_llm(llm, prompts, args.gen_len, args.reps)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            error = _agreed(comm, error)
            if error:
                skip(f"skipped {job.label} batch {b}: {error}")
                continue
            rec = _record(job.shape, b, args, "sparsellm", "cuda graphs" if not args.no_cuda_graphs else "eager",
                          job.fmt, job.sparsity, m, copy_gbps, tp=job.tp, weights=job.weights,
                          commit=doc["commit"])
            doc["records"].append(rec)
            log(record_line(rec))
            save()
    finally:
        llm.close()


def _run_hf(torch, shape: ModelShape, args, device, gpu_bytes, copy_gbps, doc, skip, save, log) -> None:
    weight_bytes = 2 * shape.params
    seq_len = args.prompt_len + args.gen_len
    if weight_bytes + GPU_RESERVE_BYTES > gpu_bytes:
        skip(f"skipped hf {shape.name}: fp16 weights (~{weight_bytes / GIB:.1f} GiB) do not fit the GPU")
        return
    log(f"hf {shape.name}: materializing random fp16 weights on the GPU")
    try:
        model = hf_random_model(torch, shape, device, args.seed)
    except Exception as exc:
        skip(f"skipped hf {shape.name}: {type(exc).__name__}: {exc}")
        torch.cuda.empty_cache()
        return
    try:
        import torch._dynamo as dynamo

        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, limit):
                setattr(dynamo.config, limit, 64)
        for cache in ("static", "dynamic"):
            for b in args.batch_list:
                if not fits_gpu(shape, weight_bytes, b, args.prompt_len, seq_len, gpu_bytes):
                    skip(f"skipped hf {shape.name} {cache} cache batch {b}: weights + KV cache do not fit the GPU")
                    continue
                prompts = random_prompts(b, args.prompt_len, shape.config["vocab_size"], args.seed + b)
                try:
                    m = hf_measure(torch, model, prompts, args.gen_len, cache, args.reps)
                except Exception as exc:  # out of memory, compile failures: report, go on
                    skip(f"skipped hf {shape.name} {cache} cache batch {b}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    torch.cuda.empty_cache()
                    continue
                m["weight_bytes"] = weight_bytes
                rec = _record(shape, b, args, "hf", f"{cache} cache", "dense", 0.0, m, copy_gbps,
                              weights=HF_WEIGHTS, commit=doc["commit"])
                doc["records"].append(rec)
                log(record_line(rec))
                save()
                if cache == "static":
                    dynamo.reset()  # a new batch size compiles anew; drop the old graphs
    finally:
        del model
        torch.cuda.empty_cache()
