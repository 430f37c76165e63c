"""Calibrated conversion one decoder layer at a time against the whole-model path.

``convert(..., layerwise=True)`` (the default for Wanda, SparseGPT and OWL) reads one
decoder layer at a time from the weight files; ``layerwise=False`` loads the whole model
with ``AutoModelForCausalLM.from_pretrained`` and prunes it with ``prune_model``. On the
CPU both run the same float32 operations in the same order, so the checkpoints must be
byte for byte the same: rank files and config.json. A second group of tests checks that
no more than one decoder layer is ever resident, and the GPU test compares a conversion
calibrated on the GPU with the CPU one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

import sparsellm
from sparsellm.convert import convert, dense_weights
from sparsellm.prune import layerwise

from test_convert import save_model  # noqa: E402

PRUNED_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "out_proj.weight",
                   "fc1.weight", "fc2.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def opt_config(**overrides) -> OPTConfig:
    values = dict(vocab_size=96, hidden_size=64, num_hidden_layers=4, ffn_dim=192, num_attention_heads=4,
                  max_position_embeddings=64, word_embed_proj_dim=64)
    return OPTConfig(**{**values, **overrides})


def llama_config(**overrides) -> LlamaConfig:
    values = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False)
    return LlamaConfig(**{**values, **overrides})


def random_model(config, seed: int, dtype=torch.float32):
    """Every parameter drawn afresh (std 0.05, norms around 1, some large input columns for OWL)."""
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = torch.randn(parameter.shape, generator=generator) * 0.05
            if parameter.dim() == 1 and "norm" in name:
                values += 1.0
            if parameter.dim() == 2 and "layers" in name and parameter.shape[1] > 8:
                values[:, :: 7] *= 4.0  # outlier input features
            parameter.copy_(values)
    return model.to(dtype)


def save(model, directory: Path, layout: str) -> Path:
    return save_model(model, directory, layout, shard_size="40KB")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("layerwise")
    opt = random_model(opt_config(), seed=31)
    llama = random_model(llama_config(), seed=32)
    tied = random_model(llama_config(tie_word_embeddings=True), seed=33)
    return {
        "opt": save(opt, root / "opt", "safetensors"),
        "opt-sharded": save(opt, root / "opt-sharded", "sharded"),
        "llama": save(llama, root / "llama", "safetensors"),
        "llama-bin": save(llama, root / "llama-bin", "bin"),
        "llama-tied-bf16": save(random_model(llama_config(tie_word_embeddings=True), seed=33, dtype=torch.bfloat16),
                                root / "llama-tied-bf16", "safetensors"),
        "llama-tied": save(tied, root / "llama-tied", "safetensors"),
    }


def calibration(seed: int, nsamples: int = 6, seqlen: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 96, size=(nsamples, seqlen))


def assert_same_checkpoint(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        if name == "config.json":
            assert json.loads((a / name).read_text()) == json.loads((b / name).read_text())
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


METHODS = {
    "wanda": dict(method="wanda", sparsity=0.6),
    "sparsegpt": dict(method="sparsegpt", sparsity=0.5),
    "owl": dict(method="wanda", sparsity=0.7, layer_sparsity="owl"),
    "sparsegpt-owl": dict(method="sparsegpt", sparsity=0.6, layer_sparsity="owl"),
    "magnitude-owl": dict(method="magnitude", sparsity=0.6, layer_sparsity="owl"),
    "wanda-2:4": dict(method="wanda", nm="2:4"),
}


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "owl"])
@pytest.mark.parametrize("family", ["opt", "llama"])
def test_layerwise_conversion_is_bit_identical(sources, tmp_path, family, method, tp):
    args = dict(METHODS[method], calib=calibration(41), tp=tp, progress=False, device="cpu")
    layered = convert(sources[family], tmp_path / "layered", **args)
    whole = convert(sources[family], tmp_path / "whole", layerwise=False, **args)
    assert layered == whole
    assert_same_checkpoint(tmp_path / "layered", tmp_path / "whole")
    assert layered["pruning"]["achieved_sparsity"] > 0.4
    if method == "owl":
        targets = layered["pruning"]["owl"]["layer_targets"]
        assert len(targets) == 4 and np.mean(targets) == pytest.approx(0.7) and np.ptp(targets) > 0.01


@pytest.mark.parametrize("source,method,extra", [
    ("opt-sharded", "sparsegpt-owl", dict(tp=2)),
    ("llama-bin", "wanda-2:4", dict(tp=2)),
    ("llama-bin", "magnitude-owl", dict(tp=1)),
    ("llama-tied", "sparsegpt", dict(tp=2)),
    ("llama-tied-bf16", "wanda", dict(tp=1, dtype="fp16")),
    ("llama-tied-bf16", "owl", dict(tp=2)),  # stays bfloat16
])
def test_layerwise_layouts_and_dtypes(sources, tmp_path, source, method, extra):
    args = dict(METHODS[method], calib=calibration(43), progress=False, device="cpu", **extra)
    layered = convert(sources[source], tmp_path / "layered", **args)
    convert(sources[source], tmp_path / "whole", layerwise=False, **args)
    assert_same_checkpoint(tmp_path / "layered", tmp_path / "whole")
    assert layered["dtype"] == ("float16" if extra.get("dtype") == "fp16" else
                                "bfloat16" if "bf16" in source else "float16")


def test_layerwise_default_calibration_samples_the_same_ids(sources, tmp_path):
    args = dict(method="wanda", sparsity=0.6, nsamples=3, seqlen=10, progress=False, device="cpu")
    layered = convert(sources["llama-tied"], tmp_path / "layered", **args)
    convert(sources["llama-tied"], tmp_path / "whole", layerwise=False, **args)
    assert layered["pruning"]["calibration"]["source"] == "sampled from the model"
    assert_same_checkpoint(tmp_path / "layered", tmp_path / "whole")


@pytest.mark.parametrize("device,message", [("tpu7", "not a torch device"), ("cuda", "no CUDA GPU")])
def test_bad_device_is_an_argument_error(sources, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(sparsellm.InvalidArgument, match=message):
        convert(sources["opt"], tmp_path / "ckpt", method="wanda", sparsity=0.5, calib=calibration(49),
                device=device, progress=False)
    assert not (tmp_path / "ckpt").exists()


def resident_layers(streamed: layerwise.StreamedModel) -> list[int]:
    return [i for i, layer in enumerate(streamed.layers)
            if any(p.device.type != "meta" for p in layer.parameters())]


@pytest.mark.parametrize("source,sample", [("opt", False), ("llama-tied", True)])
def test_at_most_one_decoder_layer_is_resident(sources, tmp_path, monkeypatch, source, sample):
    """Every read of a tensor, in every stage (sampling, OWL's dense pass, pruning, writing),
    finds at most one decoder layer holding real parameters, and never the LM head while
    the layers are pruned."""
    seen: list[tuple[str, list[int]]] = []
    original = layerwise.StreamedModel.materialise

    def checked(self, modules):
        original(self, modules)
        seen.append((",".join(modules), resident_layers(self)))

    monkeypatch.setattr(layerwise.StreamedModel, "materialise", checked)
    calib = None if sample else calibration(45)
    convert(sources[source], tmp_path / "ckpt", method="sparsegpt", sparsity=0.6, layer_sparsity="owl",
            calib=calib, nsamples=2, seqlen=6, tp=2, progress=False, device="cpu")
    assert seen and all(len(layers) <= 1 for _, layers in seen), seen
    layer_loads = [modules for modules, _ in seen if ".layers." in modules]
    # OWL's dense pass and the pruning pass read each of the 4 layers once (plus sampling)
    assert len(layer_loads) >= 8


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["opt", "llama"])
def test_layerwise_on_gpu_matches_cpu(sources, tmp_path, family):
    """Calibrated on the GPU, the masks agree with the CPU's up to near-ties of the scores
    (float32 sums in another order), and every row keeps exactly its share."""
    messages: list[str] = []
    args = dict(method="wanda", sparsity=0.6, calib=calibration(47, nsamples=8, seqlen=32), progress=False)
    convert(sources[family], tmp_path / "gpu", device="cuda", log=messages.append, **args)
    convert(sources[family], tmp_path / "cpu", device="cpu", **args)
    assert any("on cuda" in m for m in messages)
    gpu, cpu = dense_weights(tmp_path / "gpu"), dense_weights(tmp_path / "cpu")
    assert gpu.keys() == cpu.keys()
    for name in gpu:
        if name.endswith(PRUNED_SUFFIXES):
            g, c = gpu[name].view(np.uint16), cpu[name].view(np.uint16)
            assert np.all(((g & 0x7FFF) == 0).sum(axis=1) == round(0.6 * g.shape[1])), name
            assert np.mean(g == c) > 0.99, name
        else:
            np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=name)
