"""SpMM benchmark: Y[N, M] = X[N, K] · W[M, K]ᵀ on decode-time shapes.

Rows: cuBLAS dense (cuBLASLt, our dense path), cuSPARSE CSR (torch.sparse),
cuSPARSELt 2:4 (torch semi-structured, 50% only) and each of our formats, all
in one process on one card. Columns: median µs, speedup over cuBLAS, effective
GB/s (the bytes the format must move ÷ time) and its share of the copy
bandwidth measured in the same run. Writes spmm-<gpu>.json, .md and .png.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
from pathlib import Path

from sparsellm.format_choice import gpu_tag

# (name, M, K): OPT-66B (hidden 9216), OPT-175B FC1 at TP 8, Llama-2-7B / 70B.
SHAPES = [
    ("opt66b.qkv", 27648, 9216),
    ("opt66b.attn_out", 9216, 9216),
    ("opt66b.fc1", 36864, 9216),
    ("opt66b.fc2", 9216, 36864),
    ("opt175b.fc1.tp8", 6144, 12288),
    ("llama2-7b.qkv", 12288, 4096),
    ("llama2-7b.down", 4096, 11008),
    ("llama2-70b.gate_up.tp8", 7168, 8192),
    ("llama2-70b.down", 8192, 28672),
]
ANCHOR_SHAPES = [s[0] for s in SHAPES[:5]]
NS = [1, 8, 16, 32, 64, 128]
SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9]
CSR_NS = {1, 16, 64}
FORMATS = ["tiled_csl", "bitmap", "split24"]


def add_arguments(p) -> None:
    p.add_argument("--out", default="docs/benchmarks", help="output directory (default docs/benchmarks)")
    p.add_argument("--shapes", default="all", help="comma-separated shape names, or 'anchor', or 'all'")
    p.add_argument("--ns", default=",".join(map(str, NS)))
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--formats", default=",".join(FORMATS), help="our formats to time (impl column)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--no-baselines", action="store_true", help="skip cuSPARSE and cuSPARSELt")
    p.add_argument("--seed", type=int, default=0)


def _commit() -> str:
    if os.environ.get("SPARSELLM_COMMIT"):
        return os.environ["SPARSELLM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except Exception:
        return "unknown"


def random_weight(torch, m, k, sparsity, dtype, device, gen):
    """Trained-scale random weight with an unstructured random mask of exactly
    round(s·K) zeros per row."""
    w = torch.randn(m, k, device=device, dtype=torch.float32, generator=gen) * 0.02
    if sparsity > 0:
        drop = int(round(sparsity * k))
        order = torch.rand(m, k, device=device, generator=gen).argsort(dim=1)
        w.scatter_(1, order[:, :drop], 0.0)
    return w.to(dtype)


def run(args) -> int:
    import torch

    from sparsellm import ops
    from sparsellm._native import require_gpu
    from sparsellm.bench.timing import Timer
    from sparsellm.sparse_weight import SparseWeight

    gpu = require_gpu()
    device = torch.device("cuda", torch.cuda.current_device())
    timer = Timer(torch, device)
    copy_gbps = timer.copy_gbps()
    names = {s[0] for s in SHAPES} if args.shapes == "all" else (
        set(ANCHOR_SHAPES) if args.shapes == "anchor" else set(args.shapes.split(",")))
    shapes = [s for s in SHAPES if s[0] in names]
    ns = [int(v) for v in args.ns.split(",")]
    sparsities = [float(v) for v in args.sparsities.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    formats = args.formats.split(",")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    records = []
    print(f"{gpu['name']}: copy bandwidth {copy_gbps:.0f} GB/s", flush=True)

    def record(shape, m, k, n, s, dtype, impl, us, bytes_moved, cublas_us):
        rec = dict(shape=shape, M=m, K=k, N=n, sparsity=s, dtype=str(dtype).replace("torch.", ""), impl=impl,
                   us=round(us, 3), speedup_vs_cublas=round(cublas_us / us, 4),
                   gbps=round(bytes_moved / (us * 1e-6) / 1e9, 1))
        rec["pct_copy_bw"] = round(100 * rec["gbps"] / copy_gbps, 1)
        if not timer.queued_ahead:  # record() follows the timing of its case
            rec["host_bound"] = True
        records.append(rec)
        print(f"{shape:24s} N={n:4d} s={s:.2f} {rec['dtype']:8s} {impl:14s} {us:9.1f} us "
              f"{rec['speedup_vs_cublas']:6.2f}x {rec['gbps']:7.0f} GB/s"
              f"{'  (host-bound)' if not timer.queued_ahead else ''}", flush=True)

    for dtype in dtypes:
        for shape, m, k in shapes:
            xs = {n: torch.randn(n, k, device=device, dtype=dtype, generator=gen) for n in ns}
            dense_full = random_weight(torch, m, k, 0.0, dtype, device, gen)
            cublas = {}
            for n in ns:
                cublas[n] = timer.median_us(lambda: ops.linear(xs[n], dense_full), args.reps)
                record(shape, m, k, n, 0.0, dtype, "cublas", cublas[n], 2 * (m * k + n * k + n * m), cublas[n])
            del dense_full
            for s in sparsities:
                w = random_weight(torch, m, k, s, dtype, device, gen)
                for fmt in formats:
                    sw = SparseWeight.from_dense(w, format=fmt)
                    for n in ns:
                        us = timer.median_us(lambda: ops.spmm(xs[n], sw), args.reps)
                        record(shape, m, k, n, s, dtype, sw.format, us, sw.nbytes + 2 * (n * k + n * m), cublas[n])
                    del sw
                if not args.no_baselines:
                    _baselines(torch, timer, record, shape, m, k, s, dtype, w, xs, ns, cublas, args.reps)
                del w
                torch.cuda.empty_cache()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu_tag(gpu["name"])
    doc = dict(gpu=gpu["name"], commit=_commit(), date=datetime.date.today().isoformat(),
               copy_gbps=round(copy_gbps, 1), records=records)
    (out / f"spmm-{tag}.json").write_text(json.dumps(doc, indent=1))
    (out / f"spmm-{tag}.md").write_text(summary_markdown(doc))
    plot(doc, out / f"spmm-{tag}.png")
    print(summary_markdown(doc))
    return 0


def _baselines(torch, timer, record, shape, m, k, s, dtype, w, xs, ns, cublas, reps):
    """cuSPARSE CSR on the same weight; cuSPARSELt on a 2:4 pruning of it (50%)."""
    try:
        csr = w.to_sparse_csr()
        csr = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), w.shape)
        csr_bytes = csr.values().numel() * 2 + csr.col_indices().numel() * 4 + csr.crow_indices().numel() * 4
        for n in ns:
            if n not in CSR_NS:
                continue
            xt = xs[n].t().contiguous()
            us = timer.median_us(lambda: torch.mm(csr, xt), max(10, reps // 5), warmup=2)
            record(shape, m, k, n, s, dtype, "cusparse_csr", us, csr_bytes + 2 * (n * k + n * m), cublas[n])
        del csr
    except Exception as exc:  # report, keep benchmarking
        print(f"  cusparse_csr unavailable for {shape} {dtype}: {exc}")
    if abs(s - 0.5) > 1e-9:
        return
    try:
        from torch.sparse import to_sparse_semi_structured

        dense = torch.randn(m, k // 4, 4, device=w.device, dtype=dtype) * 0.02
        keep = dense.abs().topk(2, dim=-1).indices
        mask = torch.zeros_like(dense, dtype=torch.bool).scatter_(-1, keep, True)
        ss = to_sparse_semi_structured((dense * mask).view(m, k))
        del dense, mask
        for n in ns:
            x = xs[n]
            us = timer.median_us(lambda: torch.nn.functional.linear(x, ss), reps)
            record(shape, m, k, n, s, dtype, "cusparselt_24", us, m * k + m * k // 8 + 2 * (n * k + n * m), cublas[n])
        del ss
    except Exception as exc:
        print(f"  cusparselt_24 unavailable for {shape} {dtype}: {exc}")


def _geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary_shapes(recs) -> tuple[set[str], str]:
    """The shapes the summary averages over, and its caption: the five anchor shapes where the
    run has them all (the default run), else every shape of the run (a calibration grid)."""
    present = list(dict.fromkeys(r["shape"] for r in recs))
    if set(ANCHOR_SHAPES) <= set(present):
        return set(ANCHOR_SHAPES), "Anchor shapes (OPT-66B QKV, attention-out, FC1, FC2; OPT-175B FC1 at TP 8)."
    return set(present), f"Shapes of this run: {', '.join(present)}."


def decode_widths(recs) -> list[int]:
    """The widths of the summary's decode column: those of N = 8, 16, 32 that the run measured."""
    return sorted({r["N"] for r in recs} & {8, 16, 32})


def summary_markdown(doc) -> str:
    recs = doc["records"]
    impls = sorted({r["impl"] for r in recs} - {"cublas"})
    dtypes = sorted({r["dtype"] for r in recs})
    sparsities = sorted({r["sparsity"] for r in recs if r["impl"] != "cublas"})
    shapes, caption = summary_shapes(recs)
    decode_ns = decode_widths(recs)
    lines = [f"# SpMM on {doc['gpu']} (commit {doc['commit']}, {doc['date']})", "",
             f"Copy bandwidth measured in the same run: {doc['copy_gbps']:.0f} GB/s (read + write).", "",
             "## Geometric-mean speedup over cuBLAS", "",
             caption, "",
             f"| impl | dtype | sparsity | N={','.join(map(str, decode_ns))} | N=1 | N=64 | N=128 | eff. GB/s (N=16) | "
             "% of copy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for impl in impls:
        for dt in dtypes:
            for s in sparsities:
                sel = [r for r in recs if r["impl"] == impl and r["dtype"] == dt and r["sparsity"] == s
                       and r["shape"] in shapes]
                if not sel:
                    continue
                g = lambda ns: _geomean([r["speedup_vs_cublas"] for r in sel if r["N"] in ns])  # noqa: E731
                bw = [r for r in sel if r["N"] == 16]
                gb = _geomean([r["gbps"] for r in bw])
                pct = _geomean([r["pct_copy_bw"] for r in bw])
                lines.append(f"| {impl} | {dt} | {s:.0%} | {g(set(decode_ns)):.2f} | {g({1}):.2f} | {g({64}):.2f} | "
                             f"{g({128}):.2f} | {gb:.0f} | {pct:.0f}% |")
    host_bound = [r for r in recs if r.get("host_bound")]
    if host_bound:
        lines += ["", f"{len(host_bound)} case(s) marked * could not have every launch queued before the GPU "
                  "reached it (the timed function synchronizes, or the host stalled): their times may hold host "
                  "delay."]
    lines += ["", "## Every case (µs, median)", "",
              "| shape | M×K | N | dtype | sparsity | impl | µs | speedup | GB/s | % copy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['shape']} | {r['M']}×{r['K']} | {r['N']} | {r['dtype']} | {r['sparsity']:.0%} | "
                     f"{r['impl']}{' *' if r.get('host_bound') else ''} | {r['us']:.1f} | "
                     f"{r['speedup_vs_cublas']:.2f} | {r['gbps']:.0f} | "
                     f"{r['pct_copy_bw']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(doc, path) -> None:
    from .plotting import pyplot

    plt = pyplot()
    if plt is None:
        return
    recs = doc["records"]
    shapes, _ = summary_shapes(recs)
    decode_ns = decode_widths(recs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl in sorted({r["impl"] for r in recs} - {"cublas"}):
        for dt, style in (("float16", "-"), ("bfloat16", "--")):
            pts = []
            for s in sorted({r["sparsity"] for r in recs if r["impl"] == impl}):
                sel = [r["speedup_vs_cublas"] for r in recs if r["impl"] == impl and r["dtype"] == dt
                       and r["sparsity"] == s and r["N"] in decode_ns and r["shape"] in shapes]
                if sel:
                    pts.append((s * 100, _geomean(sel)))
            if pts:
                ax.plot(*zip(*pts), style, marker="o", label=f"{impl} {dt}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"speedup over cuBLAS (geomean, N = {'/'.join(map(str, decode_ns))})")
    ax.set_title(f"SpMM on {doc['gpu']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
