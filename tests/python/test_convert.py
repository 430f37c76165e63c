"""Checkpoint conversion: tiny random Hugging Face OPT and Llama models through
``sparsellm.convert`` and back through ``load_checkpoint`` / ``dense_weights``.

The expected rank tensors are computed here independently of the converter: the model
is loaded with transformers, pruned with ``sparsellm.prune.prune_model``, converted to
the checkpoint dtype with torch, and split per rank with explicit head / FFN index
arithmetic (not the converter's split code).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

import sparsellm
from sparsellm.convert import (
    NAMED_CONFIGS, TILED_CSL_MIN_SPARSITY, convert, convert_random, dense_weights, load_checkpoint, read_config,
)
from sparsellm.convert.model_plan import model_plan
from sparsellm.convert.random_model import random_model_config
from sparsellm.convert.architectures import architecture_of
from sparsellm.prune import default_calibration_ids, prune_model

PRUNED = re.compile(r"\.layers\.\d+\.(self_attn\.(q|k|v|o|out)_proj|fc1|fc2|mlp\.(gate|up|down)_proj)\.weight$")


def tiny_opt_config(**overrides) -> OPTConfig:
    values = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                  max_position_embeddings=64, word_embed_proj_dim=64)
    return OPTConfig(**{**values, **overrides})


def tiny_llama_config(cls=LlamaConfig, **overrides) -> LlamaConfig:
    values = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False)
    return cls(**{**values, **overrides})


def randomized_model(config, seed: int):
    """A causal LM with every parameter drawn afresh: std 0.02, norms around 1, biases nonzero."""
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = torch.randn(parameter.shape, generator=generator) * 0.02
            if parameter.dim() == 1 and "norm" in name.split(".")[-2]:
                values += 1.0
            parameter.copy_(values)
    return model


def save_model(model, directory: Path, layout: str, shard_size: str = "20KB") -> Path:
    """``model`` as a Hugging Face directory: "safetensors", "sharded" (shards of ``shard_size``) or "bin"."""
    if layout == "bin":
        model.config.save_pretrained(directory)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()
                    if k != "lm_head.weight" or not model.config.tie_word_embeddings},
                   directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory, max_shard_size=shard_size if layout == "sharded" else "5GB")
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny HF checkpoints: OPT as safetensors and sharded safetensors, Llama as safetensors and .bin."""
    root = tmp_path_factory.mktemp("hf")
    opt = randomized_model(tiny_opt_config(), seed=11)
    llama = randomized_model(tiny_llama_config(), seed=12)
    dirs = {
        "opt": save_model(opt, root / "opt", "safetensors"),
        "opt-sharded": save_model(opt, root / "opt-sharded", "sharded"),
        "llama": save_model(llama, root / "llama", "safetensors"),
        "llama-bin": save_model(llama, root / "llama-bin", "bin"),
    }
    (dirs["opt"] / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "test"}}')
    (dirs["opt"] / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return dirs


def nothing_written(out: Path) -> bool:
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return not out.exists() and not leftovers


def as_bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint16)


# --- the independent reference -----------------------------------------------------------

def reference_pruned(model_dir: Path, dtype: torch.dtype, method: str, sparsity, **prune_args) -> dict:
    """Full tensors {name: uint16 bits} of the model pruned by prune_model and cast to ``dtype``."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = prune_args.pop("calib_ids", None)
    prune_model(model, ids, method=method, sparsity=sparsity, **prune_args)
    tensors = {}
    for name, parameter in model.named_parameters():
        bits = parameter.detach().to(dtype).contiguous().view(torch.int16).numpy().view(np.uint16).copy()
        if PRUNED.search(name):
            bits[bits == 0x8000] = 0  # stored zeros are +0
        tensors[name] = bits
    return tensors


def reference_shard(name: str, full: np.ndarray, config, tp: int, rank: int) -> np.ndarray | None:
    """Rank ``rank``'s part of ``full``: whole heads / GQA groups and an equal FFN share."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = config.hidden_size // heads
    ffn = getattr(config, "ffn_dim", None) or config.intermediate_size
    module, kind = name.split(".")[-2], name.split(".")[-1]

    def head_rows(count: int) -> list[int]:
        mine = range(rank * count // tp, (rank + 1) * count // tp)
        return [h * head_dim + i for h in mine for i in range(head_dim)]

    ffn_rows = list(range(rank * ffn // tp, (rank + 1) * ffn // tp))
    if module == "q_proj":
        return full[head_rows(heads)]
    if module in ("k_proj", "v_proj"):
        return full[head_rows(kv_heads)]
    if module in ("fc1", "gate_proj", "up_proj"):
        return full[ffn_rows]
    if module in ("out_proj", "o_proj", "fc2", "down_proj"):
        if kind == "bias":
            return full if rank == 0 else None
        return full[:, head_rows(heads) if module in ("out_proj", "o_proj") else ffn_rows]
    return full


def assert_matches_reference(out: Path, reference: dict, config, tp: int) -> None:
    for rank in range(tp):
        got = dense_weights(out, rank)
        expected = {}
        for name, full in reference.items():
            shard = reference_shard(name, full, config, tp, rank)
            if shard is not None:
                expected[name] = shard
        assert set(got) == set(expected), f"rank {rank}: tensors differ"
        for name, bits in expected.items():
            np.testing.assert_array_equal(as_bits(got[name]), bits, err_msg=f"rank {rank}: {name}")


def assert_exact_row_sparsity(out: Path, sparsity: float) -> None:
    """Every row of every pruned weight (whole, ranks put back together) has round(s * in) zeros."""
    config = read_config(out)
    ranks = [dense_weights(out, r) for r in range(config["tp"])]
    for name, entry in config["tensors"].items():
        if not entry["pruned"]:
            continue
        axis = {"rows": 0, "columns": 1}.get(entry["split"])
        full = np.concatenate([as_bits(w[name]) for w in ranks], axis=axis) if axis is not None else ranks[0][name]
        rows, cols = entry["full_shape"]
        assert full.shape == (rows, cols)
        zeros = ((full & 0x7FFF) == 0).sum(axis=1)
        np.testing.assert_array_equal(zeros, math.floor(sparsity * cols + 0.5), err_msg=name)


# --- conversion against the reference ----------------------------------------------------

@pytest.mark.parametrize("tp", [1, 2])
def test_opt_magnitude_matches_pruned_model(models, tmp_path, tp):
    out = tmp_path / "ckpt"
    config = convert(models["opt"], out, sparsity=0.6, tp=tp, progress=False)
    reference = reference_pruned(models["opt"], torch.float16, "magnitude", 0.6)
    assert_matches_reference(out, reference, tiny_opt_config(), tp)
    assert_exact_row_sparsity(out, 0.6)
    assert config["tp"] == tp and config["architecture"] == "opt"


def test_opt_sharded_safetensors_reads_like_single_file(models, tmp_path):
    out = tmp_path / "ckpt"
    convert(models["opt-sharded"], out, sparsity=0.7, tp=2, progress=False)
    assert len(list(models["opt-sharded"].glob("model-*.safetensors"))) > 2
    assert_matches_reference(out, reference_pruned(models["opt"], torch.float16, "magnitude", 0.7),
                             tiny_opt_config(), 2)


@pytest.mark.parametrize("layout", ["llama", "llama-bin"])
def test_llama_magnitude_tp2_bf16(models, tmp_path, layout):
    out = tmp_path / "ckpt"
    config = convert(models[layout], out, sparsity=0.65, tp=2, dtype="bf16", progress=False)
    assert config["source"]["weights"] == ("bin" if layout.endswith("bin") else "safetensors")
    assert config["dtype"] == "bfloat16"
    reference = reference_pruned(models[layout], torch.bfloat16, "magnitude", 0.65)
    assert_matches_reference(out, reference, tiny_llama_config(), 2)
    assert_exact_row_sparsity(out, 0.65)
    # GQA: 4 query heads over 2 KV heads of 16 dims: each rank keeps 2 query heads and their KV head
    tensors = config["tensors"]
    assert tensors["model.layers.0.self_attn.q_proj.weight"]["shape"] == [32, 64]
    assert tensors["model.layers.0.self_attn.k_proj.weight"]["shape"] == [16, 64]
    assert tensors["model.layers.0.self_attn.o_proj.weight"]["shape"] == [64, 32]
    assert tensors["model.layers.0.mlp.down_proj.weight"]["shape"] == [64, 64]
    assert tensors["lm_head.weight"]["split"] == "replicated"


def test_llama_wanda_default_calibration(models, tmp_path):
    out = tmp_path / "ckpt"
    messages = []
    config = convert(models["llama"], out, sparsity=0.6, method="wanda", nsamples=4, seqlen=16, tp=2, device="cpu",
                     progress=False, log=messages.append)
    assert any("sampled from the model itself" in m for m in messages)
    calibration = config["pruning"]["calibration"]
    assert calibration["source"] == "sampled from the model" and calibration["nsamples"] == 4
    model = AutoModelForCausalLM.from_pretrained(str(models["llama"]), dtype=torch.float32)
    ids = default_calibration_ids(model, 4, 16, 1234)
    reference = reference_pruned(models["llama"], torch.float16, "wanda", 0.6, calib_ids=ids)
    assert_matches_reference(out, reference, tiny_llama_config(), 2)
    assert_exact_row_sparsity(out, 0.6)
    # Wanda's masks differ from magnitude's: the calibration mattered
    magnitude = reference_pruned(models["llama"], torch.float16, "magnitude", 0.6)
    name = "model.layers.1.mlp.up_proj.weight"
    assert not np.array_equal(reference[name], magnitude[name])


def test_opt_sparsegpt_with_calibration_file(models, tmp_path):
    ids = np.random.default_rng(5).integers(0, 100, size=(4, 16))
    np.save(tmp_path / "calib.npy", ids)
    out = tmp_path / "ckpt"
    config = convert(models["opt"], out, sparsity=0.5, method="sparsegpt", calib=tmp_path / "calib.npy",
                     progress=False, device="cpu")
    assert config["pruning"]["calibration"]["file"] == str(tmp_path / "calib.npy")
    reference = reference_pruned(models["opt"], torch.float16, "sparsegpt", 0.5, calib_ids=torch.from_numpy(ids))
    assert_matches_reference(out, reference, tiny_opt_config(), 1)
    assert_exact_row_sparsity(out, 0.5)


@pytest.mark.parametrize("config_class", [MistralConfig, Qwen2Config])
def test_llama_layout_variants(tmp_path, config_class):
    model_dir = save_model(randomized_model(tiny_llama_config(config_class), seed=13), tmp_path / "m", "safetensors")
    config = convert(model_dir, tmp_path / "ckpt", sparsity=0.6, tp=2, progress=False)
    assert config["architecture"] == "llama"
    assert config["model_config"]["model_type"] == config_class.model_type
    assert_matches_reference(tmp_path / "ckpt", reference_pruned(model_dir, torch.float16, "magnitude", 0.6),
                             tiny_llama_config(config_class), 2)
    if config_class is Qwen2Config:  # q/k/v biases split with their rows
        assert config["tensors"]["model.layers.0.self_attn.k_proj.bias"]["shape"] == [16]


def test_names_without_model_prefix_and_dtype_from_config(models, tmp_path):
    model_dir = tmp_path / "legacy"
    model_dir.mkdir()
    config = tiny_opt_config()
    config.dtype = "bfloat16"
    config.save_pretrained(model_dir)
    with safe_open(str(models["opt"] / "model.safetensors"), "pt") as f:
        tensors = {key.removeprefix("model."): f.get_tensor(key).bfloat16() for key in f.keys()}
    assert "decoder.layers.0.fc1.weight" in tensors
    from safetensors.torch import save_file as save_torch

    save_torch(tensors, str(model_dir / "model.safetensors"))
    written = convert(model_dir, tmp_path / "ckpt", sparsity=0.6, progress=False)
    assert written["dtype"] == "bfloat16"
    reference = reference_pruned(model_dir, torch.bfloat16, "magnitude", 0.6)
    assert_matches_reference(tmp_path / "ckpt", reference, tiny_opt_config(), 1)


def test_nm_and_layer_sparsity_map(models, tmp_path):
    convert(models["opt"], tmp_path / "nm", nm="2:4", format="tiled_csl", progress=False)
    for name, bits in dense_weights(tmp_path / "nm").items():
        if PRUNED.search(name):
            groups = (as_bits(bits) & 0x7FFF).reshape(bits.shape[0], -1, 4)
            assert np.all((groups == 0).sum(axis=2) == 2), name
    sparsity_map = tmp_path / "map.json"
    sparsity_map.write_text(json.dumps({"0": 0.8, "model.decoder.layers.1.fc1": 0.3}))
    config = convert(models["opt"], tmp_path / "map", sparsity=0.6, layer_sparsity=sparsity_map, progress=False)
    tensors = config["tensors"]
    assert tensors["model.decoder.layers.0.fc2.weight"]["sparsity"] == pytest.approx(0.8, abs=1 / 128)
    assert tensors["model.decoder.layers.1.fc1.weight"]["sparsity"] == pytest.approx(0.3, abs=1 / 64)
    assert tensors["model.decoder.layers.1.fc2.weight"]["sparsity"] == pytest.approx(0.6, abs=1 / 128)
    assert config["pruning"]["layer_sparsity_mode"] == {"map": str(sparsity_map)}
    assert config["pruning"]["layer_sparsity"][0] == pytest.approx(0.8, abs=0.01)


def test_owl_records_layer_targets(models, tmp_path):
    config = convert(models["llama"], tmp_path / "ckpt", sparsity=0.6, method="wanda", layer_sparsity="owl",
                     nsamples=2, seqlen=8, progress=False, device="cpu")
    owl = config["pruning"]["owl"]
    assert len(owl["layer_targets"]) == 2 and np.mean(owl["layer_targets"]) == pytest.approx(0.6)
    assert config["pruning"]["layer_sparsity_mode"] == "owl"


# --- formats and config.json --------------------------------------------------------------

@pytest.mark.parametrize("sparsity,requested,expected", [
    (0.2, "auto", "dense"), (0.6, "bitmap", "bitmap"), (0.5, "tiled_csl", "tiled_csl"), (0.7, "dense", "dense"),
])
def test_format_choice(models, tmp_path, sparsity, requested, expected):
    config = convert(models["opt"], tmp_path / "ckpt", sparsity=sparsity, format=requested, progress=False)
    for name, entry in config["tensors"].items():
        assert entry["format"] == (expected if PRUNED.search(name) else "dense"), name
    assert_matches_reference(tmp_path / "ckpt", reference_pruned(models["opt"], torch.float16, "magnitude", sparsity),
                             tiny_opt_config(), 1)


def test_negative_zeros_are_stored_as_positive_zeros_in_both_formats(tmp_path):
    model = randomized_model(tiny_opt_config(), seed=21)
    with torch.no_grad():  # values that round to -0 in float16, kept at sparsity 0
        model.model.decoder.layers[0].fc1.weight[5, :7] = -1e-9
        model.model.decoder.layers[0].fc1.bias[:3] = -1e-9
    model_dir = save_model(model, tmp_path / "model", "safetensors")
    weights = {}
    for fmt in ("dense", "tiled_csl"):
        convert(model_dir, tmp_path / fmt, sparsity=0.0, format=fmt, progress=False)
        weights[fmt] = dense_weights(tmp_path / fmt)
    fc1 = as_bits(weights["dense"]["model.decoder.layers.0.fc1.weight"])
    assert np.all(fc1[5, :7] == 0) and not np.any(fc1 == 0x8000)
    assert np.all(as_bits(weights["dense"]["model.decoder.layers.0.fc1.bias"])[:3] == 0x8000)  # not a pruned weight
    for name in weights["dense"]:
        np.testing.assert_array_equal(as_bits(weights["dense"][name]), as_bits(weights["tiled_csl"][name]), name)


def test_auto_threshold_is_the_documented_one():
    assert TILED_CSL_MIN_SPARSITY == 0.55


def test_config_json_fields(models, tmp_path):
    out = tmp_path / "ckpt"
    convert(models["opt"], out, sparsity=0.6, tp=2, format="tiled_csl", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 2 and config["dtype"] == "float16" and config["tp"] == 2
    hf = json.loads((models["opt"] / "config.json").read_text())
    assert {k: config["model_config"][k] for k in ("hidden_size", "ffn_dim", "num_attention_heads", "vocab_size")} \
        == {k: hf[k] for k in ("hidden_size", "ffn_dim", "num_attention_heads", "vocab_size")}
    assert sorted(config["files"]) == ["rank0-of-2.safetensors", "rank1-of-2.safetensors"]
    for file_name, record in config["files"].items():
        data = (out / file_name).read_bytes()
        assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    fc1 = config["tensors"]["model.decoder.layers.0.fc1.weight"]
    assert fc1["format"] == "tiled_csl" and fc1["shape"] == [64, 64] and fc1["full_shape"] == [128, 64]
    assert fc1["split"] == "rows" and fc1["pruned"]
    assert set(fc1["shards"]["1"]["components"]) == {"model.decoder.layers.0.fc1.weight.words",
                                                     "model.decoder.layers.0.fc1.weight.tile_offsets"}
    assert fc1["nnz"] == fc1["shards"]["0"]["nnz"] + fc1["shards"]["1"]["nnz"]
    bias = config["tensors"]["model.decoder.layers.0.fc2.bias"]
    assert bias["split"] == "rank0" and list(bias["shards"]) == ["0"]
    embed = config["tensors"]["model.decoder.embed_tokens.weight"]
    assert embed["split"] == "replicated" and embed["format"] == "dense" and not embed["pruned"]
    assert "lm_head.weight" not in config["tensors"]  # tied to the token embedding
    assert config["pruning"]["method"] == "magnitude" and config["pruning"]["sparsity"] == 0.6
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (models["opt"] / name).read_bytes()
    with safe_open(str(out / "rank1-of-2.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "sparsellm", "rank": "1", "tp": "2"}
        assert "model.decoder.layers.0.fc2.bias" not in set(f.keys())


def test_load_checkpoint_returns_components(models, tmp_path):
    out = tmp_path / "ckpt"
    convert(models["opt"], out, sparsity=0.6, format="tiled_csl", progress=False)
    config, arrays = load_checkpoint(out)
    name = "model.decoder.layers.1.self_attn.q_proj.weight"
    assert arrays[f"{name}.words"].dtype == np.uint32 and arrays[f"{name}.tile_offsets"].dtype == np.uint32
    assert arrays["model.decoder.embed_tokens.weight"].dtype == np.float16
    with pytest.raises(sparsellm.InvalidArgument, match="rank"):
        load_checkpoint(out, rank=1)


def test_overwrite_replaces_a_checkpoint_only(models, tmp_path):
    out = tmp_path / "ckpt"
    convert(models["opt"], out, sparsity=0.6, progress=False)
    with pytest.raises(FileExistsError, match=str(out)):
        convert(models["opt"], out, sparsity=0.7, progress=False)
    convert(models["opt"], out, sparsity=0.7, overwrite=True, progress=False)
    assert read_config(out)["pruning"]["sparsity"] == 0.7
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    other = tmp_path / "not-a-checkpoint"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a sparsellm checkpoint"):
        convert(models["opt"], other, sparsity=0.6, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"


# --- bad input: a clear error and nothing written -------------------------------------------

def test_missing_model_directory_and_files(models, tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        convert(tmp_path / "nope", out, sparsity=0.5)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((models["opt"] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights found"):
        convert(no_weights, out, sparsity=0.5)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((models["opt"] / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert(no_config, out, sparsity=0.5)
    assert nothing_written(out)


def test_unknown_architecture(tmp_path):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100).save_pretrained(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"")
    with pytest.raises(sparsellm.InvalidArgument, match=r"config\.json: unsupported architecture .*gpt2"):
        convert(model_dir, tmp_path / "ckpt", sparsity=0.5)
    assert nothing_written(tmp_path / "ckpt")


@pytest.mark.parametrize("kwargs,message", [
    ({"sparsity": 1.0}, r"\[0, 1\)"),
    ({"sparsity": -0.1}, r"\[0, 1\)"),
    ({"sparsity": None}, "sparsity is required"),
    ({"sparsity": 0.5, "tp": 3}, "attention heads"),
    ({"sparsity": 0.5, "method": "pruneit"}, "unknown pruning method"),
    ({"sparsity": 0.5, "format": "csr"}, "unknown format"),
    ({"sparsity": 0.5, "dtype": "fp32"}, "unknown dtype"),
    ({"sparsity": 0.5, "calib": "ids.npy"}, "magnitude"),
    ({"nm": "3:3"}, "N:M"),
])
def test_bad_arguments(models, tmp_path, kwargs, message):
    out = tmp_path / "ckpt"
    with pytest.raises(sparsellm.InvalidArgument, match=message):
        convert(models["opt"], out, **kwargs)
    assert nothing_written(out)


@pytest.mark.parametrize("config,tp,message", [
    (tiny_llama_config(), 4, "key/value heads"),
    (tiny_llama_config(intermediate_size=129), 2, "FFN size"),
    (tiny_opt_config(ffn_dim=130), 4, "FFN size"),
    (tiny_opt_config(), 8, "attention heads"),
])
def test_tensor_parallelism_must_divide(tmp_path, config, tp, message):
    model_dir = save_model(randomized_model(config, seed=3), tmp_path / "model", "safetensors")
    with pytest.raises(sparsellm.InvalidArgument, match=message):
        convert(model_dir, tmp_path / "ckpt", sparsity=0.5, tp=tp)
    assert nothing_written(tmp_path / "ckpt")


def test_truncated_or_inconsistent_hf_weights(models, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((models["opt"] / "config.json").read_text())
    data = (models["opt"] / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(sparsellm.FormatError, match=r"model\.safetensors"):
        convert(broken, tmp_path / "ckpt", sparsity=0.5)

    tensors = {}
    with safe_open(str(models["opt"] / "model.safetensors"), "numpy") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    tensors["model.decoder.layers.1.fc1.weight"] = tensors["model.decoder.layers.1.fc1.weight"][:100]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(sparsellm.FormatError, match=r"model\.safetensors: tensor model\.decoder\.layers\.1\.fc1"):
        convert(broken, tmp_path / "ckpt", sparsity=0.5)

    del tensors["model.decoder.layers.1.fc1.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(sparsellm.FormatError, match=r"model\.decoder\.layers\.1\.fc1\.weight is not in"):
        convert(broken, tmp_path / "ckpt", sparsity=0.5)
    assert nothing_written(tmp_path / "ckpt")


@pytest.mark.parametrize("tensor,value,message", [
    ("model.decoder.layers.1.fc2.weight", float("nan"), "NaN"),
    ("model.decoder.embed_tokens.weight", 1e6, "NaN or infinite values in float16.*bf16"),
])
def test_non_finite_values_are_refused(tmp_path, tensor, value, message):
    model = randomized_model(tiny_opt_config(), seed=22)
    with torch.no_grad():
        model.get_parameter(tensor)[1, 2] = value
    model_dir = save_model(model, tmp_path / "model", "safetensors")
    with pytest.raises(sparsellm.InvalidArgument, match=f"tensor {re.escape(tensor)}.*{message}"):
        convert(model_dir, tmp_path / "ckpt", sparsity=0.5, progress=False)
    assert nothing_written(tmp_path / "ckpt")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_midway_leaves_nothing(models, tmp_path, monkeypatch, error):
    import sparsellm.convert.converter as converter

    calls = []
    real_encode = converter.encode

    def failing_encode(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 20:
            raise error("stop")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(converter, "encode", failing_encode)
    out = tmp_path / "ckpt"
    with pytest.raises(error):
        convert(models["opt"], out, sparsity=0.6, tp=2, progress=False)
    assert len(calls) == 20
    assert nothing_written(out)


def test_failure_while_opening_rank_files_leaves_nothing(models, tmp_path, monkeypatch):
    import sparsellm.convert.checkpoint_writer as checkpoint_writer

    real_writer = checkpoint_writer.SafetensorsStreamWriter

    def writer(path, *args):
        if "rank1-" in Path(path).name:
            raise KeyboardInterrupt
        return real_writer(path, *args)

    monkeypatch.setattr(checkpoint_writer, "SafetensorsStreamWriter", writer)
    with pytest.raises(KeyboardInterrupt):
        convert(models["opt"], tmp_path / "ckpt", sparsity=0.6, tp=2, progress=False)
    assert nothing_written(tmp_path / "ckpt")


def test_overwrite_failure_keeps_the_old_checkpoint(models, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    old = convert(models["opt"], out, sparsity=0.6, progress=False)
    real_rename = os.rename

    def rename(source, target):
        if Path(target) == out and Path(source).name.startswith(".ckpt.partial-"):  # moving the new one in
            raise OSError("disk trouble")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk trouble"):
        convert(models["opt"], out, sparsity=0.7, overwrite=True, progress=False)
    monkeypatch.undo()
    assert read_config(out)["files"] == old["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# --- the reader's validation --------------------------------------------------------------

@pytest.fixture
def checkpoint(models, tmp_path):
    out = tmp_path / "ckpt"
    convert(models["opt"], out, sparsity=0.6, tp=2, format="tiled_csl", progress=False)
    return out


def test_truncated_rank_file(checkpoint):
    path = checkpoint / "rank1-of-2.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(sparsellm.FormatError, match=r"rank1-of-2\.safetensors: .*truncated"):
        load_checkpoint(checkpoint, 1)
    load_checkpoint(checkpoint, 0)  # the other rank is fine


def test_corrupt_byte_in_rank_file(checkpoint):
    path = checkpoint / "rank0-of-2.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(sparsellm.FormatError, match=r"rank0-of-2\.safetensors: sha256"):
        load_checkpoint(checkpoint, 0)


def rewrite_rank_file(checkpoint: Path, rank: int, change) -> None:
    """Rewrite a rank file through ``change(arrays)`` and record its new size and hash."""
    config = json.loads((checkpoint / "config.json").read_text())
    file_name = f"rank{rank}-of-{config['tp']}.safetensors"
    with safe_open(str(checkpoint / file_name), "numpy") as f:
        arrays = {key: f.get_tensor(key) for key in f.keys()}
    change(arrays)
    save_file(arrays, str(checkpoint / file_name))
    data = (checkpoint / file_name).read_bytes()
    config["files"][file_name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (checkpoint / "config.json").write_text(json.dumps(config))


def test_corrupt_tiled_csl_words(checkpoint):
    key = "model.decoder.layers.0.fc1.weight.words"

    def corrupt(arrays):
        words = arrays[key].copy()
        words[3] = (np.uint32(16384 + 8) << 16) | np.uint32(7)  # a padding word holding a value
        arrays[key] = words

    rewrite_rank_file(checkpoint, 0, corrupt)
    with pytest.raises(sparsellm.FormatError, match=r"rank0-of-2\.safetensors: tensor model\.decoder\.layers\.0\.fc1"):
        load_checkpoint(checkpoint, 0)


def test_missing_or_mistyped_component(checkpoint):
    rewrite_rank_file(checkpoint, 1, lambda a: a.pop("model.decoder.layers.1.fc2.weight.tile_offsets"))
    with pytest.raises(sparsellm.FormatError, match=r"missing \['model\.decoder\.layers\.1\.fc2\.weight\.tile_offsets'\]"):
        load_checkpoint(checkpoint, 1)

    def retype(arrays):
        arrays["model.decoder.final_layer_norm.weight"] = arrays["model.decoder.final_layer_norm.weight"][:10]

    rewrite_rank_file(checkpoint, 0, retype)
    with pytest.raises(sparsellm.FormatError, match=r"final_layer_norm\.weight has shape \[10\]"):
        load_checkpoint(checkpoint, 0)


def test_bad_config_json(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    name = "model.decoder.layers.0.fc1.weight"
    for change, message in [
        (lambda t: t[name]["shards"].pop("1"), r"shards for ranks \['0'\], expected \['0', '1'\]"),
        (lambda t: t[name]["shards"]["0"]["components"][f"{name}.words"].update(dtype="uint16"), "expected dtype uint32"),
        (lambda t: t[name].update(format="csr"), "unknown format 'csr'"),
        (lambda t: t[name].pop("split"), "malformed entry"),
    ]:
        broken = json.loads(json.dumps(config))
        change(broken["tensors"])
        (checkpoint / "config.json").write_text(json.dumps(broken))
        with pytest.raises(sparsellm.FormatError, match=rf"config\.json: tensor {re.escape(name)}: .*{message}"):
            read_config(checkpoint)
    (checkpoint / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    with pytest.raises(sparsellm.FormatError, match="format_version 1"):
        load_checkpoint(checkpoint)
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(sparsellm.FormatError, match="not valid JSON"):
        read_config(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(checkpoint)


def test_missing_rank_file(checkpoint):
    (checkpoint / "rank1-of-2.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"rank1-of-2\.safetensors"):
        load_checkpoint(checkpoint, 1)


# --- random models ------------------------------------------------------------------------

def test_random_model_from_config_file(tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(tiny_llama_config(hidden_size=128, intermediate_size=256).to_json_string())
    out = tmp_path / "ckpt"
    config = convert_random(config_file, out, sparsity=0.7, tp=2, seed=3, progress=False)
    assert config["source"] == {"kind": "random", "config": str(config_file), "seed": 3, "std": 0.02}
    assert_exact_row_sparsity(out, 0.7)
    weights = dense_weights(out, 0)
    for name, values in weights.items():
        values = values.astype(np.float32)
        assert np.unique(values).size > 1, name
        if "norm" in name:
            assert abs(values.mean() - 1) < 0.01
        elif PRUNED.search(name):  # the kept 30 % are the largest of a normal(0, 0.02)
            kept = values[values != 0]
            assert 0.02 < np.abs(kept).mean() < 0.05, name
        else:
            assert abs(values.std() - 0.02) < 0.004, name
    again = convert_random(config_file, tmp_path / "again", sparsity=0.7, tp=2, seed=3, progress=False)
    assert again["files"] == config["files"]  # same seed, same bytes
    other = convert_random(config_file, tmp_path / "other", sparsity=0.7, tp=2, seed=4, progress=False)
    assert other["files"]["rank0-of-2.safetensors"]["sha256"] != config["files"]["rank0-of-2.safetensors"]["sha256"]


def test_random_opt_125m(tmp_path):
    start = time.perf_counter()
    config = convert_random("opt-125m", tmp_path / "ckpt", sparsity=0.6, progress=False)
    seconds = time.perf_counter() - start
    print(f"random opt-125m at 60 %: {seconds:.1f} s, {config['files']['rank0-of-1.safetensors']['bytes']} bytes")
    tensors = config["tensors"]
    assert tensors["model.decoder.embed_tokens.weight"]["shape"] == [50272, 768]
    assert tensors["model.decoder.embed_positions.weight"]["shape"] == [2050, 768]
    assert tensors["model.decoder.layers.11.fc1.weight"]["shape"] == [3072, 768]
    assert tensors["model.decoder.layers.11.fc1.weight"]["format"] in ("bitmap", "dense")  # test_format_choice.py
    assert len([t for t in tensors.values() if t["pruned"]]) == 12 * 6
    assert config["pruning"]["achieved_sparsity"] == pytest.approx(0.6, abs=1e-3)
    config, arrays = load_checkpoint(tmp_path / "ckpt")
    assert seconds < 60


@pytest.mark.parametrize("name,params,checks", [
    ("opt-125m", 125.2e6, {"model.decoder.layers.11.fc2.weight": (768, 3072)}),
    ("opt-350m", 331.2e6, {"model.decoder.project_in.weight": (1024, 512),
                           "model.decoder.layers.23.fc1.weight": (4096, 1024)}),
    ("opt-1.3b", 1.316e9, {"model.decoder.layers.23.fc1.weight": (8192, 2048)}),
    ("opt-2.7b", 2.652e9, {"model.decoder.layers.31.fc1.weight": (10240, 2560)}),
    ("opt-6.7b", 6.658e9, {"model.decoder.layers.31.fc1.weight": (16384, 4096)}),
    ("opt-13b", 12.853e9, {"model.decoder.layers.39.fc1.weight": (20480, 5120)}),
    ("opt-30b", 29.975e9, {"model.decoder.layers.47.fc1.weight": (28672, 7168)}),
    ("opt-66b", 65.72e9, {"model.decoder.layers.63.fc1.weight": (36864, 9216)}),
    ("opt-175b", 174.6e9, {"model.decoder.layers.95.fc1.weight": (49152, 12288)}),
    ("llama-2-7b", 6.738e9, {"model.layers.31.mlp.gate_proj.weight": (11008, 4096)}),
    ("llama-2-13b", 13.016e9, {"model.layers.39.mlp.down_proj.weight": (5120, 13824)}),
    ("llama-2-70b", 68.977e9, {"model.layers.79.self_attn.k_proj.weight": (1024, 8192),
                               "model.layers.79.mlp.up_proj.weight": (28672, 8192)}),
])
def test_named_shapes(name, params, checks):
    config, _ = random_model_config(name)
    plan = model_plan(config, architecture_of(config, name))
    shapes = {t.name: t.shape for t in plan.tensors}
    assert sum(math.prod(s) for s in shapes.values()) == pytest.approx(params, rel=2e-3)
    for tensor, shape in checks.items():
        assert shapes[tensor] == shape
    assert set(NAMED_CONFIGS) >= {name}


def test_random_rejects_bad_config_and_owl(tmp_path):
    with pytest.raises(sparsellm.InvalidArgument, match="neither a named shape"):
        convert_random("opt-7b", tmp_path / "ckpt", sparsity=0.5)
    with pytest.raises(sparsellm.InvalidArgument, match="OWL"):
        convert_random("opt-125m", tmp_path / "ckpt", sparsity=0.5, layer_sparsity="owl")
    with pytest.raises(sparsellm.InvalidArgument, match="key/value heads"):
        convert_random("llama-2-70b", tmp_path / "ckpt", sparsity=0.5, tp=16)
    assert nothing_written(tmp_path / "ckpt")
