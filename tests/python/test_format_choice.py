"""Per-weight format choice by the calibrated speed model (sparsellm.format_choice), ``--format auto``
and ``sparsellm info``'s predicted speedups."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from sparsellm.errors import FormatError, InvalidArgument
from sparsellm.format_choice import (
    COEFFICIENTS, DATA_DIR, DEFAULT_GPU, FormatPolicy, SpeedModel, features, fit_benchmark_file, fit_model, gpu_tag,
    load_model, model_file_name, predict_us, read_model, write_model,
)

REPO = Path(__file__).resolve().parents[2]
H100_BENCHMARK = REPO / "docs" / "benchmarks" / "spmm-formats-h100-80gb-hbm3.json"


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


@pytest.fixture(scope="module")
def h100_benchmark() -> dict:
    return json.loads(H100_BENCHMARK.read_text())
# (M, K) of the benchmark's anchor weights: OPT-66B QKV, attention out, FC1, FC2; OPT-175B FC1 at TP 8.
ANCHORS = [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864), (6144, 12288)]
IMPL = {"dense": "cublas", "tiled_csl": "tiled_csl", "bitmap": "bitmap"}


def synthetic_model(**formats: dict[str, float]) -> SpeedModel:
    coefficients = {f: dict(zip(COEFFICIENTS, values)) for f, values in formats.items()}
    return SpeedModel("Synthetic GPU", coefficients, "test")


def records_of(model: SpeedModel, shapes, ns, sparsities) -> list[dict]:
    """Benchmark-like records whose times are the model's own predictions."""
    out = []
    for fmt in model.formats:
        for (m, k), n, s in itertools.product(shapes, ns, [0.0] if fmt == "dense" else sparsities):
            out.append(dict(impl=IMPL[fmt], M=m, K=k, N=n, sparsity=s, us=model.time_us(fmt, m, k, n, s),
                            shape=f"{m}x{k}", dtype="float16"))
    return out


# --- the model and its fit -------------------------------------------------------------------

KNOWN = synthetic_model(  # fixed_us, us_per_byte, us_per_tile, us_per_tile_column, us_per_nonzero
    dense=(6.0, 3.5e-7, 0.0, 0.0, 0.0),
    tiled_csl=(6.0, 4.0e-7, 1.9e-3, 6.0e-5, 5.0e-7),
    bitmap=(6.0, 4.2e-7, 2.6e-3, 5.0e-5, 0.0),
)


def test_fit_recovers_known_constants():
    shapes = [(1024, 1024), (4096, 4096), (6144, 12288), (27648, 9216), (300, 7000)]
    records = records_of(KNOWN, shapes, [1, 8, 16, 32, 64, 128, 256], [0.3, 0.5, 0.7, 0.9])
    fitted = fit_model(records, "Synthetic GPU")
    assert fitted.formats == ("dense", "tiled_csl", "bitmap")
    for fmt in fitted.formats:
        for name in COEFFICIENTS:
            want, got = KNOWN.coefficients[fmt][name], fitted.coefficients[fmt][name]
            if fmt == "dense" and name != "fixed_us":
                continue  # dense's bytes and tiles are proportional: the split between them is not identifiable
            assert got == pytest.approx(want, rel=0.02, abs=1e-12), (fmt, name)
        assert fitted.fit["rms_relative_error"][fmt] < 1e-3
    for m, k, n, s in [(8192, 8192, 16, 0.6), (2048, 5120, 64, 0.8), (123, 456, 3, 0.5)]:
        for fmt in fitted.formats:  # the unidentifiable dense split predicts alike
            assert fitted.time_us(fmt, m, k, n, s) == pytest.approx(KNOWN.time_us(fmt, m, k, n, s), rel=0.02)
    assert fitted.fit["sparsity_range"] == {"tiled_csl": [0.3, 0.9], "bitmap": [0.3, 0.9]}


def test_fit_needs_dense_and_a_sparse_format():
    records = records_of(KNOWN, [(4096, 4096)], [1, 16, 64, 128], [0.5])
    with pytest.raises(InvalidArgument, match="cublas and at least one sparse"):
        fit_model([r for r in records if r["impl"] == "cublas"], "x")
    with pytest.raises(InvalidArgument, match="time"):
        fit_model([{**records[0], "us": 0.0}] + records, "x")


@pytest.mark.parametrize("model_file", sorted(DATA_DIR.glob("format-model-*.json")), ids=lambda p: p.stem)
def test_shipped_models_are_fits_of_committed_benchmarks(model_file):
    """Every shipped model is the fit of the committed calibration run of its GPU."""
    shipped = read_model(model_file)
    tag = model_file.stem.removeprefix("format-model-")
    benchmark = REPO / "docs" / "benchmarks" / f"spmm-formats-{tag}.json"
    refit = fit_benchmark_file(benchmark)
    # The fit alternates discrete choices over least-squares solves, whose last bits depend on the
    # BLAS it runs on: compare what the models predict on the benchmark's products, not their bits.
    for r in json.loads(benchmark.read_text())["records"]:
        if r["impl"] in ("tiled_csl", "bitmap", "split24"):
            args = (r["impl"], r["M"], r["K"], r["N"], r["sparsity"])
            assert refit.speedup(*args) == pytest.approx(shipped.speedup(*args), rel=1e-3), args
    assert gpu_tag(shipped.gpu) == tag and max(shipped.fit["rms_relative_error"].values()) < 0.15
    assert model_file_name(DEFAULT_GPU) in {p.name for p in DATA_DIR.glob("format-model-*.json")}


def test_h100_model_follows_the_measurements(h100_benchmark):
    """Within the measured range the predictions agree with the benchmark's geomeans."""
    model = read_model(DATA_DIR / model_file_name(DEFAULT_GPU))
    for fmt, s in itertools.product(("tiled_csl", "bitmap"), (0.5, 0.7, 0.9)):
        sel = [r for r in h100_benchmark["records"]
               if r["impl"] == fmt and r["sparsity"] == s and r["N"] in (8, 16, 32)]
        measured = geomean(r["speedup_vs_cublas"] for r in sel)
        predicted = geomean(model.speedup(fmt, r["M"], r["K"], r["N"], s) for r in sel)
        assert predicted == pytest.approx(measured, rel=0.12), (fmt, s)


def test_model_predicts_with_the_max_of_memory_and_tile_work():
    c = dict(fixed_us=2.0, us_per_byte=1e-6, us_per_tile=1e-3, us_per_tile_column=1e-4, us_per_nonzero=1e-5)
    moved, tiles, columns, nonzeros = features("bitmap", 256, 128, 4, 0.75)
    assert tiles == 4 and columns == 4 * 8 and nonzeros == 256 * 128 / 4  # 2 x 2 tiles, N padded to 8
    assert moved == pytest.approx(2 * 0.25 * 256 * 128 + 1052 * 4 + 4 + 2 * 4 * (256 + 128))
    x = (moved, tiles, columns, nonzeros)
    assert predict_us(c, x) == pytest.approx(2.0 + max(moved * 1e-6, 4e-3 + 32e-4 + 8192e-5))
    assert predict_us({**c, "us_per_byte": 1e-3}, x) == pytest.approx(2.0 + moved * 1e-3)
    with pytest.raises(InvalidArgument):
        features("dense", 0, 4, 4, 0.0)
    with pytest.raises(InvalidArgument):
        features("coo", 4, 4, 4, 0.5)


# --- the choice ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def h100() -> FormatPolicy:
    return FormatPolicy.load(gpu=DEFAULT_GPU)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.2])
def test_h100_dense_at_low_sparsity(h100, sparsity):
    for shape in ANCHORS + [(4096, 4096), (32, 64)]:
        choice = h100.choose(shape, sparsity)
        assert choice.format == "dense" and "below the measured range" in choice.reason, (shape, choice)


@pytest.mark.parametrize("sparsity", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("n", [8, 16, 32])
def test_h100_choice_at_decode_sizes(h100_benchmark, sparsity, n):
    """What the committed calibration measured: bitmap from 30 % (1.1x cuBLAS at 30 %, its
    mask costs 1/16 of the dense bytes) to 70 %; Tiled-CSL (whose time falls with the
    nonzeros) from 80 %."""
    policy = FormatPolicy.load(gpu="h100-80gb-hbm3", decode_batch=n)  # a tag names the GPU too
    expected = "tiled_csl" if sparsity >= 0.8 else "bitmap"
    measured = {fmt: geomean(r["speedup_vs_cublas"] for r in h100_benchmark["records"]
                             if r["impl"] == fmt and r["N"] == n and r["sparsity"] == sparsity)
                for fmt in ("tiled_csl", "bitmap")}
    assert max(measured, key=measured.get) == expected, measured
    for shape in ANCHORS + [(4096, 4096), (8192, 28672)]:
        choice = policy.choose(shape, sparsity)
        assert choice.format == expected, (shape, choice)
        assert choice.reason == f"{expected} predicted {choice.speedups[expected]:.2f}x over dense at N={n}"
        other = choice.speedups["bitmap" if expected == "tiled_csl" else "tiled_csl"]
        assert choice.speedups[expected] > max(1.05, other)


def test_h100_dense_for_prefill_sized_batches():
    policy = FormatPolicy.load(gpu=DEFAULT_GPU, decode_batch=128)
    assert all(policy.choose(shape, 0.9).format == "dense" for shape in ANCHORS)


def test_dense_for_tiny_weights(h100):
    choice = h100.choose((32, 64), 0.9)  # launch-bound: nothing to gain
    assert choice.format == "dense" and "no sparse format predicted 1.05x" in choice.reason


def test_tiled_csl_where_a_model_makes_it_fastest():
    model = synthetic_model(dense=(5.0, 3.5e-7, 0.0, 0.0, 0.0), tiled_csl=(5.0, 2.0e-7, 0.0, 0.0, 0.0),
                            bitmap=(5.0, 4.0e-7, 4e-3, 1e-4, 0.0))
    choice = FormatPolicy(model).choose((8192, 8192), 0.7)
    assert choice.format == "tiled_csl" and choice.reason.startswith("tiled_csl predicted ")
    assert choice.speedups["tiled_csl"] > choice.speedups["bitmap"]


def test_no_choice_below_the_measured_sparsity():
    model = SpeedModel("g", KNOWN.coefficients, fit={"sparsity_range": {"tiled_csl": [0.6, 0.9],
                                                                        "bitmap": [0.5, 0.9]}})
    policy = FormatPolicy(model)
    assert policy.candidates(0.55) == ["bitmap"] and policy.candidates(0.6) == ["tiled_csl", "bitmap"]
    choice = policy.choose((8192, 8192), 0.45)
    assert choice.format == "dense" and "below the measured range" in choice.reason


def test_bad_decode_batch():
    with pytest.raises(InvalidArgument, match="decode batch"):
        FormatPolicy(KNOWN, decode_batch=0)


# --- model files and their lookup ------------------------------------------------------------

def test_model_file_round_trip(tmp_path):
    path = write_model(KNOWN, tmp_path / "m.json")
    assert read_model(path) == KNOWN


@pytest.mark.parametrize("content,match", [
    ("{not json", "invalid JSON"),
    ('{"kind": "something else"}', "kind"),
    (json.dumps({**KNOWN.to_json(), "version": 7}), "unsupported version 7"),
    (json.dumps({**KNOWN.to_json(), "formats": {"dense": KNOWN.to_json()["formats"]["dense"]}}), "at least one"),
    (json.dumps({**KNOWN.to_json(), "formats": {**KNOWN.to_json()["formats"], "coo": {}}}), "unknown format 'coo'"),
    (json.dumps({**KNOWN.to_json(), "formats": {**KNOWN.to_json()["formats"],
                                                "bitmap": {"fixed_us": 1.0}}}), "exactly the coefficients"),
    (json.dumps({**KNOWN.to_json(), "formats": {**KNOWN.to_json()["formats"], "bitmap": {
        **KNOWN.to_json()["formats"]["bitmap"], "us_per_byte": -1.0}}}), "bitmap.us_per_byte = -1.0"),
])
def test_corrupt_model_file(tmp_path, content, match):
    path = tmp_path / "model.json"
    path.write_text(content)
    with pytest.raises(FormatError, match=match) as info:
        load_model(calibration=path)
    assert str(path) in str(info.value)


def test_missing_model_file(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        load_model(calibration=tmp_path / "absent.json")


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shipped = load_model(gpu=DEFAULT_GPU)
    assert shipped.source.startswith("spmm-formats-h100")
    cached = SpeedModel(DEFAULT_GPU, KNOWN.coefficients, "calibrated here")
    write_model(cached, tmp_path / "cache" / "sparsellm" / model_file_name(DEFAULT_GPU))
    assert load_model(gpu=DEFAULT_GPU).source == "calibrated here"  # the cache before the package
    explicit = write_model(SpeedModel("Other", KNOWN.coefficients, "explicit"), tmp_path / "x.json")
    assert load_model(gpu=DEFAULT_GPU, calibration=explicit).source == "explicit"
    with pytest.raises(InvalidArgument, match="no format model for GPU 'NVIDIA B200'"):
        load_model(gpu="NVIDIA B200")
    assert gpu_tag("NVIDIA H100 80GB HBM3") == gpu_tag("h100-80gb-hbm3") == "h100-80gb-hbm3"


# --- the converter's auto choice and config.json ---------------------------------------------

def test_choose_format_in_the_converter_encoding():
    from sparsellm.convert.encoding import check_format, choose_format, format_fields

    policy = FormatPolicy(synthetic_model(dense=(5.0, 3.5e-7, 0.0, 0.0, 0.0), tiled_csl=(5.0, 2.0e-7, 0.0, 0.0, 0.0)))
    assert check_format(policy) is policy
    with pytest.raises(InvalidArgument, match="unknown format"):
        check_format("coo")
    chosen = choose_format(policy, True, 0.7, (4096, 4096))
    assert chosen == "tiled_csl" and format_fields(chosen) == {
        "format": "tiled_csl", "format_reason": f"{chosen.reason}"}
    assert chosen.reason.startswith("tiled_csl predicted ") and chosen.reason.endswith("(Synthetic GPU model)")
    assert choose_format(policy, True, 0.1, (4096, 4096)) == "dense"
    assert choose_format(policy, False, 0.9, (4096, 4096)).reason == "not a pruned weight"
    assert format_fields(choose_format("bitmap", True, 0.1)) == {"format": "bitmap", "format_reason": "requested"}
    assert choose_format("auto", True, 0.2) == "dense"  # the default (H100) model: below its range
    assert json.dumps({"format": chosen}) == '{"format": "tiled_csl"}'


def _tiny_opt_config(directory: Path) -> Path:
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=100, hidden_size=256, num_hidden_layers=1, ffn_dim=512, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=256)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory / "config.json"


PRUNED = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def test_auto_stores_the_models_choice(tmp_path):
    from sparsellm.convert import convert_random, dense_weights

    policy = FormatPolicy(synthetic_model(dense=(0.0, 3.5e-7, 0.0, 0.0, 0.0), tiled_csl=(0.0, 2.0e-7, 0.0, 0.0, 0.0),
                                          bitmap=(0.0, 5.0e-7, 0.0, 0.0, 0.0)))  # any shape: tiled_csl
    config = convert_random(_tiny_opt_config(tmp_path / "cfg"), tmp_path / "ckpt", sparsity=0.7, format=policy,
                            progress=False)
    for name, entry in config["tensors"].items():
        pruned = any(f".{p}.weight" in name for p in PRUNED)
        assert entry["format"] == ("tiled_csl" if pruned else "dense"), name
    weights = dense_weights(tmp_path / "ckpt")
    assert (weights["model.decoder.layers.0.fc1.weight"] == 0).mean() == pytest.approx(0.7, abs=0.01)


def test_auto_checkpoints_carry_the_reasons(tmp_path):
    from sparsellm.convert import convert_random, read_config

    policy = FormatPolicy.load(gpu=DEFAULT_GPU)
    convert_random(_tiny_opt_config(tmp_path / "cfg"), tmp_path / "ckpt", sparsity=0.7, format=policy,
                   progress=False)
    tensors = read_config(tmp_path / "ckpt")["tensors"]
    fc1 = tensors["model.decoder.layers.0.fc1.weight"]
    want = policy.choose(tuple(fc1["shape"]), fc1["sparsity"])  # 512 x 256: launch-bound, dense
    assert fc1["format"] == want.format and fc1["format_reason"] == f"{want.reason} ({DEFAULT_GPU} model)"
    assert tensors["model.decoder.embed_tokens.weight"]["format_reason"] == "not a pruned weight"


def _tiny_gqa_llama(directory: Path, hidden: int = 512, kv_heads: int = 4) -> Path:
    from transformers import LlamaConfig

    # 8 query heads of hidden / 8 on kv_heads KV heads; by default q [512, 512], k and v [256, 512]
    # (whole tile rows at tp 1 and 2, so the runtime stacks them), gate and up [1024, 512]
    config = LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=kv_heads, max_position_embeddings=64)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory / "config.json"


@pytest.mark.parametrize("tp", [1, 2])
def test_stacked_linears_are_chosen_by_the_stacked_shape(tmp_path, tp):
    from transformers import AutoConfig

    from sparsellm.convert.architectures import ARCHITECTURES
    from sparsellm.convert.model_plan import model_plan

    plan = model_plan(AutoConfig.from_pretrained(_tiny_gqa_llama(tmp_path)), ARCHITECTURES["llama"])
    shapes = {t.name.split(".")[-2]: plan.choice_shape(t, tp) for t in plan.tensors if t.pruned}
    assert shapes == {"q_proj": ((512 + 2 * 256) // tp, 512), "k_proj": ((512 + 2 * 256) // tp, 512),
                      "v_proj": ((512 + 2 * 256) // tp, 512), "o_proj": (512, 512 // tp),
                      "gate_proj": (2 * 1024 // tp, 512), "up_proj": (2 * 1024 // tp, 512),
                      "down_proj": (512, 1024 // tp)}
    embed = next(t for t in plan.tensors if t.name == "model.embed_tokens.weight")
    assert plan.choice_shape(embed, tp) == embed.shard_shape(tp)
    # k and v of 64 rows before the last part: sparse parts would not stack (not whole tile rows),
    # so q/k/v are chosen by their own shapes; gate and up still stack.
    apart = model_plan(AutoConfig.from_pretrained(_tiny_gqa_llama(tmp_path / "apart", hidden=256, kv_heads=2)),
                       ARCHITECTURES["llama"])
    shapes = {t.name.split(".")[-2]: apart.choice_shape(t, tp) for t in apart.tensors if t.pruned}
    assert shapes["q_proj"] == (256 // tp, 256) and shapes["k_proj"] == shapes["v_proj"] == (64 // tp, 256)
    assert shapes["gate_proj"] == shapes["up_proj"] == (2 * 512 // tp, 256)


def test_auto_gives_a_stacked_group_one_format(tmp_path):
    """A policy under which k_proj alone ([256, 512]) stays dense and the stacked [1024, 512] goes
    bitmap: k and v follow q, as the runtime multiplies them together."""
    from sparsellm.convert import write_generated

    policy = FormatPolicy(synthetic_model(dense=(0.0, 1e-4, 0.0, 0.0, 0.0), bitmap=(40.0, 5e-5, 0.0, 0.0, 0.0)))
    assert policy.choose((256, 512), 0.7).format == "dense" and policy.choose((1024, 512), 0.7).format == "bitmap"
    tensors = write_generated(_tiny_gqa_llama(tmp_path / "cfg"), tmp_path / "gen", sparsity=0.7,
                              format=policy)["tensors"]
    formats = {name.split(".")[-2]: entry["format"] for name, entry in tensors.items() if entry["pruned"]}
    assert formats["q_proj"] == formats["k_proj"] == formats["v_proj"] == "bitmap"
    assert formats["gate_proj"] == formats["up_proj"] == policy.choose((2048, 512), 0.7).format


# --- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bitmap_checkpoint(tmp_path_factory) -> Path:
    from sparsellm.convert import convert_random

    root = tmp_path_factory.mktemp("fc")
    convert_random(_tiny_opt_config(root / "cfg"), root / "ckpt", sparsity=0.8, format="bitmap", progress=False)
    return root / "ckpt"


def test_info_shows_bytes_and_predicted_speedup(bitmap_checkpoint, capsys):
    from sparsellm.cli import main
    from sparsellm.convert import read_config

    assert main(["info", str(bitmap_checkpoint), "--decode-batch", "8", "--target-gpu", DEFAULT_GPU]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("name "))
    assert header.split() == ["name", "format", "shape", "sparsity", "bytes", "dense", "bytes", "vs", "fp16",
                              "speedup@N=8"]
    name = "model.decoder.layers.0.fc1.weight"
    fields = next(line for line in lines if line.startswith(name + " ")).split()
    entry = read_config(bitmap_checkpoint)["tensors"][name]
    model = load_model(gpu=DEFAULT_GPU)
    sparsity = entry["shards"]["0"]["sparsity"]
    assert fields[1:4] == ["bitmap", "512x256", f"{sparsity:.4f}"]
    assert int(fields[5]) == 512 * 256 * 2 and int(fields[4]) < 0.4 * int(fields[5])
    assert fields[7] == f"{model.speedup('bitmap', 512, 256, 8, sparsity):.2f}"
    for proj in ("q_proj", "k_proj", "v_proj"):  # predicted as the stacked [768, 256] product
        name = f"model.decoder.layers.0.self_attn.{proj}.weight"
        fields = next(line for line in lines if line.startswith(name + " ")).split()
        sparsity = read_config(bitmap_checkpoint)["tensors"][name]["shards"]["0"]["sparsity"]
        assert fields[2] == "256x256" and fields[7] == f"{model.speedup('bitmap', 768, 256, 8, sparsity):.2f}"
    assert "speedup: predicted over dense at N=8 by the NVIDIA H100 80GB HBM3 model" in out
    assert "bias" in out and "(0 tiled_csl, 6 bitmap, 0 split24)" in out


def test_info_predicts_a_stacked_group_only_when_it_stacks():
    from sparsellm.convert.summary import TensorRow, product_shapes

    def rows(k_format, kv_rows=64):
        layer = "model.layers.0."
        return [TensorRow(layer + "self_attn.q_proj.weight", "bitmap", (256, 256), 0.7, 1),
                TensorRow(layer + "self_attn.k_proj.weight", k_format, (kv_rows, 256), 0.7, 1),
                TensorRow(layer + "self_attn.v_proj.weight", "bitmap", (kv_rows, 256), 0.7, 1),
                TensorRow(layer + "mlp.gate_proj.weight", "bitmap", (512, 256), 0.7, 1),
                TensorRow(layer + "mlp.up_proj.weight", "bitmap", (512, 256), 0.7, 1),
                TensorRow(layer + "mlp.down_proj.weight", "bitmap", (256, 512), 0.7, 1),
                TensorRow(layer + "input_layernorm.weight", "dense", (256,), 0.0, 1)]

    stacked = product_shapes({"architecture": "llama"}, rows("bitmap", kv_rows=128))
    assert {n.split(".")[-2]: s for n, s in stacked.items()} == {
        "q_proj": (512, 256), "k_proj": (512, 256), "v_proj": (512, 256), "gate_proj": (1024, 256),
        "up_proj": (1024, 256), "down_proj": (256, 512)}
    apart = product_shapes({"architecture": "llama"}, rows("dense"))  # k_proj dense: q/k/v run apart
    assert {n.split(".")[-2]: s for n, s in apart.items() if "attn" in n} == {
        "q_proj": (256, 256), "k_proj": (64, 256), "v_proj": (64, 256)}
    # Sparse k_proj of 64 rows, not the last part: not whole tile rows, so the runtime keeps q/k/v apart.
    partial = product_shapes({"architecture": "llama"}, rows("bitmap"))
    assert {n.split(".")[-2]: s for n, s in partial.items() if "attn" in n} == {
        "q_proj": (256, 256), "k_proj": (64, 256), "v_proj": (64, 256)}
    dense = product_shapes({"architecture": "llama"}, [TensorRow(r.name, "dense", r.shape, 0.0, 1) for r in rows("bitmap")])
    assert {n.split(".")[-2]: s for n, s in dense.items() if "attn" in n} == {
        "q_proj": (384, 256), "k_proj": (384, 256), "v_proj": (384, 256)}  # dense stacks any rows


def test_cli_errors_are_one_line(bitmap_checkpoint, tmp_path, capsys):
    from sparsellm.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "sparsellm-format-model", "version": 1}')
    assert main(["info", str(bitmap_checkpoint), "--calibration", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsellm info: error: ") and str(bad) in err and len(err.splitlines()) == 1
    out = tmp_path / "ckpt"
    config = _tiny_opt_config(tmp_path / "cfg")
    assert main(["convert", "--random", str(config), "--out", str(out), "--sparsity", "0.7", "--calibration",
                 str(bad), "--quiet"]) == 1
    assert "not a sparsellm format model" in capsys.readouterr().err and not out.exists()
    assert main(["convert", "--random", str(config), "--out", str(out), "--sparsity", "0.7", "--target-gpu",
                 "NVIDIA B200", "--quiet"]) == 1
    assert "no format model for GPU 'NVIDIA B200'" in capsys.readouterr().err
    assert main(["convert", "--random", str(config), "--out", str(out), "--sparsity", "0.7", "--decode-batch", "0",
                 "--quiet"]) == 1


def test_cli_convert_auto(tmp_path, capsys):
    from sparsellm.cli import main
    from sparsellm.convert import read_config

    out = tmp_path / "ckpt"
    assert main(["convert", "--random", str(_tiny_opt_config(tmp_path / "cfg")), "--out", str(out), "--sparsity",
                 "0.2", "--target-gpu", DEFAULT_GPU, "--decode-batch", "32"]) == 0
    assert "(0 tiled_csl, 0 bitmap, 0 split24)" in capsys.readouterr().err  # 20 %: below the measured range
    assert all(t["format"] == "dense" for t in read_config(out)["tensors"].values())


# --- calibration on the GPU ------------------------------------------------------------------

@pytest.mark.gpu
def test_calibrate_writes_a_loadable_model(tmp_path, monkeypatch):
    from sparsellm.bench.__main__ import main as bench_main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert bench_main(["calibrate", "--out", str(tmp_path / "out"), "--shapes", "opt175b.fc1.tp8,llama2-7b.down",
                       "--ns", "1,16,128", "--sparsities", "0.5,0.9", "--reps", "5"]) == 0
    written = sorted((tmp_path / "out").glob("format-model-*.json"))
    assert len(written) == 1
    model = read_model(written[0])
    cached = load_model(gpu=model.gpu)  # installed in the cache under this GPU's name
    assert cached == model and set(model.formats) == {"dense", "tiled_csl", "bitmap", "split24"}
    assert all(e < 0.5 for e in model.fit["rms_relative_error"].values())
    for fmt in model.formats:  # sane predictions: positive, growing with the weight
        assert 0 < model.time_us(fmt, 4096, 4096, 16, 0.7) < model.time_us(fmt, 16384, 16384, 16, 0.7)


# --- the calibration run's report ------------------------------------------------------------

def test_calibration_summary_averages_over_its_own_shapes(h100_benchmark):
    from sparsellm.bench import spmm

    shapes, caption = spmm.summary_shapes(h100_benchmark["records"])
    assert shapes == {"opt66b.qkv", "opt175b.fc1.tp8", "llama2-7b.down"} and caption.startswith("Shapes of this run")
    row = next(line for line in spmm.summary_markdown(h100_benchmark).splitlines()
               if line.startswith("| bitmap | float16 | 50% |"))
    expected = geomean(r["speedup_vs_cublas"] for r in h100_benchmark["records"]
                       if r["impl"] == "bitmap" and r["sparsity"] == 0.5 and r["N"] in (8, 16, 32))
    assert row.split("|")[4].strip() == f"{expected:.2f}"
    assert "| N=8,16,32 |" in spmm.summary_markdown(h100_benchmark)
    only16 = dict(h100_benchmark, records=[r for r in h100_benchmark["records"] if r["N"] != 8 and r["N"] != 32])
    assert "| N=16 |" in spmm.summary_markdown(only16)  # the column names the widths it averages
    anchors = [dict(h100_benchmark["records"][0], shape=s) for s in spmm.ANCHOR_SHAPES + ["llama2-7b.down"]]
    shapes, caption = spmm.summary_shapes(anchors)
    assert shapes == set(spmm.ANCHOR_SHAPES) and caption.startswith("Anchor shapes")
