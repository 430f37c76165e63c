"""Shared helpers of the GPU tests: random pruned weights and error measures, and the
comparison of the runtime with Hugging Face transformers (random models and their
conversions, reference models on the stored weights, prompt logits, greedy decoding)."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import torch

# ‖y − ref‖ / ‖ref‖ bounds against an fp32 reference on the same (rounded) inputs.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def pruned_weight(m, k, sparsity, dtype, gen, device="cuda"):
    """Trained-scale random weight with an unstructured mask; never all zeros
    unless sparsity is 1."""
    w = torch.randn(m, k, generator=gen, device=device) * 0.05
    keep = torch.rand(m, k, generator=gen, device=device) >= sparsity
    return (w * keep).to(dtype)


def rel_error(y, ref) -> float:
    """‖y − ref‖ / ‖ref‖ in float64 (‖y‖ where ``ref`` is all zeros)."""
    y, ref = y.double(), ref.double()
    den = ref.norm().item()
    return (y - ref).norm().item() / den if den > 0 else y.norm().item()


def fp32_reference(x, w, bias=None):
    """``x @ w.T + bias`` in float32."""
    y = x.float() @ w.float().t()
    return y + bias.float() if bias is not None else y


# --- Decoding against Hugging Face: token-level comparison with a near-tie rule ---

def make_prompts(vocab: int, lengths, seed: int = 5) -> list[list[int]]:
    """Random token ids in [0, vocab), one prompt of each length in ``lengths``."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in lengths]


def reference_logits(model, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """HF logits [len(tokens) + 1, vocab] after the prompt and after each of ``tokens``."""
    ids = torch.tensor([prompt + tokens], dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits[0].double().numpy()
    return logits[len(prompt) - 1:]


def check_teacher_forced(logits: np.ndarray, tokens, tol, where) -> tuple[int, int]:
    """Every token is HF's greedy choice or a near tie (``logits``: HF's rows before each
    token); returns (decisive steps, steps)."""
    decisive = 0
    for step, token in enumerate(tokens):
        row = logits[step]
        bound = tol * np.abs(row).max()
        top2 = np.sort(row)[-2:]
        best = int(np.argmax(row))
        assert row[token] >= top2[1] - bound, (
            f"{where}, step {step}: our token {token} has HF logit {row[token]:.4f}; HF's greedy token {best} "
            f"has {top2[1]:.4f}, a gap of {top2[1] - row[token]:.4f} > bound {bound:.4f}")
        if top2[1] - top2[0] > bound:
            decisive += 1
            assert token == best, f"{where}, step {step}: decisive step (gap {top2[1] - top2[0]:.4f}) but ours differs"
    return decisive, len(tokens)


def check_prompt_logits(ours: np.ndarray, model, prompts, tol, where: str = "prompt") -> None:
    """Our logits after each prompt's last token (``ours``: a row per prompt) are finite and
    within ``tol`` x the row's largest |logit| of Hugging Face's."""
    for i, prompt in enumerate(prompts):
        want = reference_logits(model, prompt, [])[0]
        err = np.abs(ours[i] - want).max()
        assert np.isfinite(ours[i]).all(), f"{where} {i}: logits not finite"
        assert err <= tol * np.abs(want).max(), (
            f"{where} {i} (length {len(prompt)}): max |logit error| {err:.4f} > {tol} x {np.abs(want).max():.3f}")


def check_greedy(llm, model, prompts, new_tokens: int, tol, where: str) -> tuple[int, int]:
    """``llm.generate`` of ``prompts`` in one batch (greedy, ``new_tokens`` each, past EOS) against
    Hugging Face by teacher forcing (check_teacher_forced); returns (decisive steps, steps)."""
    out = llm.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)
    assert len(out) == len(prompts)
    vocab = model.config.vocab_size
    decisive = steps = 0
    for i, g in enumerate(out):
        assert g.prompt_ids == prompts[i]
        assert len(g.token_ids) == new_tokens and g.finish_reason == "length"
        assert all(0 <= t < vocab for t in g.token_ids)
        d, n = check_teacher_forced(reference_logits(model, prompts[i], g.token_ids), g.token_ids, tol,
                                    f"{where}, sequence {i}")
        decisive, steps = decisive + d, steps + n
    return decisive, steps


def check_whole_and_chunked_prefill(ckpt: Path, model, prompts, tol, new_tokens: int, chunk: int = 37) -> None:
    """``sparsellm.LLM`` (each prompt prefilled at once) and the native runtime with the prefill cut
    into chunks of ``chunk`` tokens (CUDA graphs on), both with max_seq_len 1024, against Hugging Face:
    prompt logits within ``tol`` and ``new_tokens`` greedy tokens each by teacher forcing."""
    import sparsellm
    from sparsellm._native import native

    whole = sparsellm.LLM(ckpt, max_batch=len(prompts), max_seq_len=1024)
    chunked = native().Runtime(str(ckpt), max_batch=len(prompts), max_seq_len=1024, use_cuda_graphs=True,
                               max_prefill_tokens=chunk)
    try:
        a = whole.prompt_logits(prompts)
        b = chunked.prompt_logits(prompts)
        check_prompt_logits(a, model, prompts, tol, "whole prefill, prompt")
        check_prompt_logits(b, model, prompts, tol, "chunked prefill, prompt")
        out = whole.generate(prompts, max_new_tokens=new_tokens, stop_at_eos=False)
        out_chunked = chunked.generate(prompts, new_tokens, 0.0, 0, 1.0, 0, False)
        for i, g in enumerate(out):
            for name, tokens in (("long context", g.token_ids), ("chunked prefill", out_chunked["tokens"][i])):
                check_teacher_forced(reference_logits(model, prompts[i], tokens), tokens, tol, f"{name}, sequence {i}")
    finally:
        whole.close()
        chunked.close()


def check_against_hf_greedy(model, prompt: list[int], got: list[int], want: list[int], tol, where: str) -> None:
    """Our greedy tokens ``got`` after ``prompt`` equal Hugging Face's greedy tokens ``want``, or
    first differ where HF's top two logits are a near tie (within ``tol`` x the row's largest
    |logit|) and pass the teacher-forced check at every step."""
    if got == want:
        return
    first = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
    logits = reference_logits(model, prompt, got)
    row = logits[first]
    top2 = np.sort(row)[-2:]
    assert top2[1] - top2[0] <= tol * np.abs(row).max(), (
        f"{where}: differs from HF greedy at step {first} (ours {got[first]}, HF {want[first]}), "
        "which is not a near tie")
    check_teacher_forced(logits, got, tol, where)


# --- Hugging Face models: random weights, conversions, references on the stored weights ---

def random_model(model_cls, config, seed: int = 0):
    """``model_cls(config)`` in eval mode with every parameter drawn from ``seed``: token embeddings
    and LM head std 0.1 (the logits spread out, few near ties), the other weights 0.02, and the
    norm gains (1-D ``*norm*.weight``) 1 + 0.02·N(0, 1)."""
    model = model_cls(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, parameter in model.named_parameters():
            std = 0.1 if ("embed_tokens" in pname or "lm_head" in pname) else 0.02
            values = torch.randn(parameter.shape, generator=generator) * std
            if parameter.dim() == 1 and "norm" in pname and pname.endswith("weight"):
                values += 1.0
            parameter.copy_(values)
    return model


def model_store(root: Path, save_hf, format_for):
    """Hugging Face directories and their conversions under ``root``, each made once, on first use.
    ``save_hf(name, path)`` writes the Hugging Face model ``name`` to ``path``; ``format_for(name,
    sparsity)`` is the format asked of the converter. Returns an object with ``root``,
    ``hf_dir(name)`` and ``checkpoint(name, dtype="fp16", sparsity=0.0, method="magnitude")``
    (calibrated methods on 16 sequences of 128 tokens)."""
    from sparsellm.convert import convert

    made: dict = {}

    def hf_dir(name: str) -> Path:
        if name not in made:
            path = root / f"hf-{name}"
            save_hf(name, path)
            made[name] = path
        return made[name]

    def checkpoint(name: str, dtype: str = "fp16", sparsity: float = 0.0, method: str = "magnitude") -> Path:
        key = (name, dtype, sparsity, method)
        if key not in made:
            out = root / f"{name}-{dtype}-{int(sparsity * 100)}-{method}"
            extra = dict(nsamples=16, seqlen=128) if method != "magnitude" else {}
            convert(hf_dir(name), out, sparsity=sparsity, method=method, dtype=dtype,
                    format=format_for(name, sparsity), progress=False, **extra)
            made[key] = out
        return made[key]

    return types.SimpleNamespace(root=root, hf_dir=hf_dir, checkpoint=checkpoint)


def reference_model(ckpt: Path, classes: dict, weights: dict | None = None):
    """The checkpoint's Hugging Face model in float32 holding exactly the stored (pruned, rounded)
    weights. ``classes``: model_type -> (config class, model class); ``weights``: {name: array} as
    ``dense_weights`` gives them (float16, or bfloat16 bits), by default rank 0's. Every tensor must
    load, and only a tied LM head may be missing."""
    from sparsellm.convert import dense_weights, read_config

    config = read_config(ckpt)
    config_cls, model_cls = classes[config["model_config"]["model_type"]]
    model = model_cls(config_cls.from_dict(config["model_config"])).float().eval()
    state = {}
    for name, array in (dense_weights(ckpt) if weights is None else weights).items():
        if config["dtype"] == "bfloat16":
            values = (array.astype(np.uint32) << 16).view(np.float32)
        else:
            values = array.astype(np.float32)
        state[name] = torch.from_numpy(np.ascontiguousarray(values))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if "lm_head.weight" in missing:  # tied: the head is the token embedding
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return model
