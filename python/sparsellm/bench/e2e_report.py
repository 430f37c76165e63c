"""The outputs of ``bench e2e`` (e2e.py): the JSON of records (merged with an earlier run's),
the markdown table with the targets, and the plot of tokens/s against batch.

A record: ``{model, tp, gpus, weights, batch, prompt_len, gen_len, impl, format, sparsity,
prefill_ms, decode_ms_per_step, tokens_per_s, tokens_per_gpu_s, peak_mem_gib, setting}`` and,
for our runtime, ``weight_gib, floor_ms, floor_ratio``.
"""
from __future__ import annotations

import json
from pathlib import Path
def _tp(r: dict) -> int:
    return r.get("tp", 1)


def _weights(r: dict) -> str:
    """A record's weights; records written before the field existed were converted."""
    return r.get("weights", "converted")


def _group_note(tp: int, weights: str) -> str:
    """How a run differs from one GPU with converted weights: '', ' (tp 2)', ' (generated weights)', ..."""
    notes = ([f"tp {tp}"] if tp > 1 else []) + (["generated weights"] if weights == "generated" else [])
    return f" ({', '.join(notes)})" if notes else ""


def _commit_of(r: dict) -> str:
    return r.get("commit", "–")  # "–": written before records carried their commit


def _measured_apart(r: dict, base: dict, what: str) -> str:
    """' (<what> measured at <commit>)' when base came from another commit than r, else ''."""
    return f" ({what} measured at {_commit_of(base)})" if _commit_of(base) != _commit_of(r) else ""


def record_line(r: dict) -> str:
    floor = f" floor {r['floor_ms']:.2f} ms ({r['floor_ratio']:.2f}x)" if "floor_ms" in r else ""
    return (f"  {r['model']}{_group_note(_tp(r), _weights(r))} {r['impl']:9s} {r['setting']:13s} {r['format']:9s} "
            f"s={r['sparsity']:.2f} "
            f"batch {r['batch']:3d}: prefill {r['prefill_ms']:8.1f} ms, decode {r['decode_ms_per_step']:7.2f} ms/step, "
            f"{r['tokens_per_s']:9.1f} tok/s, peak {r['peak_mem_gib']:.1f} GiB{floor}")


def record_key(r: dict) -> tuple:
    return (r["model"], r["impl"], r.get("setting"), r["format"], r["sparsity"], r["batch"], r["prompt_len"],
            r["gen_len"], _tp(r), _weights(r))


def merged(previous: dict, doc: dict) -> dict:
    """``doc`` with the records of ``previous`` that it does not measure again."""
    keys = {record_key(r) for r in doc["records"]}
    out = dict(doc)
    out["records"] = [r for r in previous.get("records", []) if record_key(r) not in keys] + doc["records"]
    out["skipped"] = previous.get("skipped", []) + doc["skipped"]
    return out


def write_outputs(doc: dict, out: Path, tag: str, previous: dict | None = None) -> None:
    full = doc if previous is None else merged(previous, doc)
    (out / f"e2e-{tag}.json").write_text(json.dumps(full, indent=1))
    (out / f"e2e-{tag}.md").write_text(summary_markdown(full))
    plot(full, out / f"e2e-{tag}.png")


def _find(recs, **want):
    return next((r for r in recs if all(r.get(k) == v for k, v in want.items())), None)


WEIGHTS_NOTE = ("Weights: converted = drawn on the CPU, magnitude-pruned per row and stored (convert_random); "
                "generated = drawn by the runtime on the GPU at load, each pruned weight with a random mask at the "
                "target sparsity (the same bytes in expectation, not magnitude-pruned); transformers draws its "
                "dense weights on the GPU too.")
TP_NOTE = ("tp N: N GPUs under mpirun; tokens/GPU-s = tokens/s ÷ N; peak memory and floor are one GPU's "
           "(rank 0's weight shard).")


def summary_markdown(doc: dict) -> str:
    recs = sorted(doc["records"], key=lambda r: (r["model"], _tp(r), _weights(r), r["impl"] != "sparsellm",
                                                 r.get("setting", ""), r["format"], r["sparsity"], r["batch"]))
    s = doc.get("settings", {})
    # Records merged from runs of other lengths carry theirs in a column of their own.
    lengths = {(r["prompt_len"], r["gen_len"]) for r in recs} or {(s.get("prompt_len"), s.get("gen_len"))}
    per_row = len(lengths) > 1
    tokens = ("prompt and new tokens as in each row's column \"tokens\"" if per_row
              else "prompt {} tokens, {} new tokens".format(*next(iter(lengths))))
    lines = [f"# End-to-end generation on {doc['gpu']} (commit {doc['commit']}, {doc['date']})", "",
             f"Random-weight models, fp16, {tokens}, "
             f"greedy. Copy bandwidth measured in the same run: {doc['copy_gbps']:.0f} GB/s; floor = weight bytes ÷ "
             "copy bandwidth.", ""]
    if any(_weights(r) == "generated" and r["impl"] == "sparsellm" for r in recs):
        lines += [WEIGHTS_NOTE, ""]
    if any(_tp(r) > 1 for r in recs):
        lines += [TP_NOTE, ""]
    columns = (["model", "tp", "weights", "impl", "setting", "format", "sparsity", "batch"]
               + (["tokens"] if per_row else [])
               + ["prefill ms", "decode ms/step", "tokens/s", "tokens/GPU-s", "peak GiB", "floor ms", "decode ÷ floor",
                  "commit"])
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in recs:
        floor = f"{r['floor_ms']:.2f} | {r['floor_ratio']:.2f}" if "floor_ms" in r else "– | –"
        lines.append(f"| {r['model']} | {_tp(r)} | {_weights(r)} | {r['impl']} | {r.get('setting', '')} | "
                     f"{r['format']} | {r['sparsity']:.0%} | "
                     f"{r['batch']} | " + (f"{r['prompt_len']} + {r['gen_len']} | " if per_row else "")
                     + f"{r['prefill_ms']:.1f} | {r['decode_ms_per_step']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_gpu_s']:.0f} | {r['peak_mem_gib']:.1f} | {floor} | {_commit_of(r)} |")
    lines += ["", "## Against the targets", ""]
    for model, tp, weights in sorted({(r["model"], _tp(r), _weights(r)) for r in recs if r["impl"] == "sparsellm"}):
        lines += _target_lines(recs, model, tp, weights)
    lines += _scale_lines(recs)
    if doc.get("skipped"):
        lines += ["", "## Not measured", ""] + [f"- {m}" for m in doc["skipped"]]
    return "\n".join(lines) + "\n"


def _tokens_note(r: dict, recs: list[dict]) -> str:
    """' (P + G tokens)' where recs hold runs of more than one prompt and generation length, else ''."""
    varies = len({(x["prompt_len"], x["gen_len"]) for x in recs}) > 1
    return f" ({r['prompt_len']} + {r['gen_len']} tokens)" if varies else ""


def _target_lines(recs: list[dict], model: str, tp: int, weights: str) -> list[str]:
    """Our runs of one model at one tp with one kind of weights against the targets (transformers: tp 1 only)."""
    name = model + _group_note(tp, weights)
    ours = [r for r in recs if r["model"] == model and r["impl"] == "sparsellm" and _tp(r) == tp
            and _weights(r) == weights]
    lines = []
    dense = [r for r in ours if r["sparsity"] == 0 and r["batch"] <= 16 and "floor_ratio" in r]
    if dense:
        worst = max(dense, key=lambda r: r["floor_ratio"])
        lines.append(f"- {name}, dense, batch 1–16: decode within {worst['floor_ratio']:.2f}× of the "
                     "weight-bytes "
                     f"floor (worst at batch {worst['batch']}; target ≤ 1.15×)")
    for r in ours:
        d16 = _find(ours, sparsity=0.0, batch=16, prompt_len=r["prompt_len"], gen_len=r["gen_len"])
        if r["batch"] == 16 and r["sparsity"] > 0 and d16:
            lines.append(f"- {name}, batch 16{_tokens_note(r, ours)}, {r['format']} {r['sparsity']:.0%}: decode step "
                         f"{r['decode_ms_per_step'] / d16['decode_ms_per_step']:.2f}× our dense path"
                         + _measured_apart(r, d16, "dense")
                         + (" (target ≤ 0.45× for OPT-30B at 80%)" if model == "opt-30b" and r["sparsity"] == 0.8
                            else ""))
    for setting, d16 in ((s, r) for s in ("static cache", "dynamic cache") for r in ours
                         if r["sparsity"] == 0 and r["batch"] == 16):
        hf = _find(recs, model=model, impl="hf", setting=setting, batch=16, prompt_len=d16["prompt_len"],
                   gen_len=d16["gen_len"])
        if hf and tp == 1:
            ratio = d16["tokens_per_s"] / hf["tokens_per_s"]
            lines.append(f"- {name}, batch 16{_tokens_note(d16, ours)}: our dense path {ratio:.2f}× the "
                         f"tokens/s of transformers with its {setting}" + _measured_apart(d16, hf, "transformers")
                         + " (target ≥ 1.5× its fastest)")
    return lines


def _scale_lines(recs: list[dict]) -> list[str]:
    """The scale targets: the fewest GPUs each model ran on per sparsity, and tokens per GPU-second at
    batch 16 of the sparse model on the fewest GPUs against the dense model at tp 4."""
    ours = [r for r in recs if r["impl"] == "sparsellm"]
    lines = []
    for model in sorted({r["model"] for r in ours}):
        fewest = {}
        for r in ours:
            if r["model"] == model:
                fewest[r["sparsity"]] = min(fewest.get(r["sparsity"], r["gpus"]), r["gpus"])
        lines.append(f"- {model}: ran on " + ", ".join(
            f"{n} GPU{'s' if n > 1 else ''} {'dense' if s == 0 else f'at {s:.0%}'}" for s, n in sorted(fewest.items()))
            + " (fewest per sparsity; targets: OPT-66B at 80% on 1, OPT-175B at 80% on 2)")
        dense4 = _find(ours, model=model, sparsity=0.0, batch=16, tp=4)
        for s, n in sorted(fewest.items()):
            sparse = _find(ours, model=model, sparsity=s, batch=16, tp=n)
            if s > 0 and sparse and dense4:
                lines.append(f"- {model}, batch 16: {s:.0%} sparse on {n} GPU{'s' if n > 1 else ''} gives "
                             f"{sparse['tokens_per_gpu_s'] / dense4['tokens_per_gpu_s']:.2f}× the tokens per "
                             "GPU-second of dense at tp 4" + _measured_apart(sparse, dense4, "dense")
                             + " (target ≥ 3.5× for OPT-66B at 80%)")
    return lines


def plot(doc: dict, path: Path) -> None:
    from .plotting import pyplot

    plt = pyplot()
    if plt is None:
        return
    recs = doc["records"]
    models = sorted({r["model"] for r in recs})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = [r for r in recs if r["model"] == model]
        def line_of(r: dict) -> tuple:
            return r["impl"], r.get("setting", ""), r["format"], r["sparsity"], _tp(r), _weights(r)

        for impl, setting, fmt, s, tp, weights in sorted({line_of(r) for r in sel}):
            pts = sorted((r["batch"], r["tokens_per_s"]) for r in sel
                         if line_of(r) == (impl, setting, fmt, s, tp, weights))
            label = (f"{impl} {setting}" if impl == "hf" else
                     (f"{fmt} {s:.0%}" if s > 0 else "dense") + _group_note(tp, weights))
            ax.plot(*zip(*pts), "--" if impl == "hf" else "-", marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{model} on {doc['gpu']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
