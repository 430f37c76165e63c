"""Generated checkpoints (sparsellm.convert.write_generated): config.json alone, the weights
drawn by the runtime at load. CPU only.

The config must describe the model as ``convert_random`` stores it (tensors, shapes, splits,
shards, formats), with targets for sparsity and nnz, no files and no components; the readers
accept it and refuse anything else malformed as before; functions that need stored arrays
say that there are none. Also ``sparsellm convert --generated``, ``sparsellm info`` and the
tensor-parallel and generated-weight runs of ``bench e2e`` (its loop under a real mpirun,
with a stand-in runtime: tests/python/e2e_tp_worker.py).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import OPTConfig

import sparsellm
from sparsellm.cli import main
from sparsellm.convert import convert_random, dense_weights, load_checkpoint, read_config, write_generated
from sparsellm.convert.architectures import architecture_of
from sparsellm.convert.encoding import choose_format
from sparsellm.convert.model_plan import model_plan
from sparsellm.convert.random_model import random_model_config
from sparsellm.convert.summary import expected_bytes

from test_tensor_parallel import launch_env, mpirun, needs_mpi  # noqa: E402

HERE = Path(__file__).resolve().parent
FC1 = "model.decoder.layers.0.fc1.weight"
OUT_PROJ_BIAS = "model.decoder.layers.0.self_attn.out_proj.bias"
NOT_STORED = "is a generated checkpoint: its weights are drawn at load, none are stored"


def tiny_config(directory: Path) -> Path:
    """An OPT small enough to convert in a second (hidden 128, 4 heads, FFN 256, 2 layers)."""
    directory.mkdir(parents=True, exist_ok=True)
    OPTConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
              max_position_embeddings=256, word_embed_proj_dim=128).save_pretrained(directory)
    return directory / "config.json"


@pytest.fixture(scope="module")
def opt125m(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "opt-125m-s70"
    write_generated("opt-125m", out, sparsity=0.7, format="bitmap", seed=7)
    return out


def assert_not_written(out: Path) -> None:
    """Nothing at ``out``, and no hidden partial directory beside it."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- what write_generated writes --------------------------------------------------------------

def test_opt_125m_is_config_json_alone(opt125m):
    assert [p.name for p in opt125m.iterdir()] == ["config.json"]
    config = read_config(opt125m)
    assert config == json.loads((opt125m / "config.json").read_text())
    assert config["files"] == {} and config["copied_files"] == [] and config["tp"] == 1
    assert config["source"] == {"kind": "generated", "config": "opt-125m", "seed": 7, "std": 0.02}
    assert config["dtype"] == "float16" and config["architecture"] == "opt"
    model_config, _ = random_model_config("opt-125m")
    plan = model_plan(model_config, architecture_of(model_config, "opt-125m"))
    assert list(config["tensors"]) == [t.name for t in plan.tensors]  # storage order
    for item in plan.tensors:
        entry = config["tensors"][item.name]
        assert entry["full_shape"] == list(item.shape) == entry["shape"] and entry["split"] == item.split
        assert entry["pruned"] == item.pruned
        want = (0.7, "bitmap", "requested") if item.pruned else (0.0, "dense", "not a pruned weight")
        assert (entry["sparsity"], entry["format"], entry["format_reason"]) == want
        assert entry["nnz"] == round((1 - want[0]) * math.prod(item.shape))
        assert entry["shards"] == {"0": {"sparsity": want[0], "nnz": entry["nnz"], "components": {}}}
    pruning = config["pruning"]
    assert pruning["method"] == "magnitude" and pruning["sparsity"] == 0.7 and pruning["generated"] is True
    assert pruning["nm"] is None and pruning["layer_sparsity_mode"] == "uniform"
    assert pruning["achieved_sparsity"] == pytest.approx(0.7) and len(pruning["layer_sparsity"]) == 12


def test_tp2_shards_follow_the_split_rules(tmp_path):
    config = write_generated("opt-125m", tmp_path / "tp2", sparsity=0.6, tp=2, format="bitmap")
    assert read_config(tmp_path / "tp2") == config and config["tp"] == 2 and config["files"] == {}
    fc1, bias = config["tensors"][FC1], config["tensors"][OUT_PROJ_BIAS]
    assert fc1["full_shape"] == [3072, 768] and fc1["shape"] == [1536, 768] and fc1["split"] == "rows"
    assert fc1["nnz"] == round(0.4 * 3072 * 768)
    assert fc1["shards"] == {r: {"sparsity": 0.6, "nnz": round(0.4 * 1536 * 768), "components": {}} for r in "01"}
    assert bias["split"] == "rank0" and list(bias["shards"]) == ["0"]  # the row-parallel bias: rank 0 alone
    fc2 = config["tensors"]["model.decoder.layers.0.fc2.weight"]
    assert fc2["split"] == "columns" and fc2["shape"] == [768, 1536]
    embed = config["tensors"]["model.decoder.embed_tokens.weight"]
    assert embed["split"] == "replicated" and set(embed["shards"]) == {"0", "1"} and embed["format"] == "dense"


def test_describes_the_model_as_convert_random_stores_it(tmp_path):
    config_file = tiny_config(tmp_path / "cfg")
    stored = convert_random(config_file, tmp_path / "converted", sparsity=0.5, tp=2, format="bitmap", seed=3,
                            progress=False)
    generated = write_generated(config_file, tmp_path / "generated", sparsity=0.5, tp=2, format="bitmap", seed=3)
    same = ("format", "shape", "full_shape", "split", "pruned")
    assert list(generated["tensors"]) == list(stored["tensors"])
    for name, entry in stored["tensors"].items():
        assert {k: entry[k] for k in same} == {k: generated["tensors"][name][k] for k in same}, name
        assert set(generated["tensors"][name]["shards"]) == set(entry["shards"]), name
    for field in ("format_version", "architecture", "model_config", "dtype", "tp"):
        assert generated[field] == stored[field], field
    assert {k: v for k, v in generated["pruning"].items() if k not in ("generated", "achieved_sparsity",
                                                                          "layer_sparsity")} \
        == {k: v for k, v in stored["pruning"].items() if k not in ("achieved_sparsity", "layer_sparsity")}
    assert generated["source"] == {**stored["source"], "kind": "generated"}


@pytest.mark.parametrize("requested", ["auto", "dense", "bitmap", "tiled_csl", "split24"])
def test_formats(tmp_path, requested):
    config = write_generated("opt-125m", tmp_path / "ckpt", sparsity=0.8, tp=2, format=requested, dtype="bf16")
    assert config["dtype"] == "bfloat16"
    for name, entry in config["tensors"].items():
        if not entry["pruned"]:
            assert entry["format"] == "dense"
        elif requested == "auto":  # the converter's choice, q/k/v by their shards stacked
            rows, cols = entry["shape"]
            stacked = any(f".{p}." in name for p in ("q_proj", "k_proj", "v_proj"))
            chosen = choose_format("auto", True, 0.8, (3 * rows if stacked else rows, cols))
            assert entry["format"] == chosen and entry["format_reason"] == chosen.reason
        else:
            assert entry["format"] == requested and entry["format_reason"] == "requested"


def test_sparsity_zero_is_the_dense_model(tmp_path):
    config = write_generated("opt-125m", tmp_path / "dense", sparsity=0.0, format="dense")
    assert {e["format"] for e in config["tensors"].values()} == {"dense"}
    assert all(e["sparsity"] == 0.0 and e["nnz"] == math.prod(e["shape"]) for e in config["tensors"].values())


def test_overwrite_rules(tmp_path, opt125m):
    out = tmp_path / "ckpt"
    write_generated("opt-125m", out, sparsity=0.5)
    with pytest.raises(FileExistsError, match="already exists"):
        write_generated("opt-125m", out, sparsity=0.6)
    assert read_config(out)["pruning"]["sparsity"] == 0.5
    write_generated("opt-125m", out, sparsity=0.6, overwrite=True)
    assert read_config(out)["pruning"]["sparsity"] == 0.6
    converted = tmp_path / "converted"  # a converted checkpoint is replaced by a generated one, files and all
    convert_random(tiny_config(tmp_path / "cfg"), converted, sparsity=0.5, tp=2, progress=False)
    write_generated("opt-125m", converted, sparsity=0.7, overwrite=True)
    assert [p.name for p in converted.iterdir()] == ["config.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a sparsellm checkpoint"):
        write_generated("opt-125m", other, sparsity=0.5, overwrite=True)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg", "ckpt", "converted", "other"]  # nothing hidden
    with pytest.raises(FileNotFoundError, match="parent directory"):
        write_generated("opt-125m", tmp_path / "missing" / "ckpt", sparsity=0.5)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(), sparsellm.InvalidArgument, "sparsity is required"),
    (dict(sparsity=1.0), sparsellm.InvalidArgument, r"sparsity must be in \[0, 1\)"),
    (dict(sparsity=0.5, tp=5), sparsellm.InvalidArgument, "tensor parallelism 5 does not divide"),
    (dict(sparsity=0.5, format="csr"), sparsellm.InvalidArgument, "unknown format 'csr'"),
    (dict(sparsity=0.5, dtype="fp32"), sparsellm.InvalidArgument, "unknown dtype 'fp32'"),
    (dict(sparsity=0.5, seed=-1), sparsellm.InvalidArgument, "seed must be a non-negative integer"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        write_generated("opt-125m", tmp_path / "ckpt", **kwargs)
    assert_not_written(tmp_path / "ckpt")


def test_unknown_shape(tmp_path):
    with pytest.raises(sparsellm.InvalidArgument, match="neither a named shape"):
        write_generated("opt-7b", tmp_path / "ckpt", sparsity=0.5)
    assert_not_written(tmp_path / "ckpt")


# --- readers ------------------------------------------------------------------------------------

def test_arrays_are_refused_clearly(opt125m):
    for read in (load_checkpoint, dense_weights):
        with pytest.raises(sparsellm.InvalidArgument, match=re.escape(f"{opt125m} {NOT_STORED}")):
            read(opt125m)


def rewritten(src: Path, dst: Path, change) -> Path:
    """A copy of the checkpoint ``src`` at ``dst`` whose config.json went through ``change(config)``."""
    config = json.loads((src / "config.json").read_text())
    change(config)
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _set(path: str, value):
    """change(config): sets config[a][b]... = value for path "a/b/..."."""
    def change(config):
        *parents, last = path.split("/")
        for key in parents:
            config = config[key]
        config[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(f"tensors/{FC1}/shards/0/components", {f"{FC1}.tiles": {"dtype": "uint32", "shape": [4]}}),
     f"tensor {FC1}: rank 0: a generated checkpoint stores no components"),
    (_set(f"tensors/{FC1}/shards/0/components", []), "a generated checkpoint stores no components"),
    (_set(f"tensors/{FC1}/shards/0/nnz", 1.5), "nnz is not an integer"),
    (lambda c: c["tensors"][FC1]["shards"]["0"].pop("components"), "malformed entry"),
    (_set("source/kind", "random"), r"'files' lists \[\], expected \['rank0-of-1.safetensors'\] "
                                    r"\(only a generated checkpoint, source.kind \"generated\", lists none\)"),
    (lambda c: c.pop("source"), r"'files' lists \[\], expected"),
    (_set("files", {"rank0-of-1.safetensors": {"rank": 0, "bytes": 8, "sha256": "0"}}),
     "a generated checkpoint lists rank files"),
    (_set("source/seed", -1), "source.seed of a generated checkpoint must be a non-negative integer"),
    (lambda c: c["source"].pop("seed"), "source.seed of a generated checkpoint"),
    (_set("source/std", 0), "source.std of a generated checkpoint must be a positive number"),
    (_set("source/std", "0.02"), "source.std of a generated checkpoint must be a positive number"),
])
def test_malformed_generated_configs_are_refused(opt125m, tmp_path, change, message):
    broken = rewritten(opt125m, tmp_path / "broken", change)
    with pytest.raises(sparsellm.FormatError, match=message):
        read_config(broken)
    native = _native()
    if native is not None:  # the C++ reader refuses it too
        with pytest.raises(native.FormatError):
            native.inspect_checkpoint(str(broken), 0, False)


def _native():
    try:
        from sparsellm._native import native

        return native()
    except ImportError:  # no compiled library in this environment
        return None


def test_cpp_reader_lists_every_shard_without_components(tmp_path):
    native = _native()
    if native is None:
        pytest.skip("needs the compiled library sparsellm._C")
    out = tmp_path / "tp2"
    config = write_generated("opt-125m", out, sparsity=0.8, tp=2, format="bitmap", seed=3)
    for rank in range(2):
        assert native.tensor_parallel_error(str(out), rank, 2) == ""  # no rank file needed
        info = native.inspect_checkpoint(str(out), rank, False)
        assert info["rank_file"].endswith(f"config.json (generated, rank {rank})")
        held = {name for name, entry in config["tensors"].items() if str(rank) in entry["shards"]}
        assert set(info["tensors"]) == held
        for name, got in info["tensors"].items():
            entry = config["tensors"][name]
            assert (got["format"], list(got["shape"]), got["split"]) == (entry["format"], entry["shape"], entry["split"])
            assert got["nnz"] == entry["shards"][str(rank)]["nnz"] and got["components"] == {}


def test_converted_checkpoint_with_its_files_removed_is_refused(tmp_path):
    src = tmp_path / "converted"
    convert_random(tiny_config(tmp_path / "cfg"), src, sparsity=0.5, format="bitmap", progress=False)
    broken = rewritten(src, tmp_path / "no-files", _set("files", {}))
    with pytest.raises(sparsellm.FormatError, match=r"'files' lists \[\], expected"):
        read_config(broken)
    # a converted config relabelled as generated: its shards list components
    relabelled = rewritten(src, tmp_path / "relabelled",
                           lambda c: c.update(files={}, source={"kind": "generated", "seed": 1, "std": 0.02}))
    with pytest.raises(sparsellm.FormatError, match="a generated checkpoint stores no components"):
        read_config(relabelled)


# --- command line -------------------------------------------------------------------------------

def test_convert_generated_and_info(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["convert", "--random", "opt-125m", "--generated", "--out", str(out), "--sparsity", "0.6",
                 "--tp", "2", "--format", "bitmap", "--seed", "9"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}: 196 tensors (0 tiled_csl, 72 bitmap, 0 split24), tp 2, float16, config.json alone" in err
    assert "seed 9" in err and "target sparsity 0.6000" in err
    config = read_config(out)
    assert config["source"]["kind"] == "generated" and config["source"]["seed"] == 9
    assert main(["info", str(out), "--rank", "1", "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "generated: config.json alone, the weights are drawn at load (seed 9, std 0.02)" in lines[2]
    assert "rank 1 of 2 (generated, no file)" in lines
    fields = next(line for line in lines if line.startswith(FC1 + " ")).split()
    assert fields[1:4] == ["bitmap", "1536x768", "0.6000"]
    assert int(fields[4]) == expected_bytes("bitmap", [1536, 768], 0.6) and int(fields[5]) == 1536 * 768 * 2
    assert lines[-1] == "verified: config.json of a generated checkpoint (no rank files: the weights are drawn at load)"


@pytest.mark.parametrize("argv, message", [
    (["--model", "hf-dir", "--generated"], "--generated needs --random CONFIG"),
    (["--random", "opt-125m", "--generated", "--nm", "2:4"], "--nm and --layer-sparsity do not apply"),
    (["--random", "opt-125m", "--generated", "--layer-sparsity", "map.json"], "do not apply"),
])
def test_convert_generated_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["convert", *argv, "--out", str(tmp_path / "out"), "--sparsity", "0.5"])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_generated_refuses_a_bad_tp_in_one_line(tmp_path, capsys):
    assert main(["convert", "--random", "opt-125m", "--generated", "--out", str(tmp_path / "out"),
                 "--sparsity", "0.5", "--tp", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsellm convert: error: ") and "does not divide" in err and len(err.splitlines()) == 1


# --- bench e2e with --tp under mpirun (CPU, stand-in runtime) -----------------------------------

def run_e2e_worker(tp: int, calls: Path, options: list[str]) -> subprocess.CompletedProcess:
    # The package under test (installed, or the source tree with its built module), not the bare sources.
    env = launch_env({"PYTHONPATH": str(Path(sparsellm.__file__).resolve().parents[1])})
    calls.mkdir(parents=True, exist_ok=True)
    return subprocess.run(mpirun(tp, env) + [sys.executable, str(HERE / "e2e_tp_worker.py"), str(calls), *options],
                          capture_output=True, text=True, env=env, timeout=600)


@needs_mpi
@pytest.mark.parametrize("weights", ["generated", "converted"])
def test_bench_e2e_tp2_under_mpirun(tmp_path, weights):
    config_file = tiny_config(tmp_path / "cfg")
    out, calls = tmp_path / "out", tmp_path / "calls"
    options = ["--tp", "2", "--weights", weights, "--formats", "bitmap", "--models", str(config_file),
               "--batches", "1,2", "--sparsities", "0,0.7", "--prompt-len", "4", "--gen-len", "3", "--reps", "1",
               "--out", str(out)]
    proc = run_e2e_worker(2, calls, options)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    rank0, rank1 = (json.loads((calls / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1, (rank0, rank1)  # the same loads, generates and closes, in the same order
    loads = [c for c in rank0 if c[0] == "load"]
    suffix = "-generated" if weights == "generated" else ""
    assert [c[1].rpartition("_cfg_config.json-")[2] for c in loads] == [f"dense-s00-tp2{suffix}",
                                                                         f"bitmap-s70-tp2{suffix}"]
    assert all(c[2:] == [2, 7, 2, 2] for c in loads)  # max batch, max length, tp asked, tp of the checkpoint
    assert sum(c[0] == "generate" for c in rank0) == 2 * 2 * 2  # per checkpoint and batch: warm-up + 1 timed
    doc = json.loads((out / "e2e-fake-gpu.json").read_text())
    assert doc["settings"]["tp"] == 2 and doc["settings"]["weights"] == weights and doc["skipped"] == []
    assert len(doc["records"]) == 4
    for r in doc["records"]:
        assert r["tp"] == 2 and r["gpus"] == 2 and r["weights"] == weights
        assert r["tokens_per_gpu_s"] == pytest.approx(r["tokens_per_s"] / 2, abs=0.1)
    assert {r["format"] for r in doc["records"]} == {"dense", "bitmap"}
    assert not (out / "e2e-work").exists()  # checkpoints removed once measured
    assert output.count("# End-to-end generation on NVIDIA Fake GPU") == 1  # rank 0 alone prints
    assert "[1,1]<stdout>" not in output


@needs_mpi
def test_bench_e2e_tp_other_than_the_world_is_an_error_on_every_rank(tmp_path):
    proc = run_e2e_worker(2, tmp_path / "calls", ["--quick", "--out", str(tmp_path / "out")])  # --tp 1, 2 processes
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert output.count("sparsellm bench: error: --tp 1, but mpirun started 2 processes") == 2, output
    assert not (tmp_path / "out").exists()


def test_bench_e2e_scale_lines():
    """The scale targets: fewest GPUs per sparsity, and tokens per GPU-second against dense at tp 4."""
    from sparsellm.bench.e2e_report import _scale_lines

    def rec(tp, sparsity, batch, tps):
        return dict(model="opt-66b", impl="sparsellm", tp=tp, gpus=tp, sparsity=sparsity, batch=batch,
                    tokens_per_gpu_s=tps / tp)

    lines = _scale_lines([rec(4, 0.0, 16, 800.0), rec(2, 0.0, 16, 500.0), rec(1, 0.8, 16, 400.0),
                          rec(2, 0.8, 16, 600.0), rec(1, 0.8, 1, 30.0)])
    assert lines[0].startswith("- opt-66b: ran on 2 GPUs dense, 1 GPU at 80%")
    assert lines[1] == ("- opt-66b, batch 16: 80% sparse on 1 GPU gives 2.00× the tokens per GPU-second of dense "
                        "at tp 4 (target ≥ 3.5× for OPT-66B at 80%)")
    assert len(lines) == 2
