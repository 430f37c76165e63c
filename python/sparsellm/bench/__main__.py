"""python -m sparsellm.bench {spmm} [options] — see each benchmark's --help."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsellm.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    from sparsellm.bench import spmm

    spmm.add_arguments(sub.add_parser("spmm", help="sparse × dense GEMM vs cuBLAS, cuSPARSE and cuSPARSELt"))
    args = parser.parse_args(argv)
    if args.which == "spmm":
        return spmm.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
