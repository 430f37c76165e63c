"""One rank of ``python -m sparsellm bench e2e`` on the CPU, started by test_generated.py as

    mpirun -n N python e2e_tp_worker.py CALLS_DIR [e2e options...]

with stand-ins for the GPU (``require_gpu``, ``measure_copy_gbps``) and for ``sparsellm.LLM``:
the stand-in reads the checkpoint's config.json when it is loaded (so a rank that loads a
checkpoint before rank 0 has finished it fails) and records every call it gets. Each rank
writes its calls to CALLS_DIR/rank{r}.json at the end; the benchmark's exit status is the
worker's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


class RecordingLLM:
    """Stands in for sparsellm.LLM: timings from the checkpoint's sparsity, every call recorded in ``CALLS``."""

    CALLS: list = []

    def __init__(self, path, *, max_batch=8, max_seq_len=None, cuda_graphs=True, tp=None):
        from sparsellm.convert import read_config

        self.config = read_config(path)
        self.pruned = self.config["pruning"]["sparsity"] > 0
        self.last_stats: dict = {}
        self.CALLS.append(["load", Path(path).name, max_batch, max_seq_len, tp, self.config["tp"]])

    def generate(self, prompts, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop_at_eos=True):
        self.CALLS.append(["generate", len(prompts), max_new_tokens])
        self.last_stats = dict(prefill_ms=5.0, decode_ms_per_step=4.0 if self.pruned else 10.0,
                               peak_mem_bytes=1 << 30, weight_bytes=1 << 28)
        return [type("G", (), dict(token_ids=[1] * max_new_tokens)) for _ in prompts]

    def close(self):
        self.CALLS.append(["close"])


def main(argv: list[str]) -> int:
    calls_dir, options = Path(argv[0]), argv[1:]
    import sparsellm._native
    import sparsellm.llm
    from sparsellm.bench import e2e
    from sparsellm.cli import main as cli_main

    sparsellm._native.require_gpu = lambda: dict(name="NVIDIA Fake GPU", global_mem_bytes=80 << 30)
    sparsellm.llm.LLM = RecordingLLM
    e2e.measure_copy_gbps = lambda: 3000.0
    status = cli_main(["bench", "e2e", *options])
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    (calls_dir / f"rank{rank}.json").write_text(json.dumps(RecordingLLM.CALLS))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
