"""``sparsellm generate``, ``sparsellm demo`` and ``python -m sparsellm.bench e2e``.

CPU: argument validation, the clear exit (status 2, "needs a CUDA GPU") without a GPU
before any conversion, the benchmark's estimates, conversion pipeline, skip logic, report
and plot, the Hugging Face baseline's random model and timing on a tiny CPU model, and the
generate / demo / e2e loops end to end with a stand-in for sparsellm.LLM. GPU (``gpu``):
generate on a tiny converted model, ``demo --quick`` end to end, ``bench e2e --quick``
writing valid JSON / markdown / PNG.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import OPTConfig

from sparsellm.bench import e2e, e2e_report
from sparsellm.bench.__main__ import main as bench_main
from sparsellm.cli import main
from sparsellm.cli_generate import _agreement, demo_table
from sparsellm.convert import convert_random, read_config

VOCAB = 1000


def _gpus() -> int:
    try:
        from sparsellm import device_count

        return device_count()
    except Exception:
        return 0


NO_GPU = pytest.mark.skipif(_gpus() > 0, reason="checks the behaviour without a GPU")


def _tiny_config(directory: Path, hidden: int = 256, ffn: int = 1024, heads: int = 4, layers: int = 2) -> Path:
    config = OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                       num_attention_heads=heads, max_position_embeddings=256, word_embed_proj_dim=hidden)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory / "config.json"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer OPT (hidden 256, 4 heads, FFN 1024, vocab 1000), 70% sparse in Tiled-CSL."""
    root = tmp_path_factory.mktemp("tiny")
    out = root / "ckpt"
    convert_random(_tiny_config(root / "cfg"), out, sparsity=0.7, format="tiled_csl", seed=5, progress=False)
    return out


# ------------------------------------------------------------------------------------ arguments (CPU)

@pytest.mark.parametrize("argv", [
    ["generate"],                                                          # no --model, no prompt
    ["generate", "--model", "m"],                                          # no prompt
    ["generate", "--model", "m", "--prompt", "a", "--prompt-ids", "1"],    # both kinds of prompt
    ["generate", "--model", "m", "--prompt-ids", "1,x"],
    ["generate", "--model", "m", "--prompt-ids", "1,-2"],
    ["generate", "--model", "m", "--prompt-ids", "1", "--max-new-tokens", "0"],
    ["generate", "--model", "m", "--prompt-ids", "1", "--top-p", "0"],
    ["generate", "--model", "m", "--prompt-ids", "1", "--temperature", "-1"],
    ["generate", "--model", "m", "--prompt-ids", "1", "--max-batch", "0"],
    ["demo", "--sparsities", "0,0.5"],
    ["demo", "--sparsities", "0.5,1.2"],
    ["demo", "--sparsities", "half"],
    ["demo", "--format", "dense"],
    ["demo", "--model-shape", "opt-175b"],
    ["demo", "--batch", "0"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_generate_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "none"), "--prompt-ids", "1,2"]) == 1
    err = capsys.readouterr().err
    assert "sparsellm generate: error:" in err and "none" in err


def test_generate_rejects_ids_beyond_the_vocabulary(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", f"1,{VOCAB}"]) == 1
    assert f"token id {VOCAB} is not below the vocabulary size {VOCAB}" in capsys.readouterr().err


@NO_GPU
def test_generate_without_gpu_says_so(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "1,2,3"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@NO_GPU
def test_demo_without_gpu_says_so_before_converting(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    assert main(["demo", "--quick", "--workdir", str(work)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert list(work.iterdir()) == []


@NO_GPU
def test_bench_e2e_without_gpu_says_so(tmp_path, capsys):
    assert bench_main(["e2e", "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, options", [("generate", ("--prompt-ids", "--top-p", "--no-cuda-graphs")),
                                              ("demo", ("--model-shape", "--sparsities", "--keep", "--quick"))])
def test_help(command, options, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and all(option in out for option in options)


def test_bench_e2e_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "e2e", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for option in ("--models", "--batches", "--sparsities", "--formats", "--prompt-len", "--gen-len", "--hf",
                   "--quick", "--workdir", "--convert-only", "--weights", "--tp", "mpirun -n N"):
        assert option in out


@pytest.mark.parametrize("argv", [
    ["--sparsities", "0,1"], ["--models", "llama-2-7b", "--hf"], ["--models", "opt-1b"], ["--formats", "dense"],
    ["--batches", "0"], ["--gen-len", "0"],
])
def test_bench_e2e_bad_settings(argv, tmp_path, capsys):
    assert main(["bench", "e2e", "--out", str(tmp_path), *argv]) == 1
    assert "sparsellm bench: error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, env, message", [
    (["--tp", "2"], {}, "--tp 2 runs one process per GPU under mpirun: mpirun -n 2 python -m sparsellm.bench e2e"),
    (["--tp", "2"], {"OMPI_COMM_WORLD_SIZE": "4"}, "--tp 2, but mpirun started 4 processes"),
    ([], {"PMI_SIZE": "2"}, "--tp 1, but mpirun started 2 processes: pass --tp 2"),
    (["--tp", "2", "--hf"], {"OMPI_COMM_WORLD_SIZE": "2"}, "--hf runs the transformers baseline on one GPU"),
    (["--tp", "0"], {}, "--tp must be at least 1"),
    (["--convert-only"], {"OMPI_COMM_WORLD_SIZE": "2"}, "--convert-only runs as one process"),
    (["--tp", "3", "--models", "opt-13b"], {"OMPI_COMM_WORLD_SIZE": "3"}, "tensor parallelism 3 does not divide"),
])
def test_bench_e2e_tensor_parallel_and_weights_settings(argv, env, message, tmp_path, capsys, monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["bench", "e2e", "--out", str(tmp_path / "out"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsellm bench: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- benchmark logic (CPU)

@pytest.mark.parametrize("sparsity, fmt", [(0.0, "dense"), (0.7, "tiled_csl"), (0.7, "dense"), (0.7, "bitmap"),
                                           (0.5, "bitmap")])
def test_checkpoint_size_estimate(sparsity, fmt, tmp_path):
    if fmt == "bitmap":
        from sparsellm._native import native

        if not hasattr(native(), "encode_bitmap"):
            pytest.skip("the compiled library has no bitmap encoder")
    config_file = _tiny_config(tmp_path / "cfg", hidden=512, ffn=2048)
    shape = e2e.model_shape(str(config_file))
    config = convert_random(config_file, tmp_path / "ckpt", sparsity=sparsity, format=fmt, seed=1, progress=False)
    actual = sum(f["bytes"] for f in config["files"].values())
    estimate = shape.checkpoint_bytes(sparsity, fmt)
    assert 0.9 * actual <= estimate <= 1.1 * actual + (1 << 20), (actual, estimate)


def test_named_shapes_and_memory_estimates():
    shape = e2e.model_shape("opt-13b")
    assert 12.5e9 < shape.params < 13.5e9
    assert shape.checkpoint_bytes(0.8, "tiled_csl") < 0.45 * shape.checkpoint_bytes(0.0, "dense")
    # 40 layers x K and V x batch 16 x 384 tokens x 5120 x 2 bytes
    assert shape.kv_bytes(16, 384) == 2 * 40 * 16 * 384 * 5120 * 2
    gib = 1 << 30
    assert e2e.fits_gpu(shape, shape.checkpoint_bytes(0, "dense"), 16, 128, 384, 80 * gib)
    assert not e2e.fits_gpu(shape, shape.checkpoint_bytes(0, "dense"), 16, 128, 384, 24 * gib)
    assert e2e.gpu_tag("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_memory_estimates_per_rank():
    shape = e2e.model_shape("opt-66b")
    gib = 1 << 30
    one, two = shape.rank_bytes(0, "dense"), shape.rank_bytes(0, "dense", tp=2)
    assert one == shape.checkpoint_bytes(0, "dense") and 120 * gib < one < 125 * gib
    embeddings = 2 * (50272 + 2050) * 9216  # replicated: whole on every rank
    assert two == pytest.approx((one - embeddings) / 2 + embeddings, rel=1e-3)
    assert shape.checkpoint_bytes(0, "dense", tp=2) == pytest.approx(one + embeddings, rel=1e-3)  # all rank files
    assert shape.kv_bytes(16, 384, tp=2) == shape.kv_bytes(16, 384) // 2
    assert not e2e.fits_gpu(shape, one, 16, 128, 384, 80 * gib)
    assert e2e.fits_gpu(shape, two, 16, 128, 384, 80 * gib, tp=2)
    job = e2e.Job(shape, 0.8, "bitmap", 1, tp=2, weights="generated")
    assert job.generated and job.bytes == 0 and job.rank_bytes == shape.rank_bytes(0.8, "bitmap", 2)
    assert job.name == "opt-66b-bitmap-s80-tp2-generated" and job.label == "opt-66b bitmap 80% tp2 generated"
    assert e2e.Job(shape, 0.8, "bitmap", 1).name == "opt-66b-bitmap-s80"  # as before: kept work directories reused


def test_random_prompts_avoid_special_ids_and_are_seeded():
    a = e2e.random_prompts(3, 50, VOCAB, 7)
    assert len(a) == 3 and all(len(p) == 50 for p in a)
    assert min(min(p) for p in a) >= e2e.FIRST_TOKEN_ID and max(max(p) for p in a) < VOCAB
    assert a == e2e.random_prompts(3, 50, VOCAB, 7) and a != e2e.random_prompts(3, 50, VOCAB, 8)


def test_pipeline_skips_what_the_disk_cannot_hold(tmp_path):
    from sparsellm.convert.model_plan import TensorPlan

    huge = e2e.ModelShape("opt-huge", None, [TensorPlan("huge.weight", (10 ** 8, 10 ** 7), 0, "rows", "huge")])
    messages = []
    pipeline = e2e.CheckpointPipeline([e2e.Job(huge, 0.0, "dense", 1)], tmp_path, jobs=2, keep=False,
                                      log=messages.append)
    try:
        assert pipeline.ready(0) is None
    finally:
        pipeline.close()
    assert "skipped opt-huge dense 0%" in pipeline.skipped[0] and "free" in pipeline.skipped[0]
    assert messages and list(tmp_path.iterdir()) == []


def test_pipeline_converts_ahead_deletes_and_reuses(tmp_path):
    shape = e2e.model_shape(str(_tiny_config(tmp_path / "cfg", hidden=128, ffn=256)))
    jobs = [e2e.Job(shape, 0.0, "dense", 1), e2e.Job(shape, 0.7, "tiled_csl", 1)]
    work = tmp_path / "work"
    work.mkdir()
    for keep in (False, True, True):  # the second keep run reuses the first one's checkpoints
        messages = []
        pipeline = e2e.CheckpointPipeline(jobs, work, jobs=2, keep=keep, log=messages.append)
        try:
            for i, job in enumerate(jobs):
                path = pipeline.ready(i)
                assert path is not None and path.parent == work, messages
                config = read_config(path)
                assert config["pruning"]["sparsity"] == job.sparsity
                assert {t["format"] for t in config["tensors"].values() if t["pruned"]} == {job.fmt}
                pipeline.done(i)
                assert path.exists() == keep
        finally:
            pipeline.close()
    assert sum("reusing" in m for m in messages) == 2  # the last run converted nothing
    assert sorted(p.name for p in work.iterdir()) == sorted(job.name for job in jobs)


def test_pipeline_writes_generated_checkpoints_when_asked(tmp_path):
    shape = e2e.model_shape(str(_tiny_config(tmp_path / "cfg", hidden=128, ffn=256)))
    jobs = [e2e.Job(shape, 0.0, "dense", 1, tp=2, weights="generated"),
            e2e.Job(shape, 0.7, "bitmap", 1, tp=2, weights="generated")]
    work = tmp_path / "work"
    work.mkdir()
    messages = []
    pipeline = e2e.CheckpointPipeline(jobs, work, jobs=2, keep=False, log=messages.append)
    try:
        assert pipeline.pool is None  # nothing to convert
        for i, job in enumerate(jobs):
            assert list(work.iterdir()) == []  # written when asked for, not ahead
            path = pipeline.ready(i)
            config = read_config(path)
            assert config["source"]["kind"] == "generated" and config["tp"] == 2 and config["files"] == {}
            assert {t["format"] for t in config["tensors"].values() if t["pruned"]} == {job.fmt}
            assert not e2e._reusable(path, job)  # a converted checkpoint is never taken for it, nor it for one
            pipeline.done(i)
            assert not path.exists()
    finally:
        pipeline.close()
    assert sum("config.json alone" in m for m in messages) == 2


def test_reuse_needs_the_same_tp(tmp_path):
    shape = e2e.model_shape(str(_tiny_config(tmp_path / "cfg", hidden=128, ffn=256)))
    job = e2e.Job(shape, 0.0, "dense", 1)
    convert_random(shape.name, tmp_path / job.name, sparsity=0.0, format="dense", seed=1, progress=False)
    assert e2e._reusable(tmp_path / job.name, job)
    assert not e2e._reusable(tmp_path / job.name, e2e.Job(shape, 0.0, "dense", 1, tp=2))


class _FakeLLM:
    """Stands in for sparsellm.LLM on CPU: reads the checkpoint's config, makes tokens that depend on
    the prompt only (so sparse and dense-pruned agree), and reports timings that fall with sparsity."""

    def __init__(self, path, *, max_batch=8, max_seq_len=None, cuda_graphs=True, tp=None):
        self.config = read_config(path)
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        sparse = {t["format"] for t in self.config["tensors"].values()} - {"dense"}
        self.decode_ms = 4.0 if sparse else 10.0
        self.tokenizer, self.last_stats = None, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def generate(self, prompts, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop_at_eos=True):
        assert len(prompts) <= self.max_batch and not stop_at_eos and temperature == 0.0
        assert self.max_seq_len is None or all(len(p) + max_new_tokens <= self.max_seq_len for p in prompts)
        vocab = self.config["model_config"]["vocab_size"]
        out = [type("G", (), dict(prompt_ids=p, token_ids=[(sum(p) + i) % vocab for i in range(max_new_tokens)],
                                  text=None, finish_reason="length")) for p in prompts]
        self.last_stats = dict(prefill_ms=5.0, decode_ms_per_step=self.decode_ms, decode_steps=max_new_tokens - 1,
                               tokens_per_s=1.0, peak_mem_bytes=1 << 30, weight_bytes=1 << 28)
        return out


@pytest.fixture
def fake_gpu(monkeypatch):
    import sparsellm._native
    import sparsellm.llm

    monkeypatch.setattr(sparsellm._native, "require_gpu",
                        lambda: dict(name="NVIDIA Fake GPU", global_mem_bytes=80 << 30))
    monkeypatch.setattr(sparsellm.llm, "LLM", _FakeLLM)
    monkeypatch.setattr(e2e, "measure_copy_gbps", lambda: 3000.0)


def test_bench_e2e_run_loop_with_a_stand_in_runtime(fake_gpu, tmp_path, capsys):
    config_file = _tiny_config(tmp_path / "cfg", hidden=128, ffn=256)
    out = tmp_path / "out"
    argv = ["e2e", "--models", str(config_file), "--batches", "1,4", "--sparsities", "0,0.7", "--prompt-len", "8",
            "--gen-len", "6", "--out", str(out)]
    assert bench_main(argv) == 0
    doc = json.loads((out / "e2e-fake-gpu.json").read_text())
    assert doc["copy_gbps"] == 3000.0 and doc["skipped"] == []
    assert {(r["format"], r["sparsity"], r["batch"]) for r in doc["records"]} == {
        ("dense", 0.0, 1), ("dense", 0.0, 4), ("tiled_csl", 0.7, 1), ("tiled_csl", 0.7, 4)}
    for r in doc["records"]:
        assert set(e2e.RECORD_FIELDS) <= set(r) and r["impl"] == "sparsellm" and r["gen_len"] == 6
        assert r["decode_ms_per_step"] == (10.0 if r["sparsity"] == 0 else 4.0)
        assert r["floor_ms"] == pytest.approx((1 << 28) / 3e12 * 1e3, rel=1e-3)
    md = (out / "e2e-fake-gpu.md").read_text()
    assert "prompt 8 tokens, 6 new tokens" in md and "| tokens |" not in md and not (out / "e2e-work").exists()
    # --append: a second model's run merges into the same file
    assert bench_main(argv[:6] + ["0"] + argv[7:] + ["--append", "--gen-len", "7"]) == 0
    doc = json.loads((out / "e2e-fake-gpu.json").read_text())
    assert sorted({r["gen_len"] for r in doc["records"]}) == [6, 7] and len(doc["records"]) == 6
    # ... and the table says which lengths each row ran at
    md = (out / "e2e-fake-gpu.md").read_text()
    assert "as in each row's column \"tokens\"" in md and "| tokens |" in md
    assert "| 1 | 8 + 6 |" in md and "| 1 | 8 + 7 |" in md and "| 4 | 8 + 6 |" in md
    assert "| tiled_csl | 70% |" in capsys.readouterr().out


def test_bench_e2e_generated_weights_merge_beside_converted_ones(fake_gpu, tmp_path, capsys):
    config_file = _tiny_config(tmp_path / "cfg", hidden=128, ffn=256)
    out = tmp_path / "out"
    argv = ["e2e", "--models", str(config_file), "--batches", "1", "--sparsities", "0,0.7", "--prompt-len", "8",
            "--gen-len", "6", "--formats", "bitmap", "--out", str(out), "--append"]
    assert bench_main(argv) == 0
    assert bench_main(argv + ["--weights", "generated"]) == 0
    printed = capsys.readouterr().out
    assert "generated" in printed and "converting" in printed
    doc = json.loads((out / "e2e-fake-gpu.json").read_text())
    assert sorted((r["weights"], r["format"]) for r in doc["records"]) == [
        ("converted", "bitmap"), ("converted", "dense"), ("generated", "bitmap"), ("generated", "dense")]
    assert all(r["tp"] == r["gpus"] == 1 and r["tokens_per_gpu_s"] == r["tokens_per_s"] for r in doc["records"])
    md = (out / "e2e-fake-gpu.md").read_text()
    assert "Weights: converted = drawn on the CPU" in md and "| 1 | generated | sparsellm |" in md
    assert f"- {config_file} (generated weights), dense, batch 1–16: decode within" in md
    assert f"- {config_file}, dense, batch 1–16: decode within" in md  # the converted run's, apart
    assert not (out / "e2e-work").exists()


def test_records_of_other_tp_and_weights_merge():
    base = _records()[0]
    runs = [dict(base, tp=2, gpus=2), dict(base, weights="generated"), dict(base, tp=2, gpus=2, weights="generated")]
    old = dict(records=[base], skipped=[])
    for record in runs:
        old = e2e_report.merged(old, dict(records=[record], skipped=[]))
    assert len(old["records"]) == 4 and len({e2e_report.record_key(r) for r in old["records"]}) == 4
    legacy = {k: v for k, v in base.items() if k != "weights"}  # written before records had the field
    assert e2e_report.record_key(legacy) == e2e_report.record_key(base)
    again = e2e_report.merged(old, dict(records=[dict(base, tp=2, gpus=2, decode_ms_per_step=1.0)], skipped=[]))
    assert len(again["records"]) == 4
    assert [r["decode_ms_per_step"] for r in again["records"] if r["tp"] == 2 and r["weights"] == "converted"] == [1.0]
    md = e2e_report.summary_markdown(dict(gpu="g", commit="c", date="d", copy_gbps=1.0, settings={}, records=old["records"]))
    assert "tp N: N GPUs under mpirun" in md and "| opt-30b | 2 | generated | sparsellm |" in md


def test_generate_output_with_a_stand_in_runtime(fake_gpu, tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "5,6,7", "--prompt-ids", "8",
                 "--prompt-ids", "9,9", "--max-new-tokens", "3", "--ignore-eos", "--max-batch", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["[0] prompt: 5,6,7", "[0] ids: 18,19,20", "[0] finish: length, 3 new tokens",
                         "[1] prompt: 8"]
    assert lines[6].startswith("batch 2: prefill 5.0 ms, decode 4.00 ms/step (2 steps), 1.0 tokens/s")
    assert lines[7:10] == ["[2] prompt: 9,9", "[2] ids: 18,19,20", "[2] finish: length, 3 new tokens"]
    assert lines[10].startswith("batch 1: ") and len(lines) == 11


def test_demo_loop_with_a_stand_in_runtime(fake_gpu, tmp_path, monkeypatch, capsys):
    tiny = e2e.model_shape(str(_tiny_config(tmp_path / "cfg", hidden=128, ffn=256)))
    monkeypatch.setattr(e2e, "model_shape", lambda name: tiny)
    work = tmp_path / "work"
    assert main(["demo", "--quick", "--sparsities", "0.6,0.8", "--batch", "2", "--prompt-len", "4",
                 "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows[1:]] == [["| dense", "0%"], ["| tiled_csl", "60%"], ["| tiled_csl", "80%"]]
    assert all(r.endswith("| 2.50x | yes |") for r in rows[2:]), rows
    assert list(work.iterdir()) == []


def _records():
    recs = []
    for impl, setting, fmt, s, decode in (("sparsellm", "cuda graphs", "dense", 0.0, 10.0),
                                          ("sparsellm", "cuda graphs", "tiled_csl", 0.8, 4.0),
                                          ("hf", "static cache", "dense", 0.0, 16.0),
                                          ("hf", "dynamic cache", "dense", 0.0, 55.0)):
        for batch in (1, 16):
            m = dict(prefill_ms=50.0, decode_ms_per_step=decode, peak_mem_bytes=30 << 30,
                     weight_bytes=(25 << 30) if s == 0 else (10 << 30))
            args = type("A", (), dict(prompt_len=128, gen_len=256))
            recs.append(e2e._record(e2e.ModelShape("opt-30b", None, []), batch, args, impl, setting, fmt, s, m,
                                    3000.0, commit="c"))
    return recs


def test_records_report_and_plot(tmp_path):
    doc = dict(gpu="NVIDIA H100 80GB HBM3", commit="abc", date="2026-11-27", copy_gbps=3000.0,
               settings=dict(prompt_len=128, gen_len=256), records=_records(), skipped=["skipped x: reason"])
    for r in doc["records"]:
        assert set(e2e.RECORD_FIELDS) <= set(r)
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 256e3 / (50.0 + r["decode_ms_per_step"] * 255),
                                                  rel=1e-3)
    dense16 = next(r for r in doc["records"] if r["impl"] == "sparsellm" and r["sparsity"] == 0 and r["batch"] == 16)
    assert dense16["floor_ms"] == pytest.approx((25 << 30) / 3e12 * 1e3, rel=1e-3)
    e2e_report.write_outputs(doc, tmp_path, "h100")
    md = (tmp_path / "e2e-h100.md").read_text()
    assert "decode step 0.40× our dense path (target ≤ 0.45× for OPT-30B at 80%)" in md
    assert "our dense path 1.59× the tokens/s of transformers with its static cache" in md
    assert "skipped x: reason" in md
    assert json.loads((tmp_path / "e2e-h100.json").read_text())["records"] == doc["records"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "e2e-h100.png").stat().st_size > 1000


def test_a_comparison_across_commits_says_so():
    doc = dict(gpu="g", commit="new", date="d", copy_gbps=3000.0, settings={}, records=_records(), skipped=[])
    same = e2e_report.summary_markdown(dict(doc, records=[dict(r, commit="new") for r in doc["records"]]))
    assert "measured at" not in same and "| new |" in same
    # Only the sparse records remeasured at a later commit: the ratio names the dense one's commit.
    mixed = [dict(r, commit="new" if r["sparsity"] > 0 else "old") for r in doc["records"]]
    md = e2e_report.summary_markdown(dict(doc, records=mixed))
    assert "decode step 0.40× our dense path (dense measured at old) (target ≤ 0.45× for OPT-30B at 80%)" in md
    assert "static cache (transformers measured at old)" not in md  # both of the old commit
    legacy = [{k: v for k, v in r.items() if k != "commit"} for r in doc["records"]]  # written before the field
    assert "| – |" in e2e_report.summary_markdown(dict(doc, records=legacy))


def test_rows_of_other_lengths_are_held_against_dense_rows_of_theirs():
    longer = [dict(r, gen_len=512, decode_ms_per_step=2 * r["decode_ms_per_step"] if r["sparsity"] > 0
                   else r["decode_ms_per_step"]) for r in _records()]
    doc = dict(gpu="g", commit="c", date="d", copy_gbps=3000.0, settings={}, records=_records() + longer, skipped=[])
    md = e2e_report.summary_markdown(doc)
    assert "| tokens |" in md and "| 16 | 128 + 256 |" in md and "| 16 | 128 + 512 |" in md
    assert "- opt-30b, batch 16 (128 + 256 tokens), tiled_csl 80%: decode step 0.40× our dense path" in md
    assert "- opt-30b, batch 16 (128 + 512 tokens), tiled_csl 80%: decode step 0.80× our dense path" in md
    assert "- opt-30b, batch 16 (128 + 512 tokens): our dense path 1.59× the tokens/s" in md
    one = e2e_report.summary_markdown(dict(doc, records=_records()))
    assert "| tokens |" not in one and "prompt 128 tokens, 256 new tokens" in one and "(128 + 256 tokens)" not in one


def test_append_replaces_remeasured_records():
    old = dict(records=_records(), skipped=["a"])
    new_rec = dict(_records()[0], decode_ms_per_step=9.0)
    doc = dict(records=[new_rec], skipped=["b"])
    out = e2e_report.merged(old, doc)
    assert len(out["records"]) == len(old["records"]) and out["skipped"] == ["a", "b"]
    assert [r["decode_ms_per_step"] for r in out["records"] if e2e_report.record_key(r) == e2e_report.record_key(new_rec)] == [9.0]


def test_hf_baseline_on_a_tiny_cpu_model():
    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=64)
    model = e2e.hf_random_model(torch, e2e.ModelShape("tiny", config, []), torch.device("cpu"), seed=0)
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float16
    norm = model.model.decoder.final_layer_norm.weight.float()
    assert abs(norm.mean().item() - 1) < 0.01 and 0.01 < norm.std().item() < 0.03
    fc1 = model.model.decoder.layers[0].fc1.weight.float()
    assert abs(fc1.std().item() - 0.02) < 0.002
    m = e2e.hf_measure(torch, model, e2e.random_prompts(2, 8, VOCAB, 0), gen_len=5, cache="dynamic", reps=1)
    assert m["prefill_ms"] > 0 and m["decode_ms_per_step"] > 0


def test_demo_table_and_agreement():
    assert _agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == "yes"
    assert _agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]]) == "no: seq 1 differs at token 1 (4/5 equal)"
    stats = lambda decode, tokens: dict(prefill_ms=20.0, decode_ms_per_step=decode, weight_bytes=1 << 30,  # noqa: E731
                                        peak_mem_bytes=2 << 30, tokens=tokens)
    results = {(0.0, "dense"): stats(8.0, [[1, 2]]), (0.7, "tiled_csl"): stats(4.0, [[1, 2]]),
               (0.7, "dense"): stats(8.0, [[1, 2]]), (0.8, "tiled_csl"): stats(3.2, [[1, 3]]),
               (0.8, "dense"): stats(8.0, [[1, 2]])}
    table = demo_table(results, [0.7, 0.8], "tiled_csl", batch=1, new_tokens=2)
    lines = table.splitlines()
    assert lines[2].startswith("| dense | 0% | 1.00 | 2.00 | 8.00 |")
    assert "| tiled_csl | 70% |" in lines[3] and "2.00x | yes |" in lines[3]
    assert "| tiled_csl | 80% |" in lines[4] and "2.50x | no: seq 0 differs at token 1" in lines[4]


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_generate_prints_ids_and_speed(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "5,6,7", "--prompt-ids", "8,9,10,11,12",
                 "--max-new-tokens", "8", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    for index, prompt in ((0, "5,6,7"), (1, "8,9,10,11,12")):
        assert f"[{index}] prompt: {prompt}" in out
        ids_line = next(line for line in out.splitlines() if line.startswith(f"[{index}] ids: "))
        ids = [int(v) for v in ids_line.split(": ")[1].split(",")]
        assert len(ids) == 8 and all(0 <= v < VOCAB for v in ids)
        assert any(line.startswith(f"[{index}] finish: ") and line.endswith(", 8 new tokens")
                   for line in out.splitlines())
    assert "batch 2: prefill" in out and "ms/step" in out and "tokens/s" in out


@pytest.mark.gpu
def test_generate_sampling_is_seeded_and_runs_in_batches_of_max_batch(tiny_checkpoint, capsys):
    argv = ["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "5,6,7", "--prompt-ids", "8,9",
            "--prompt-ids", "3", "--max-new-tokens", "6", "--temperature", "0.8", "--top-k", "20", "--seed", "3",
            "--ignore-eos", "--no-cuda-graphs"]
    ids = lambda out: [line for line in out.splitlines() if " ids: " in line]  # noqa: E731
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert ids(capsys.readouterr().out) == ids(first)  # same seed, same tokens
    assert main(argv + ["--max-batch", "2"]) == 0
    second = capsys.readouterr().out
    assert "batch 3:" in first and "batch 2:" in second and "batch 1:" in second
    assert len(ids(first)) == 3 and len(ids(second)) == 3


@pytest.mark.gpu
def test_generate_text_prompt_needs_a_tokenizer(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "Hello"]) == 1
    assert "has no tokenizer" in capsys.readouterr().err


@pytest.mark.gpu
def test_demo_quick(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["demo", "--quick", "--sparsities", "0.7", "--batch", "4", "--prompt-len", "16",
                 "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "random-weight opt-125m" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| format | sparsity |") and len(rows) == 3
    assert rows[1].startswith("| dense | 0% |") and rows[2].startswith("| tiled_csl | 70% |")
    agree = rows[2].rstrip(" |").rsplit("| ", 1)[1]
    assert agree == "yes" or agree.startswith("no: "), agree
    assert list(work.iterdir()) == []  # checkpoints removed without --keep


@pytest.mark.gpu
def test_bench_e2e_quick_writes_results(tmp_path):
    out = tmp_path / "out"
    assert bench_main(["e2e", "--quick", "--reps", "1", "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    (path,) = out.glob("e2e-*.json")
    doc = json.loads(path.read_text())
    assert doc["copy_gbps"] > 0 and doc["gpu"]
    recs = doc["records"]
    assert {(r["sparsity"], r["batch"]) for r in recs} == {(0.0, 1), (0.0, 8), (0.7, 1), (0.7, 8)}, doc["skipped"]
    for r in recs:
        assert set(e2e.RECORD_FIELDS) <= set(r)
        assert r["model"] == "opt-125m" and r["impl"] == "sparsellm" and r["tp"] == 1 and r["gpus"] == 1
        assert r["prompt_len"] == 128 and r["gen_len"] == 32
        assert r["prefill_ms"] > 0 and r["decode_ms_per_step"] > 0 and r["tokens_per_s"] > 0
        assert r["peak_mem_gib"] > 0 and r["floor_ms"] > 0
    assert path.with_suffix(".md").read_text().startswith("# End-to-end generation on")
    assert path.with_suffix(".png").stat().st_size > 1000
    assert not (tmp_path / "w").exists()  # checkpoints and the emptied work directory removed


@pytest.mark.gpu
def test_bench_e2e_hf_baseline(tmp_path):
    out = tmp_path / "out"
    assert bench_main(["e2e", "--quick", "--hf", "--sparsities", "0", "--batches", "2", "--gen-len", "8",
                       "--reps", "1", "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    (path,) = out.glob("e2e-*.json")
    recs = json.loads(path.read_text())["records"]
    assert {(r["impl"], r["setting"]) for r in recs} == {("sparsellm", "cuda graphs"), ("hf", "static cache"),
                                                          ("hf", "dynamic cache")}
    for r in recs:
        assert r["decode_ms_per_step"] > 0 and r["tokens_per_s"] > 0
