"""python -m sparsellm.bench {spmm,e2e,step,calibrate,allreduce} [options] — see each benchmark's --help."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsellm.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    from sparsellm.bench import allreduce, calibrate, e2e, spmm, step

    spmm.add_arguments(sub.add_parser("spmm", help="sparse × dense GEMM vs cuBLAS, cuSPARSE and cuSPARSELt"))
    e2e.add_arguments(sub.add_parser("e2e", help="end-to-end generation: sparse vs dense vs transformers",
                                     description=e2e.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    step.add_arguments(sub.add_parser("step", help="where a decode step's time goes, kernel by kernel",
                                      description=step.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    calibrate.add_arguments(sub.add_parser("calibrate", help="fit the format speed model on this GPU",
                                           description=calibrate.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    allreduce.add_arguments(sub.add_parser("allreduce", help="tensor-parallel all-reduce: peer kernel vs NCCL "
                                           "(under mpirun)", description=allreduce.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.which == "spmm":
        return spmm.run(args)
    if args.which == "e2e":
        return e2e.run(args)
    if args.which == "step":
        return step.run(args)
    if args.which == "calibrate":
        return calibrate.run(args)
    if args.which == "allreduce":
        return allreduce.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
