"""One rank of a tensor-parallel test run, started by test_tensor_parallel.py as

    mpirun -n N python tp_worker.py run CKPT OUT PROMPTS.json NEW_TOKENS [--no-graphs]
    python tp_worker.py run ...                     (TP = 1: a single process, no MPI)
    mpirun -n N python tp_worker.py die CKPT OUT PROMPTS.json NEW_TOKENS

``run``: sparsellm.LLM(CKPT) (tensor parallelism detected from mpirun), greedy generation of
NEW_TOKENS tokens per prompt (no EOS stop), then the prompts' last-token logits; every rank writes
OUT/rank{r}.json (tokens, graph steps, graph error, info) and OUT/rank{r}-logits.npy.
``die``: after one generation, rank 1 exits at once (os._exit, no cleanup) while the other ranks
generate again: they must stop, not hang.
A rank that fails writes OUT/rank{r}-error.txt ("ExceptionType: message") before raising.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

import sparsellm


def main(argv: list[str]) -> int:
    mode, ckpt, out, prompts_file, new_tokens = argv[:5]
    graphs = "--no-graphs" not in argv[5:]
    prompts = json.loads(Path(prompts_file).read_text())
    new_tokens = int(new_tokens)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seq = max(len(p) for p in prompts) + new_tokens
    with sparsellm.LLM(ckpt, max_batch=len(prompts), max_seq_len=seq, cuda_graphs=graphs) as llm:
        rank = llm.rank
        with warnings.catch_warnings(record=True) as caught:  # a failed decode-step capture warns
            warnings.simplefilter("always")
            result = llm.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)
        if mode == "die":
            if rank == 1:
                print("rank 1: exiting without cleanup", file=sys.stderr, flush=True)
                os._exit(3)
            llm.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)  # its peer is gone
            return 0
        stats = dict(llm.last_stats)
        logits = llm.prompt_logits(prompts)
        record = {
            "rank": rank,
            "tokens": [g.token_ids for g in result],
            "graph_steps": stats["graph_steps"],
            "decode_steps": stats["decode_steps"],
            "graph_warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
            "info": llm.info,
            "weight_bytes": llm.weight_bytes,
        }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    np.save(out_dir / f"rank{rank}-logits.npy", logits)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # each rank records its own error for the test, then fails as usual
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))
        out = Path(sys.argv[3])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}-error.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise
