"""Shared helpers of the GPU tests: random pruned weights and error measures."""
from __future__ import annotations

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
    y, ref = y.double(), ref.double()
    den = ref.norm().item()
    return (y - ref).norm().item() / den if den > 0 else y.norm().item()


def fp32_reference(x, w, bias=None):
    y = x.float() @ w.float().t()
    return y + bias.float() if bias is not None else y


# --- Decoding against Hugging Face: token-level comparison with a near-tie rule ---

def make_prompts(vocab: int, lengths, seed: int = 5) -> list[list[int]]:
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
