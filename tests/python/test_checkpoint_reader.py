"""The C++ checkpoint reader (``_C.inspect_checkpoint``, cpp/src/runtime/checkpoint.cpp).

Tiny random checkpoints are written by the Python converter; the C++ reader must agree
with config.json and with the Python reader (``load_checkpoint``) on every tensor and
component, and must refuse each corruption — one at a time — with a FormatError whose
message names the file and, where there is one, the tensor. CPU only.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")
transformers = pytest.importorskip("transformers")

from sparsellm._native import native  # noqa: E402
from sparsellm.convert import convert_random, load_checkpoint, read_config  # noqa: E402

try:
    _C = native()
except ImportError:  # NativeLibraryError: no compiled library in this environment
    pytest.skip("needs the compiled library sparsellm._C", allow_module_level=True)

FC1 = "model.decoder.layers.0.fc1.weight"
FC2 = "model.decoder.layers.1.fc2.weight"
NORM = "model.decoder.final_layer_norm"


def tiny_opt(tmp: Path, hidden=80, ffn=200) -> Path:
    """config.json of a tiny OPT with awkward sizes (tiles cut at 128 × 64)."""
    path = tmp / "opt-config.json"
    config = transformers.OPTConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, ffn_dim=ffn,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=hidden)
    path.write_text(config.to_json_string())
    return path


def tiny_llama(tmp: Path) -> Path:
    path = tmp / "llama-config.json"
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    path.write_text(config.to_json_string())
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    opt, llama = tiny_opt(root), tiny_llama(root)
    made = {
        "opt-tp2-csl60": convert_random(opt, root / "opt-tp2-csl60", sparsity=0.6, tp=2, format="tiled_csl",
                                        seed=1, progress=False),
        "opt-tp1-auto90": convert_random(opt, root / "opt-tp1-auto90", sparsity=0.9, tp=1, seed=2, progress=False),
        "opt-tp1-dense50": convert_random(opt, root / "opt-tp1-dense50", sparsity=0.5, tp=1, format="dense",
                                          seed=3, progress=False),
        "llama-tp2-bf16": convert_random(llama, root / "llama-tp2-bf16", sparsity=0.7, tp=2, dtype="bf16",
                                         format="tiled_csl", seed=4, progress=False),
        "opt-tp2-bitmap50": convert_random(opt, root / "opt-tp2-bitmap50", sparsity=0.5, tp=2, format="bitmap",
                                           seed=5, progress=False),
    }
    return {name: root / name for name in made}


@pytest.fixture
def ckpt(checkpoints, tmp_path):
    """A private copy of the tp = 2, 60 % Tiled-CSL OPT checkpoint, to corrupt."""
    out = tmp_path / "ckpt"
    shutil.copytree(checkpoints["opt-tp2-csl60"], out)
    return out


# --- agreement ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["opt-tp2-csl60", "opt-tp1-auto90", "opt-tp1-dense50", "llama-tp2-bf16",
                                  "opt-tp2-bitmap50"])
def test_agrees_with_config_and_python_reader(checkpoints, name):
    directory = checkpoints[name]
    config = read_config(directory)
    for rank in range(config["tp"]):
        info = _C.inspect_checkpoint(str(directory), rank, verify_sha256=True)
        assert (info["architecture"], info["dtype"], info["tp"], info["rank"]) == (
            config["architecture"], config["dtype"], config["tp"], rank)
        assert info["rank_file"].endswith(f"rank{rank}-of-{config['tp']}.safetensors")
        _, arrays = load_checkpoint(directory, rank)
        held = [t for t, entry in config["tensors"].items() if str(rank) in entry["shards"]]
        assert list(info["tensors"]) == held  # storage order
        for tensor, got in info["tensors"].items():
            entry = config["tensors"][tensor]
            shard = entry["shards"][str(rank)]
            assert got["format"] == entry["format"]
            assert list(got["shape"]) == entry["shape"]
            assert got["split"] == entry["split"]
            assert got["nnz"] == shard["nnz"]
            assert got["sparsity"] == pytest.approx(shard["sparsity"])
            assert set(got["components"]) == set(shard["components"])
            for key, (dtype, shape, nbytes) in got["components"].items():
                assert (dtype, list(shape)) == (shard["components"][key]["dtype"], shard["components"][key]["shape"])
                assert nbytes == arrays[key].nbytes
        assert sum(len(t["components"]) for t in info["tensors"].values()) == len(arrays)


def test_formats_chosen_by_the_converter_are_reported(checkpoints):
    auto = _C.inspect_checkpoint(str(checkpoints["opt-tp1-auto90"]))["tensors"]
    dense = _C.inspect_checkpoint(str(checkpoints["opt-tp1-dense50"]))["tensors"]
    chosen = read_config(checkpoints["opt-tp1-auto90"])["tensors"][FC1]["format"]  # by the speed model
    assert auto[FC1]["format"] == chosen and auto[FC1]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert dense[FC1]["format"] == "dense" and dense[FC1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert auto[f"{NORM}.weight"]["format"] == "dense"
    # Row-parallel biases live on rank 0 only.
    directory = str(checkpoints["opt-tp2-csl60"])
    assert "model.decoder.layers.0.fc2.bias" in _C.inspect_checkpoint(directory, 0)["tensors"]
    assert "model.decoder.layers.0.fc2.bias" not in _C.inspect_checkpoint(directory, 1)["tensors"]


# --- corruption helpers --------------------------------------------------------------------

def edit_config(directory: Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def read_header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def edit_header(path: Path, change) -> None:
    """Rewrite the header in place (same length, so the file keeps its size)."""
    n, header = read_header(path)
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n, "no room for the edited header"
    data = bytearray(path.read_bytes())
    data[8:8 + n] = text + b" " * (n - len(text))
    path.write_bytes(bytes(data))


def patch_array(path: Path, key: str, dtype, change) -> None:
    """Change one stored array in place through ``change(array)``."""
    n, header = read_header(path)
    begin, end = header[key]["data_offsets"]
    data = bytearray(path.read_bytes())
    array = np.frombuffer(bytes(data[8 + n + begin:8 + n + end]), dtype=dtype).copy()
    change(array)
    data[8 + n + begin:8 + n + end] = array.tobytes()
    path.write_bytes(bytes(data))


def rewrite_rank_file(directory: Path, rank: int, change) -> None:
    """Rewrite a rank file with safetensors through ``change(arrays)``; record its new size and hash."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    name = f"rank{rank}-of-2.safetensors"
    with safe_open(str(directory / name), "numpy") as f:
        arrays = {key: f.get_tensor(key) for key in f.keys()}
    change(arrays)
    save_file(arrays, str(directory / name))
    data = (directory / name).read_bytes()
    edit_config(directory, lambda c: c["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


def rank_path(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank}-of-2.safetensors"


def expect_error(directory: Path, rank: int, pattern: str, verify: bool = False) -> None:
    with pytest.raises(_C.FormatError, match=pattern) as caught:
        _C.inspect_checkpoint(str(directory), rank, verify)
    assert isinstance(caught.value, ValueError)


R0, R1 = r"rank0-of-2\.safetensors", r"rank1-of-2\.safetensors"


def esc(name: str) -> str:
    return re.escape(name)


# --- config.json ---------------------------------------------------------------------------

def test_missing_directory_and_config(ckpt):
    expect_error(ckpt / "nowhere", 0, "checkpoint directory not found")
    (ckpt / "config.json").unlink()
    expect_error(ckpt, 0, r"config\.json not found: .* not a complete sparsellm checkpoint")


@pytest.mark.parametrize("change,pattern", [
    (lambda c: c.update(format_version=1), r"config\.json: unsupported format_version 1"),
    (lambda c: c.pop("format_version"), r"config\.json: unsupported format_version \(missing\)"),
    (lambda c: c.update(architecture="gpt2"), r"config\.json: unknown architecture 'gpt2'"),
    (lambda c: c.update(dtype="float32"), r"config\.json: unknown dtype 'float32'"),
    (lambda c: c.update(tp=0), r"config\.json: bad tp 0"),
    (lambda c: c.update(tp=3), r"config\.json: 'files' lists 2 files"),
    (lambda c: c.pop("tensors"), r"config\.json: field 'tensors' missing"),
    (lambda c: c["tensors"][FC1].update(format="csr"), rf"config\.json: tensor {esc(FC1)}: unknown format 'csr'"),
    (lambda c: c["tensors"][FC1].pop("split"), rf"config\.json: tensor {esc(FC1)}: malformed entry"),
    (lambda c: c["tensors"][FC1].update(shape=[100]), rf"config\.json: tensor {esc(FC1)}: bad shape \[100\]"),
    (lambda c: c["tensors"][FC1]["shards"].pop("1"),
     rf"config\.json: tensor {esc(FC1)}: shards for ranks \[0\], expected ranks 0\.\.1"),
    (lambda c: c["tensors"][FC1]["shards"]["0"]["components"][f"{FC1}.words"].update(dtype="uint16"),
     rf"config\.json: tensor {esc(FC1)}: rank 0: component {esc(FC1)}\.words .*expected dtype uint32"),
    (lambda c: c["tensors"][FC1]["shards"]["0"]["components"][f"{FC1}.tile_offsets"].update(shape=[7]),
     rf"config\.json: tensor {esc(FC1)}: rank 0: .*expected dtype uint32 and shape \[3\]"),
    (lambda c: c["tensors"][f"{NORM}.weight"]["shards"]["0"]["components"][f"{NORM}.weight"].update(
        dtype="bfloat16"), rf"config\.json: tensor {esc(NORM)}\.weight: rank 0: .*expected dtype float16"),
    (lambda c: c["tensors"][FC1]["shards"]["0"].update(nnz=1.5), rf"tensor {esc(FC1)}: rank 0: nnz is not an integer"),
])
def test_bad_config(ckpt, change, pattern):
    edit_config(ckpt, change)
    expect_error(ckpt, 0, pattern)


def test_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    expect_error(ckpt, 0, r"config\.json: not valid JSON")


def test_rank_outside_tp(ckpt):
    expect_error(ckpt, 2, r"config\.json: rank 2 requested, but the checkpoint has tp = 2")
    expect_error(ckpt, -1, r"rank -1 requested")


# --- the rank file -------------------------------------------------------------------------

def test_missing_rank_file(ckpt):
    rank_path(ckpt, 1).unlink()
    expect_error(ckpt, 1, rf"checkpoint file missing: .*{R1}")
    _C.inspect_checkpoint(str(ckpt), 0)  # the other rank is fine


def test_truncated_or_grown_rank_file(ckpt):
    path = rank_path(ckpt, 1)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    expect_error(ckpt, 1, rf"{R1}: {len(data) - 10} bytes, but config\.json records {len(data)} \(truncated")
    path.write_bytes(data + b"\0" * 8)
    expect_error(ckpt, 1, rf"{R1}: {len(data) + 8} bytes, but config\.json records {len(data)}")
    path.write_bytes(data)
    edit_config(ckpt, lambda c: c["files"]["rank1-of-2.safetensors"].update(bytes=len(data) + 1))
    expect_error(ckpt, 1, rf"{R1}: {len(data)} bytes, but config\.json records {len(data) + 1}")


def test_truncated_file_recorded_as_such(ckpt):
    """A truncated file whose size config.json agrees with: caught by the byte ranges."""
    path = rank_path(ckpt, 0)
    data = path.read_bytes()[:-100]
    path.write_bytes(data)
    edit_config(ckpt, lambda c: c["files"]["rank0-of-2.safetensors"].update(bytes=len(data)))
    expect_error(ckpt, 0, rf"{R0}: tensor .*: data_offsets \[\d+, \d+\] out of range of the data region")
    path.write_bytes(data[:5])
    edit_config(ckpt, lambda c: c["files"]["rank0-of-2.safetensors"].update(bytes=5))
    expect_error(ckpt, 0, rf"{R0}: 5 bytes, too short")


def test_header_length_beyond_file(ckpt):
    path = rank_path(ckpt, 0)
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data))
    path.write_bytes(bytes(data))
    expect_error(ckpt, 0, rf"{R0}: header length {len(data)} reaches beyond the end of the file")
    data[:8] = struct.pack("<Q", 2**64 - 1)
    path.write_bytes(bytes(data))
    expect_error(ckpt, 0, rf"{R0}: header length \d+ reaches beyond")


def test_header_not_json(ckpt):
    path = rank_path(ckpt, 0)
    data = bytearray(path.read_bytes())
    data[8] = ord("X")
    path.write_bytes(bytes(data))
    expect_error(ckpt, 0, rf"{R0}: header is not valid JSON")


def test_header_metadata_of_another_rank(ckpt):
    edit_header(rank_path(ckpt, 1), lambda h: h["__metadata__"].update(rank="0"))
    expect_error(ckpt, 1, rf"{R1}: header metadata says rank \"0\", expected 1")


def test_header_entries(ckpt):
    path = rank_path(ckpt, 0)
    original = path.read_bytes()
    _, header = read_header(path)
    weight, bias = header[f"{NORM}.weight"], header[f"{NORM}.bias"]
    begin, end = weight["data_offsets"]
    data_size = len(original) - 8 - read_header(path)[0]
    cases = [
        (lambda h: h[f"{NORM}.weight"].update(dtype="F8_E4M3"),
         rf"{R0}: tensor {esc(NORM)}\.weight: unsupported dtype 'F8_E4M3'"),
        (lambda h: h[f"{NORM}.weight"].update(data_offsets=[data_size, data_size + end - begin]),
         rf"{R0}: tensor {esc(NORM)}\.weight: data_offsets \[{data_size}, \d+\] out of range"),
        (lambda h: h[f"{NORM}.weight"].update(data_offsets=[end, begin]),
         rf"{R0}: tensor {esc(NORM)}\.weight: data_offsets \[{end}, {begin}\] out of range"),
        (lambda h: h[f"{NORM}.weight"].update(data_offsets=[begin, begin + 2]),
         rf"{R0}: tensor {esc(NORM)}\.weight: shape \[80\] of F16 needs 160 bytes, data_offsets give 2"),
        (lambda h: h[f"{NORM}.bias"].update(data_offsets=weight["data_offsets"]),
         rf"{R0}: tensors {esc(NORM)}\.(weight|bias) and {esc(NORM)}\.(weight|bias) overlap"),
        (lambda h: h[f"{NORM}.bias"].update(data_offsets=[bias["data_offsets"][0] - 2, bias["data_offsets"][1] - 2]),
         rf"{R0}: tensors .* and {esc(NORM)}\.bias overlap"),
        (lambda h: h[f"{NORM}.weight"].update(shape=[81]), rf"{R0}: tensor {esc(NORM)}\.weight: shape \[81\]"),
        (lambda h: h[f"{NORM}.weight"].pop("data_offsets"), rf"{R0}: tensor {esc(NORM)}\.weight: malformed header"),
    ]
    for change, pattern in cases:
        path.write_bytes(original)
        edit_header(path, change)
        expect_error(ckpt, 0, pattern)
    path.write_bytes(original)
    _C.inspect_checkpoint(str(ckpt), 0)


def test_component_missing_or_unlisted(ckpt):
    rewrite_rank_file(ckpt, 1, lambda a: a.pop(f"{FC2}.tile_offsets"))
    expect_error(ckpt, 1, rf"{R1}: tensor {esc(FC2)}: component {esc(FC2)}\.tile_offsets listed in config\.json "
                          "is missing from the file")
    rewrite_rank_file(ckpt, 0, lambda a: a.update(extra=np.zeros(4, np.float16)))
    expect_error(ckpt, 0, rf"{R0}: holds tensors config\.json does not list for rank 0: extra")


def test_component_dtype_or_shape_differs_from_config(ckpt):
    key = f"{NORM}.weight"
    rewrite_rank_file(ckpt, 0, lambda a: a.update({key: a[key][:10]}))
    expect_error(ckpt, 0, rf"{R0}: tensor {esc(key)}: component {esc(key)} is float16 \[10\], "
                          r"config\.json says float16 \[80\]")
    rewrite_rank_file(ckpt, 1, lambda a: a.update({key: a[key].astype(np.float32)}))
    expect_error(ckpt, 1, rf"{R1}: tensor {esc(key)}: component {esc(key)} is float32 \[80\], "
                          r"config\.json says float16 \[80\]")


# --- Tiled-CSL structure -----------------------------------------------------------------

def test_tiled_csl_offsets(ckpt):
    path = rank_path(ckpt, 0)
    original = path.read_bytes()
    key = f"{FC1}.tile_offsets"  # fc1 shard [100, 80]: 1 × 2 tiles, 3 offsets

    def not_monotone(offsets):
        offsets[1] = offsets[2] + 4

    def short_end(offsets):
        offsets[2] -= 4

    def nonzero_start(offsets):
        offsets[0] = 4

    for change, pattern in [
        (not_monotone, r"tile_offsets not monotone: tile_offsets\[2\] = \d+ < tile_offsets\[1\]"),
        (short_end, r"the last tile offset is \d+ but there are \d+ words"),
        (nonzero_start, r"tile_offsets\[0\] is 4, expected 0"),
    ]:
        path.write_bytes(original)
        patch_array(path, key, np.uint32, change)
        expect_error(ckpt, 0, rf"{R0}: tensor {esc(FC1)}: {pattern}")


def test_tiled_csl_words_and_nnz(ckpt):
    path = rank_path(ckpt, 0)
    original = path.read_bytes()

    def padding_with_value(words):
        # word 7: a data word of tile 0 (after its 4 header words), rewritten as padding holding a value
        words[7] = (np.uint32(16384 + 8) << np.uint32(16)) | np.uint32(7)

    patch_array(path, f"{FC1}.words", np.uint32, padding_with_value)
    expect_error(ckpt, 0, rf"{R0}: tensor {esc(FC1)}: invalid Tiled-CSL data: .*malformed or extra padding word")
    path.write_bytes(original)
    edit_config(ckpt, lambda c: c["tensors"][FC1]["shards"]["0"].update(nnz=c["tensors"][FC1]["shards"]["0"]["nnz"] + 1))
    expect_error(ckpt, 0, rf"{R0}: tensor {esc(FC1)}: stores \d+ nonzeros, config\.json says \d+")


def test_bitmap_structure(checkpoints, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints["opt-tp2-bitmap50"], directory)
    path = rank_path(directory, 0)
    original = path.read_bytes()
    assert _C.inspect_checkpoint(str(directory), 0)["tensors"][FC1]["format"] == "bitmap"

    def short_end(offsets):
        offsets[2] -= 4

    patch_array(path, f"{FC1}.tile_offsets", np.uint32, short_end)
    expect_error(directory, 0, rf"{R0}: tensor {esc(FC1)}: the last tile offset is \d+ but there are \d+ words")
    path.write_bytes(original)

    def flip_mask_bit(tiles):
        tiles[0] ^= np.uint32(1 << 5)  # first tile's first mask word: values no longer match the masks

    patch_array(path, f"{FC1}.tiles", np.uint32, flip_mask_bit)
    expect_error(directory, 0, rf"{R0}: tensor {esc(FC1)}: invalid bitmap data")
    path.write_bytes(original)
    edit_config(directory, lambda c: c["tensors"][FC1]["shards"]["0"].update(nnz=c["tensors"][FC1]["shards"]["0"]["nnz"] - 1))
    expect_error(directory, 0, rf"{R0}: tensor {esc(FC1)}: stores \d+ nonzeros, config\.json says \d+")


def test_sha256_only_with_verify(ckpt):
    path = rank_path(ckpt, 0)
    n, header = read_header(path)
    begin, end = header["model.decoder.embed_tokens.weight"]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[8 + n + (begin + end) // 2] ^= 0x01  # a dense value's low bit: structurally fine
    path.write_bytes(bytes(data))
    _C.inspect_checkpoint(str(ckpt), 0, False)
    expect_error(ckpt, 0, rf"{R0}: sha256 differs from config\.json", verify=True)
    _C.inspect_checkpoint(str(ckpt), 1, True)


# --- LinearLayer: the checks that come before any GPU work ---------------------------------

@pytest.mark.parametrize("weight,bias,pattern", [
    ("model.decoder.layers.0.fc9.weight", "", r"holds no tensor model\.decoder\.layers\.0\.fc9\.weight "
                                               r"\(config\.json does not list it\)"),
    (FC2, "model.decoder.layers.1.fc2.bias", r"holds no tensor .*fc2\.bias \(it is stored on other ranks only\)"),
    (f"{NORM}.weight", "", rf"tensor {esc(NORM)}\.weight has shape \[80\]: a linear weight must be"),
    (FC1, "model.decoder.layers.0.self_attn.q_proj.bias",
     r"bias .*q_proj\.bias \(dense, shape \[40\]\) does not fit weight .*expected a dense \[100\] vector"),
])
def test_linear_layer_rejects_bad_tensors(ckpt, weight, bias, pattern):
    with pytest.raises(_C.FormatError, match=rf"{R1}: .*{pattern}"):
        _C.LinearLayer(str(ckpt), 1, weight, bias)
