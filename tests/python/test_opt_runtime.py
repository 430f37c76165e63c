"""The OPT runtime (``sparsellm.LLM``) against Hugging Face ``OPTForCausalLM`` in float32.

Each model is a random Hugging Face OPT, saved, converted with ``sparsellm.convert``
(dense, or pruned to 50 % / 80 % and stored as Tiled-CSL), and the reference is the
Hugging Face model loaded from ``dense_weights(checkpoint)`` in float32, so both run
exactly the stored (pruned, rounded) weights. Embeddings and LM head get std 0.1 (the
other weights 0.02), which makes the logits spread out (std ≈ 3) and most greedy steps
decisive.

Bounds, relative to the largest |logit| of the row, from HF run in fp16 / bf16 on the
CPU against fp32 on these models (max 0.0019 / 0.016): fp16 1e-2, bf16 4e-2.

Greedy decoding is checked by teacher forcing: Hugging Face runs each prompt followed
by our generated tokens; at every step our token's HF logit must be within the bound
of HF's best (a near tie), and wherever HF's top-2 gap exceeds the bound our token
must be HF's argmax. A share of steps must be decisive, or the test proves nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import OPTConfig, OPTForCausalLM  # noqa: E402

import sparsellm  # noqa: E402
from sparsellm.convert import convert  # noqa: E402

from gpu_reference import (  # noqa: E402
    check_greedy, check_prompt_logits, check_whole_and_chunked_prefill, make_prompts, model_store, random_model,
    reference_logits, reference_model)

gpu = pytest.mark.gpu

# --- models -------------------------------------------------------------------------------

CONFIGS = {
    # opt-125m shape (fewer layers)
    "opt125m": dict(vocab_size=50272, hidden_size=768, num_hidden_layers=6, ffn_dim=3072, num_attention_heads=12,
                    max_position_embeddings=2048, word_embed_proj_dim=768),
    # opt-350m shape: post-LayerNorm, project_in / project_out, no final norm (fewer layers)
    "opt350m": dict(vocab_size=50272, hidden_size=1024, num_hidden_layers=4, ffn_dim=4096, num_attention_heads=16,
                    max_position_embeddings=2048, word_embed_proj_dim=512, do_layer_norm_before=False),
    # odd sizes, GELU, untied LM head, room for contexts longer than one attention split
    "odd": dict(vocab_size=1000, hidden_size=200, num_hidden_layers=3, ffn_dim=700, num_attention_heads=5,
                max_position_embeddings=1024, word_embed_proj_dim=200, activation_function="gelu",
                tie_word_embeddings=False),
    # no biases, LayerNorms without parameters, pre-LN without the final norm
    "variants": dict(vocab_size=500, hidden_size=128, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                     max_position_embeddings=256, word_embed_proj_dim=128, enable_bias=False,
                     layer_norm_elementwise_affine=False, _remove_final_layer_norm=True),
}
TOLERANCE = {"fp16": 1e-2, "bf16": 4e-2}
MAX_SEQ = 96
NEW_TOKENS = 32
PROMPT_LENGTHS = [1, 7, 23, 40, 3, 16, 31, 11]  # batch 8, all different, + NEW_TOKENS <= MAX_SEQ
HF_CLASSES = {"opt": (OPTConfig, OPTForCausalLM)}  # the reference models' classes, by model_type


def random_opt(name: str, seed: int = 0) -> OPTForCausalLM:
    return random_model(OPTForCausalLM, OPTConfig(**CONFIGS[name]), seed)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Hugging Face models and their conversions, made once per module on first use."""
    return model_store(tmp_path_factory.mktemp("opt_runtime"),
                       lambda name, path: random_opt(name).save_pretrained(path),
                       lambda name, sparsity: "dense" if sparsity == 0 else "tiled_csl")


# --- GPU: against Hugging Face ------------------------------------------------------------

CASES = [(name, dtype, sparsity)
         for name in ("opt125m", "opt350m", "odd")
         for dtype, sparsities in (("fp16", (0.0, 0.5, 0.8)), ("bf16", (0.0, 0.8)))
         for sparsity in sparsities] + [("variants", "fp16", 0.0), ("variants", "bf16", 0.5)]


@gpu
@pytest.mark.parametrize("name,dtype,sparsity", CASES, ids=[f"{n}-{d}-s{int(s * 100)}" for n, d, s in CASES])
def test_matches_hugging_face(store, name, dtype, sparsity):
    ckpt = store.checkpoint(name, dtype, sparsity)
    ref = reference_model(ckpt, HF_CLASSES)
    tol = TOLERANCE[dtype]
    vocab = CONFIGS[name]["vocab_size"]
    prompts = make_prompts(vocab, PROMPT_LENGTHS)
    with sparsellm.LLM(ckpt, max_batch=8, max_seq_len=MAX_SEQ) as llm:
        assert llm.info["dtype"] == ("float16" if dtype == "fp16" else "bfloat16")

        # Prefill logits of each prompt's last token.
        ours = llm.prompt_logits(prompts)
        assert ours.shape == (len(prompts), vocab)
        check_prompt_logits(ours, ref, prompts, tol)

        # Greedy decoding at batch 1 and batch 8 (prompts of different lengths).
        decisive = steps = 0
        for batch in (1, 8):
            d, n = check_greedy(llm, ref, prompts[:batch], NEW_TOKENS, tol, f"batch {batch}")
            decisive, steps = decisive + d, steps + n
            stats = llm.last_stats
            assert stats["decode_steps"] == NEW_TOKENS - 1
            assert stats["generated_tokens"] == batch * NEW_TOKENS
            assert stats["prefill_ms"] > 0 and stats["decode_ms_per_step"] > 0 and stats["tokens_per_s"] > 0
        assert decisive >= 0.2 * steps, f"only {decisive} of {steps} steps were decisive: the check is too weak"


@gpu
def test_long_context_and_chunked_prefill(store):
    """Contexts longer than one attention split (256 keys), and a prefill cut into chunks of
    37 tokens, so that prompts straddle chunk boundaries."""
    ckpt = store.checkpoint("odd", "fp16", 0.5)
    ref = reference_model(ckpt, HF_CLASSES)
    prompts = make_prompts(1000, [700, 3, 301, 64], seed=9)
    check_whole_and_chunked_prefill(ckpt, ref, prompts, TOLERANCE["fp16"], NEW_TOKENS, chunk=37)


@gpu
def test_graphs_replay_like_eager_steps(store):
    """CUDA-graph replay, eager steps and repeated calls (graph reuse, other batch sizes) give
    the same tokens: every kernel is deterministic."""
    ckpt = store.checkpoint("opt125m", "fp16", 0.8)
    prompts = make_prompts(50272, PROMPT_LENGTHS, seed=3)
    with sparsellm.LLM(ckpt, max_batch=8, max_seq_len=MAX_SEQ, cuda_graphs=True) as graphs, \
         sparsellm.LLM(ckpt, max_batch=8, max_seq_len=MAX_SEQ, cuda_graphs=False) as eager:
        want = [g.token_ids for g in eager.generate(prompts, max_new_tokens=20, stop_at_eos=False)]
        for call in range(3):  # the first call runs one step eagerly and captures, later calls replay
            got = [g.token_ids for g in graphs.generate(prompts, max_new_tokens=20, stop_at_eos=False)]
            assert got == want
            assert graphs.last_stats["graph_steps"] == (18 if call == 0 else 19), graphs.last_stats
        assert eager.last_stats["graph_steps"] == 0
        small = [g.token_ids for g in graphs.generate(prompts[:3], max_new_tokens=20, stop_at_eos=False)]
        assert small == [g.token_ids for g in eager.generate(prompts[:3], max_new_tokens=20, stop_at_eos=False)]
        again = [g.token_ids for g in graphs.generate(prompts, max_new_tokens=20, stop_at_eos=False)]
        assert again == want


@gpu
def test_sampling_is_seeded_and_respects_top_k(store):
    ckpt = store.checkpoint("odd", "fp16", 0.0)
    ref = reference_model(ckpt, HF_CLASSES)
    prompts = make_prompts(1000, [5, 9, 2, 14], seed=4)
    with sparsellm.LLM(ckpt, max_batch=4, max_seq_len=MAX_SEQ) as llm:
        run = lambda seed, **kw: [g.token_ids for g in llm.generate(  # noqa: E731
            prompts, max_new_tokens=24, temperature=1.0, seed=seed, stop_at_eos=False, **kw)]
        a, b, c = run(7), run(7), run(8)
        assert a == b, "same seed, different tokens"
        assert a != c, "different seeds, same tokens"
        # top_k = 1 is greedy whatever the temperature.
        greedy = [g.token_ids for g in llm.generate(prompts, max_new_tokens=24, stop_at_eos=False)]
        assert run(3, top_k=1) == greedy
        # top_k = 5: every sampled token is among HF's 5 best (up to the logit bound).
        sampled = run(11, top_k=5, top_p=0.9)
        for i, tokens in enumerate(sampled):
            logits = reference_logits(ref, prompts[i], tokens)
            for step, token in enumerate(tokens):
                row = logits[step]
                fifth = np.sort(row)[-5]
                assert row[token] >= fifth - TOLERANCE["fp16"] * np.abs(row).max(), (i, step, token)
        # A tiny top_p keeps only the most likely token: greedy again.
        assert run(5, top_p=1e-6) == greedy


@gpu
def test_stops_at_eos(store, tmp_path):
    """A copy of a checkpoint whose eos_token_id is a token the model generates."""
    src = store.checkpoint("odd", "fp16", 0.0)
    prompts = make_prompts(1000, [6, 12, 3], seed=6)
    with sparsellm.LLM(src, max_batch=4, max_seq_len=MAX_SEQ) as llm:
        free = [g.token_ids for g in llm.generate(prompts, max_new_tokens=NEW_TOKENS, stop_at_eos=False)]
    eos = free[0][4]
    ckpt = tmp_path / "eos"
    shutil.copytree(src, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_config"]["eos_token_id"] = eos
    (ckpt / "config.json").write_text(json.dumps(config))
    with sparsellm.LLM(ckpt, max_batch=4, max_seq_len=MAX_SEQ) as llm:
        out = llm.generate(prompts, max_new_tokens=NEW_TOKENS)
        for tokens, g in zip(free, out):
            if eos in tokens:
                cut = tokens.index(eos) + 1
                assert g.token_ids == tokens[:cut] and g.finish_reason == "eos"
            else:
                assert g.token_ids == tokens and g.finish_reason == "length"
        assert out[0].finish_reason == "eos" and len(out[0].token_ids) <= 5
        # Without stopping, the full length again.
        again = llm.generate(prompts, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        assert [g.token_ids for g in again] == free


@gpu
def test_memory_figures(store):
    dense = store.checkpoint("opt125m", "fp16", 0.0)
    sparse = store.checkpoint("opt125m", "fp16", 0.8)
    with sparsellm.LLM(dense, max_batch=2, max_seq_len=64) as a, sparsellm.LLM(sparse, max_batch=2, max_seq_len=64) as b:
        assert 0 < b.weight_bytes < a.weight_bytes
        a.generate([[1, 2, 3]], max_new_tokens=4)
        assert a.last_stats["peak_mem_bytes"] >= a.last_stats["weight_bytes"] > 0


@gpu
def test_bad_requests_leave_the_llm_usable(store):
    ckpt = store.checkpoint("odd", "fp16", 0.0)
    good = make_prompts(1000, [4, 6])
    with sparsellm.LLM(ckpt, max_batch=2, max_seq_len=64) as llm:
        want = [g.token_ids for g in llm.generate(good, max_new_tokens=8, stop_at_eos=False)]
        bad = [
            (dict(prompts=[list(range(60))], max_new_tokens=8), "max_seq_len"),      # 60 + 8 > 64
            (dict(prompts=[[1]] * 3, max_new_tokens=8), "max_batch"),
            (dict(prompts=[[1, 1000]], max_new_tokens=8), "vocabulary"),
            (dict(prompts=[[1, -1]], max_new_tokens=8), "vocabulary"),
            (dict(prompts=[[1, 2**40]], max_new_tokens=8), "vocabulary"),
            (dict(prompts=[[1], []], max_new_tokens=8), "empty"),
            (dict(prompts=[], max_new_tokens=8), "prompts"),
            (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens"),
            (dict(prompts=[[1]], max_new_tokens=8, temperature=-1.0), "temperature"),
            (dict(prompts=[[1]], max_new_tokens=8, top_p=0.0), "top_p"),
            (dict(prompts=[[1]], max_new_tokens=8, top_k=-2), "top_k"),
            (dict(prompts="text", max_new_tokens=8), "tokenizer"),
        ]
        for kwargs, match in bad:
            with pytest.raises(sparsellm.InvalidArgument, match=match):
                llm.generate(**kwargs)
            got = [g.token_ids for g in llm.generate(good, max_new_tokens=8, stop_at_eos=False)]
            assert got == want, f"after the rejected request {kwargs}"
    with pytest.raises(sparsellm.InvalidArgument, match="closed"):
        llm.generate(good)


def copy_checkpoint(src: Path, dst: Path, change=None) -> Path:
    shutil.copytree(src, dst)
    if change is not None:
        config = json.loads((dst / "config.json").read_text())
        change(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bad_checkpoints_are_rejected_before_the_gpu(store, tmp_path):
    """Checkpoint and option errors come from the native loader before it touches the GPU,
    so they are the same with and without one."""
    src = store.checkpoint("variants", "fp16", 0.0)

    missing = copy_checkpoint(src, tmp_path / "missing")
    (missing / "rank0-of-1.safetensors").unlink()
    with pytest.raises(sparsellm.FormatError, match="rank0-of-1"):
        sparsellm.LLM(missing)

    truncated = copy_checkpoint(src, tmp_path / "truncated")
    shard = truncated / "rank0-of-1.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    with pytest.raises(sparsellm.FormatError, match="rank0-of-1"):
        sparsellm.LLM(truncated)

    unknown = copy_checkpoint(src, tmp_path / "unknown", lambda c: c.update(architecture="gpt2"))
    with pytest.raises(sparsellm.FormatError, match="architecture"):
        sparsellm.LLM(unknown)

    cases = [
        ("gelu_new", lambda c: c["model_config"].update(activation_function="gelu_new"), "gelu_new"),
        ("model_type", lambda c: c["model_config"].update(model_type="llama"), "model_type"),
        ("heads", lambda c: c["model_config"].update(num_attention_heads=3), "multiple of num_attention_heads"),
        ("head_dim", lambda c: c["model_config"].update(num_attention_heads=32), "head dimension 4"),
        ("no_vocab", lambda c: c["model_config"].pop("vocab_size"), "vocab_size"),
    ]
    for name, change, match in cases:
        with pytest.raises(sparsellm.Error, match=match):
            sparsellm.LLM(copy_checkpoint(src, tmp_path / name, change))

    with pytest.raises(sparsellm.InvalidArgument, match="max_seq_len"):
        sparsellm.LLM(src, max_seq_len=4096)  # more than max_position_embeddings (256)
    with pytest.raises(sparsellm.InvalidArgument, match="max_batch"):
        sparsellm.LLM(src, max_batch=0)
    with pytest.raises(sparsellm.InvalidArgument, match="max_batch"):
        sparsellm.LLM(src, max_batch=5000)

    # Another architecture: a tiny Llama, converted.
    llama_dir = tmp_path / "hf-llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(llama_dir)
    convert(llama_dir, tmp_path / "llama", sparsity=0.0, format="dense", progress=False)
    yarn = copy_checkpoint(tmp_path / "llama", tmp_path / "llama-yarn", lambda c: c["model_config"].update(
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}))
    with pytest.raises(sparsellm.InvalidArgument, match="rope_type 'yarn'"):
        sparsellm.LLM(yarn)

    # Split for tensor parallelism.
    convert(store.hf_dir("variants"), tmp_path / "tp2", sparsity=0.0, format="dense", tp=2, progress=False)
    with pytest.raises(sparsellm.InvalidArgument, match="tp = 2"):
        sparsellm.LLM(tmp_path / "tp2")


@gpu
def test_inconsistent_checkpoint_then_still_usable(store, tmp_path):
    src = store.checkpoint("odd", "fp16", 0.0)
    # model_config disagrees with the stored shapes: found while uploading, named.
    inconsistent = copy_checkpoint(src, tmp_path / "inconsistent", lambda c: c["model_config"].update(ffn_dim=701))
    with pytest.raises(sparsellm.FormatError, match="layers.0.fc1.weight"):
        sparsellm.LLM(inconsistent)
    with sparsellm.LLM(src, max_batch=1, max_seq_len=32) as llm:
        assert len(llm.generate([[1, 2]], max_new_tokens=4)[0].token_ids) >= 1


@gpu
def test_text_prompts_with_a_tokenizer(store, tmp_path):
    """A checkpoint converted from a directory with a tokenizer takes and returns text."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tmp_path / "hf"
    shutil.copytree(store.hf_dir("odd"), hf)
    write_word_tokenizer(hf, tokenizers, vocab_size=1000)
    ckpt = tmp_path / "ckpt"
    convert(hf, ckpt, sparsity=0.0, format="dense", progress=False)
    with sparsellm.LLM(ckpt, max_batch=2, max_seq_len=64) as llm:
        assert llm.tokenizer is not None
        out = llm.generate(["w1 w2 w3", "w7"], max_new_tokens=5, stop_at_eos=False)
        assert [len(g.token_ids) for g in out] == [5, 5]
        assert all(isinstance(g.text, str) for g in out)
        assert out[0].prompt_ids == llm.tokenizer("w1 w2 w3")["input_ids"]


def write_word_tokenizer(directory: Path, tokenizers, vocab_size: int) -> None:
    """A word-level tokenizer over "w0" … "w{n-1}" (ids = indices), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


# --- CPU ----------------------------------------------------------------------------------

def test_llm_is_exported_lazily():
    import subprocess
    import sys

    code = ("import sys, sparsellm; assert 'sparsellm.llm' not in sys.modules; "
            "from sparsellm import LLM, Generation; assert 'torch' not in sys.modules; print(LLM.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LLM"


def test_no_gpu_is_a_device_error(store):
    from sparsellm._native import native

    if native().device_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(sparsellm.DeviceError):
        sparsellm.LLM(store.checkpoint("variants", "fp16", 0.0))


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        sparsellm.LLM(tmp_path / "nowhere")


def test_tokenizer_is_loaded_from_the_checkpoint(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from sparsellm.llm import _load_tokenizer

    assert _load_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 2, "architecture": "opt"}))
    write_word_tokenizer(tmp_path, tokenizers, vocab_size=50)
    tok = _load_tokenizer(tmp_path)
    assert tok is not None and tok("w3 w4")["input_ids"] == [3, 4]
