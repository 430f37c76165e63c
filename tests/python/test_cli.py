"""The ``sparsellm`` command line: convert and info, errors as one line with exit status 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig

from sparsellm.cli import SUBCOMMANDS, main
from sparsellm.convert import dense_weights, read_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory) -> Path:
    config = OPTConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=64)
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    directory = tmp_path_factory.mktemp("hf") / "opt"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def converted(opt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "opt-sparse"
    assert main(["convert", "--model", str(opt_dir), "--out", str(out), "--sparsity", "0.6", "--tp", "2",
                 "--format", "tiled_csl", "--quiet"]) == 0
    return out


def test_convert_writes_a_checkpoint(converted):
    config = read_config(converted)
    assert config["tp"] == 2 and config["pruning"]["method"] == "magnitude"
    fc1 = dense_weights(converted, 1)["model.decoder.layers.0.fc1.weight"]
    assert fc1.shape == (64, 64) and np.all((fc1 == 0).sum(axis=1) == 38)  # round(0.6 * 64)


def test_convert_reports_what_it_wrote(opt_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["convert", "--model", str(opt_dir), "--out", str(out), "--sparsity", "0.5", "--method", "wanda",
                 "--nsamples", "2", "--seqlen", "8", "--dtype", "bf16", "--format", "tiled_csl"]) == 0
    err = capsys.readouterr().err
    assert "sampled from the model itself" in err
    assert f"wrote {out}" in err and "bfloat16" in err and "wanda pruning" in err
    assert read_config(out)["tensors"]["model.decoder.layers.1.fc2.weight"]["format"] == "tiled_csl"


def test_info_lists_every_tensor(converted, capsys):
    assert main(["info", str(converted)]) == 0
    out = capsys.readouterr().out
    config = read_config(converted)
    assert "rank 0 of 2" in out and "rank 1 of 2" in out
    lines = out.splitlines()
    q_proj = next(line for line in lines if line.startswith("model.decoder.layers.0.self_attn.q_proj.weight "))
    fields = q_proj.split()
    entry = config["tensors"]["model.decoder.layers.0.self_attn.q_proj.weight"]
    words = entry["shards"]["0"]["components"]["model.decoder.layers.0.self_attn.q_proj.weight.words"]["shape"][0]
    stored = 4 * (words + 2)  # words + tile offsets (one tile: 2 offsets)
    assert fields[1:6] == ["tiled_csl", "32x64", f"{entry['shards']['0']['sparsity']:.4f}", str(stored),
                           str(32 * 64 * 2)]
    assert fields[6] == f"{stored / (32 * 64 * 2):.3f}" and float(fields[7]) > 0  # predicted speedup at N=16
    embed = next(line for line in lines if line.startswith("model.decoder.embed_tokens.weight "))
    assert embed.split()[1:] == ["dense", "100x64", "0.0000", str(100 * 64 * 2), str(100 * 64 * 2), "1.000", "1.00"]
    assert sum(line.startswith("total: ") for line in lines) == 2
    assert out.count("model.decoder.layers.0.fc2.bias") == 1  # rank 0 only


def test_info_one_rank_and_verify(converted, capsys):
    assert main(["info", str(converted), "--rank", "1", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "rank 0 of 2" not in out and "rank 1 of 2" in out and "verified" in out


def test_info_verify_reports_a_corrupt_file(converted, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in converted.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    rank_file = broken / "rank1-of-2.safetensors"
    rank_file.write_bytes(rank_file.read_bytes()[:-1])
    assert main(["info", str(broken), "--verify"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsellm info: error: ") and "rank1-of-2.safetensors" in err and len(err.splitlines()) == 1


def test_random_model(tmp_path):
    config_file = tmp_path / "config.json"
    OPTConfig(vocab_size=128, hidden_size=128, num_hidden_layers=2, ffn_dim=512, num_attention_heads=8,
              max_position_embeddings=32, word_embed_proj_dim=128).save_pretrained(tmp_path)
    out = tmp_path / "random"
    assert main(["convert", "--random", str(config_file), "--out", str(out), "--sparsity", "0.75", "--tp", "4",
                 "--seed", "9", "--quiet"]) == 0
    config = read_config(out)
    assert config["source"]["kind"] == "random" and config["source"]["seed"] == 9
    assert config["tensors"]["model.decoder.layers.1.fc2.weight"]["shape"] == [128, 128]
    assert config["pruning"]["achieved_sparsity"] == pytest.approx(0.75, abs=1e-3)


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.5"], "[0, 1)"),
    (["--sparsity", "0.5", "--tp", "3"], "tensor parallelism 3"),
    (["--sparsity", "0.5", "--layer-sparsity", "missing.json"], "missing.json"),
    ([], "sparsity is required"),
])
def test_convert_errors_are_one_line(opt_dir, tmp_path, capsys, args, message):
    out = tmp_path / "ckpt"
    assert main(["convert", "--model", str(opt_dir), "--out", str(out), "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsellm convert: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_output_and_unknown_architecture(converted, tmp_path, capsys):
    assert main(["convert", "--random", "opt-125m", "--out", str(converted), "--sparsity", "0.5"]) == 1
    assert "already exists" in capsys.readouterr().err
    gpt2 = tmp_path / "gpt2"
    GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100).save_pretrained(gpt2)
    assert main(["convert", "--model", str(gpt2), "--out", str(tmp_path / "x"), "--sparsity", "0.5"]) == 1
    assert "unsupported architecture" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--out", "x", "--sparsity", "0.5"])  # neither --model nor --random
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--random", "opt-125m", "--method", "wanda", "--out", "x", "--sparsity", "0.5"])
    assert exc.value.code == 2 and "--random" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate"])
    assert exc.value.code == 2


def test_subcommands_and_bench_forwarding(capsys):
    assert set(SUBCOMMANDS) == {"convert", "info", "bench", "generate", "demo"}
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0 and "spmm" in capsys.readouterr().out


def test_sigterm_during_conversion_leaves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    out = tmp_path / "random"
    # A model large enough that no machine finishes it before the signal arrives.
    process = subprocess.Popen([sys.executable, "-m", "sparsellm", "convert", "--random", "opt-1.3b", "--out",
                                str(out), "--sparsity", "0.5", "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".random.partial-") for p in tmp_path.iterdir()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"conversion never started (exit {process.wait()}): {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=60)
    stderr = process.stderr.read().decode()
    assert status == 128 + signal.SIGTERM, stderr
    assert list(tmp_path.iterdir()) == [], stderr


def test_python_dash_m(converted):
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    result = subprocess.run([sys.executable, "-m", "sparsellm", "info", str(converted), "--rank", "0"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "model.decoder.layers.1.fc1.weight" in result.stdout
    version = subprocess.run([sys.executable, "-m", "sparsellm", "--version"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert version.stdout.startswith("sparsellm ")
    assert json.loads((converted / "config.json").read_text())["format_version"] == 2
