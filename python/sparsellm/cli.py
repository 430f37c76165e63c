"""The ``sparsellm`` command line (also ``python -m sparsellm``).

Each subcommand is one function ``name(argv) -> exit status`` that parses its own
arguments; adding one is writing that function and one line in ``SUBCOMMANDS``.
Errors about the input (sparsellm errors, bad values, missing or existing files) are
printed as one line, with exit status 1. SIGTERM and Ctrl-C unwind normally, so that a
conversion they stop leaves no partial output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

EXIT_ERROR = 1


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_format_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the speed model that chooses and rates formats (sparsellm.format_choice)."""
    parser.add_argument("--target-gpu", metavar="NAME",
                        help="GPU whose speed model decides formats, e.g. 'NVIDIA H100 80GB HBM3' or h100-80gb-hbm3 "
                             "(default: this GPU if torch sees one, else H100)")
    parser.add_argument("--decode-batch", type=int, default=16, metavar="N", help="batch size to optimize for")
    parser.add_argument("--calibration", metavar="FILE",
                        help="a format model file (python -m sparsellm.bench calibrate) instead of the cached one")


def _format_policy(args: argparse.Namespace):
    from sparsellm.format_choice import FormatPolicy

    return FormatPolicy.load(args.target_gpu, args.calibration, args.decode_batch)


def convert(argv: list[str]) -> int:
    """Prune a Hugging Face model, or generate a random one, and write a sparsellm checkpoint."""
    from sparsellm.convert.encoding import FORMAT_CHOICES

    parser = argparse.ArgumentParser(prog="sparsellm convert", description=convert.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="HF_DIR", help="Hugging Face model directory (OPT or Llama family)")
    source.add_argument("--random", metavar="CONFIG",
                        help="random weights of a named shape (opt-125m ... opt-175b, llama-2-7b/13b/70b) "
                             "or of a config.json")
    parser.add_argument("--generated", action="store_true",
                        help="with --random: write config.json alone, the runtime draws the weights at load "
                             "(docs/checkpoint.md)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    parser.add_argument("--sparsity", type=float, help="fraction of each pruned weight's entries set to zero")
    parser.add_argument("--method", default="magnitude", choices=("magnitude", "wanda", "sparsegpt"))
    parser.add_argument("--calib", metavar="FILE|default",
                        help="calibration token ids (.npy/.pt/.safetensors) for wanda, sparsegpt and OWL; "
                             "'default' (the default) samples them from the model itself")
    parser.add_argument("--nsamples", type=int, default=128, help="sequences of the default calibration set")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per default calibration sequence")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (one file each)")
    parser.add_argument("--dtype", choices=("fp16", "bf16"),
                        help="stored dtype (default: the model's if fp16/bf16, else fp16; fp16 for --random)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                        help="storage of pruned weights (auto: the fastest predicted at --decode-batch on "
                             "--target-gpu, see docs/formats.md)")
    _add_format_model_arguments(parser)
    parser.add_argument("--layer-sparsity", metavar="owl|FILE", help="OWL, or a JSON sparsity map")
    parser.add_argument("--nm", metavar="N:M", help="semi-structured pattern, e.g. 2:4")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the default calibration set / random weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    args = parser.parse_args(argv)

    from sparsellm.convert import convert as convert_model, convert_random, write_generated

    if args.random is not None and (args.method != "magnitude" or args.calib is not None):
        parser.error("--random models are pruned by magnitude; --method and --calib do not apply")
    if args.generated and args.random is None:
        parser.error("--generated needs --random CONFIG (the shape whose weights the runtime draws)")
    if args.generated and (args.nm is not None or args.layer_sparsity is not None):
        parser.error("--generated draws every pruned weight's mask at load at --sparsity: --nm and "
                     "--layer-sparsity do not apply")
    progress = False if args.quiet else None
    fmt = _format_policy(args) if args.format == "auto" else args.format
    common = dict(sparsity=args.sparsity, tp=args.tp, format=fmt, seed=args.seed, overwrite=args.overwrite)
    converting = dict(nm=args.nm, layer_sparsity=args.layer_sparsity, progress=progress)
    if args.generated:
        config = write_generated(args.random, args.out, dtype=args.dtype or "fp16", **common)
    elif args.random is not None:
        config = convert_random(args.random, args.out, dtype=args.dtype or "fp16", **common, **converting)
    else:
        config = convert_model(args.model, args.out, method=args.method, calib=args.calib, nsamples=args.nsamples,
                               seqlen=args.seqlen, dtype=args.dtype, log=None if args.quiet else _stderr, **common,
                               **converting)
    if not args.quiet:
        _stderr(_wrote_line(args.out, config))
    return 0


def _wrote_line(out: str, config: dict) -> str:
    """What ``convert`` wrote, in one line."""
    pruning = config["pruning"]
    stored = [t["format"] for t in config["tensors"].values()]
    from sparsellm.convert.checkpoint import SPARSE_DATA_COMPONENT

    sparse = ", ".join(f"{stored.count(f)} {f}" for f in SPARSE_DATA_COMPONENT)
    head = f"wrote {out}: {len(config['tensors'])} tensors ({sparse}), tp {config['tp']}, {config['dtype']}"
    if config["source"]["kind"] == "generated":
        return (f"{head}, config.json alone (generated: the weights are drawn at load from seed "
                f"{config['source']['seed']}); target sparsity {pruning['achieved_sparsity']:.4f}")
    total = sum(f["bytes"] for f in config["files"].values())
    return (f"{head}, {total} bytes; {pruning['method']} pruning, achieved sparsity "
            f"{pruning['achieved_sparsity']:.4f}")


def info(argv: list[str]) -> int:
    """List a checkpoint's tensors: format, shape, sparsity, bytes (and vs dense fp16), with totals."""
    parser = argparse.ArgumentParser(prog="sparsellm info", description=info.__doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="sparsellm checkpoint directory")
    parser.add_argument("--rank", type=int, help="only this tensor-parallel rank (default: all)")
    parser.add_argument("--verify", action="store_true",
                        help="also check every rank file (size, sha256, components, Tiled-CSL structure)")
    _add_format_model_arguments(parser)
    args = parser.parse_args(argv)

    from sparsellm.convert import load_checkpoint, read_config
    from sparsellm.convert.checkpoint import is_generated
    from sparsellm.convert.summary import checkpoint_summary

    config = read_config(args.checkpoint)
    ranks = list(range(config["tp"])) if args.rank is None else [args.rank]
    if args.rank is not None and not 0 <= args.rank < config["tp"]:
        parser.error(f"--rank must be in [0, {config['tp']})")
    generated = is_generated(config)
    if args.verify and not generated:
        for rank in ranks:
            load_checkpoint(args.checkpoint, rank)
    print(checkpoint_summary(config, ranks, _format_policy(args)))
    if args.verify:
        print("verified: config.json of a generated checkpoint (no rank files: the weights are drawn at load)"
              if generated else f"verified: rank file(s) {', '.join(map(str, ranks))} match config.json")
    return 0


def bench(argv: list[str]) -> int:
    """Benchmarks: the same as python -m sparsellm.bench."""
    from sparsellm.bench.__main__ import main as bench_main

    return bench_main(argv)


def generate(argv: list[str]) -> int:
    """Generate from a checkpoint (cli_generate.py)."""
    from sparsellm.cli_generate import generate as run

    return run(argv)


def demo(argv: list[str]) -> int:
    """Random-weight OPT, dense and sparse, on this GPU (cli_generate.py)."""
    from sparsellm.cli_generate import demo as run

    return run(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo": (demo, "random-weight OPT sized to the GPU: sparse vs dense decode speed and memory"),
    "generate": (generate, "generate text or token ids from a checkpoint, with tokens/s"),
    "convert": (convert, "prune a Hugging Face (or random) model into a sparsellm checkpoint"),
    "info": (info, "list a checkpoint's tensors, formats, sparsity and sizes"),
    "bench": (bench, "benchmarks (python -m sparsellm.bench)"),
}


def main(argv: list[str] | None = None) -> int:
    from sparsellm import Error, __version__

    listing = "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="sparsellm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="sparsellm: inference for LLMs with unstructured sparse weights.",
        epilog=f"commands:\n{listing}\n\nsparsellm COMMAND --help describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"sparsellm {__version__}")
    parser.add_argument("command", choices=SUBCOMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run = SUBCOMMANDS[args.command][0]
    # SIGTERM unwinds like an exception, so an interrupted conversion removes its partial output
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(args.args)
    except (Error, ValueError, OSError) as exc:
        _stderr(f"sparsellm {args.command}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _stderr(f"sparsellm {args.command}: interrupted")
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
