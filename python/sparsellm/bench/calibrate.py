"""Calibrate the format speed model on this GPU: ``python -m sparsellm.bench calibrate --out DIR``.

Times a small grid (three decode-size weights, N = 1..128, sparsity 30-90 %, fp16; dense
through cuBLASLt, Tiled-CSL and bitmap through our kernels) with the SpMM benchmark's
machinery (spmm.py: same timer, L2 flushed before every launch, the same records), fits
the model of ``sparsellm.format_choice`` to it and writes DIR/spmm-<gpu>.json (the raw
records), DIR/format-model-<gpu>.json and, unless --no-cache, the per-GPU cache file the
converter reads (``$XDG_CACHE_HOME/sparsellm/``, default ~/.cache/sparsellm/).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# Shapes of SHAPES in spmm.py: a small, a medium and a large decode weight.
CALIBRATION_SHAPES = "opt175b.fc1.tp8,llama2-7b.down,opt66b.qkv"
CALIBRATION_NS = "1,8,16,32,64,128"
CALIBRATION_SPARSITIES = "0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="output directory (default results)")
    p.add_argument("--shapes", default=CALIBRATION_SHAPES, help="comma-separated shape names of bench spmm")
    p.add_argument("--ns", default=CALIBRATION_NS)
    p.add_argument("--sparsities", default=CALIBRATION_SPARSITIES)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--no-cache", action="store_true", help="do not install the model in the per-GPU cache")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from sparsellm.bench import spmm
    from sparsellm.format_choice import cache_dir, fit_benchmark_file, gpu_tag, model_file_name, write_model

    bench_args = argparse.Namespace(out=args.out, shapes=args.shapes, ns=args.ns, sparsities=args.sparsities,
                                    dtypes="float16", formats=",".join(spmm.FORMATS), reps=args.reps,
                                    no_baselines=True, seed=args.seed)
    status = spmm.run(bench_args)
    if status != 0:
        return status
    from sparsellm._native import require_gpu

    model = fit_benchmark_file(Path(args.out) / f"spmm-{gpu_tag(require_gpu()['name'])}.json")
    written = [write_model(model, Path(args.out) / model_file_name(model.gpu))]
    if not args.no_cache:
        written.append(write_model(model, cache_dir() / model_file_name(model.gpu)))
    print(f"format model of {model.gpu} ({gpu_tag(model.gpu)}): fit {json.dumps(model.fit)}")
    print("written: " + ", ".join(map(str, written)))
    return 0
