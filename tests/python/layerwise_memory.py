"""Peak resident memory of a conversion (magnitude, or calibrated), measured in a fresh process.

Not a test (pytest does not collect it): the tool behind the Memory table of
docs/checkpoint.md.

    python tests/python/layerwise_memory.py make opt-1.3b /tmp/opt13-hf [--layers N]
        writes a Hugging Face checkpoint of that named shape (sparsellm.convert.NAMED_CONFIGS,
        optionally with another layer count) with random float16 weights, tensor by tensor,
        into safetensors shards of at most 1 GB
    python tests/python/layerwise_memory.py convert /tmp/opt13-hf /tmp/out --method wanda \\
        --nsamples 16 --seqlen 128 [--tp 2] [--whole] [--format bitmap]
        converts it (wanda / sparsegpt: with random calibration ids, seed 0; magnitude: streamed,
        without) and prints one JSON line: peak RSS
        (resource.getrusage ru_maxrss), the baseline after importing torch and transformers,
        the time, and the source size; --whole uses the whole-model path (layerwise=False)
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(name: str, out: Path, layers: int | None, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    from sparsellm.convert.architectures import architecture_of
    from sparsellm.convert.model_plan import model_plan
    from sparsellm.convert.random_model import RandomWeights, random_model_config

    config, description = random_model_config(name)
    if layers is not None:
        config.num_hidden_layers = layers
    config.dtype = "float16"
    plan = model_plan(config, architecture_of(config, description))
    weights = RandomWeights(plan, seed)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    shard: dict[str, torch.Tensor] = {}
    size, files, weight_map = 0, [], {}

    def flush() -> None:
        nonlocal shard, size
        file_name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(out / file_name), metadata={"format": "pt"})
        files.append(file_name)
        weight_map.update({key: file_name for key in shard})
        shard, size = {}, 0

    for item in plan.tensors:
        tensor = weights.tensor(item.name).to(torch.float16).contiguous()
        if size and size + tensor.numel() * 2 > 1 << 30:
            flush()
        shard[item.name] = tensor
        size += tensor.numel() * 2
    flush()
    total = sum((out / f).stat().st_size for f in files)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    print(json.dumps({"wrote": str(out), "files": len(files), "bytes": total}))


def run_convert(source: Path, out: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import torch  # noqa: F401  (the baseline includes torch and transformers)
    import transformers  # noqa: F401

    from sparsellm.convert import convert

    baseline = rss_mib()
    config = json.loads((source / "config.json").read_text())
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], size=(args.nsamples, args.seqlen))
    start = time.time()
    calibrated = args.method != "magnitude"  # magnitude pruning streams, without calibration data
    convert(source, out, method=args.method, sparsity=args.sparsity, calib=ids if calibrated else None, tp=args.tp,
            format=args.format, layer_sparsity="owl" if args.owl else None, layerwise=not args.whole,
            progress=False, device=args.device)
    size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    print(json.dumps({
        "source": str(source), "source_gib": round(size / 2**30, 3), "method": args.method, "format": args.format,
        "owl": args.owl,
        "tp": args.tp, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "path": "whole model" if args.whole else "layer by layer",
        "peak_rss_mib": round(rss_mib()), "baseline_mib": round(baseline), "seconds": round(time.time() - start),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("name")
    m.add_argument("out", type=Path)
    m.add_argument("--layers", type=int)
    m.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("convert")
    c.add_argument("source", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--method", default="wanda")
    c.add_argument("--sparsity", type=float, default=0.6)
    c.add_argument("--format", default="auto")
    c.add_argument("--owl", action="store_true")
    c.add_argument("--nsamples", type=int, default=16)
    c.add_argument("--seqlen", type=int, default=128)
    c.add_argument("--tp", type=int, default=1)
    c.add_argument("--device", default=None)
    c.add_argument("--whole", action="store_true")
    args = parser.parse_args()
    if args.command == "make":
        make(args.name, args.out, args.layers, args.seed)
    else:
        run_convert(args.source, args.out, args)


if __name__ == "__main__":
    main()
