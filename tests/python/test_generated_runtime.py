"""Generated checkpoints on the GPU: the runtime draws every weight at load.

An element's value depends on (seed, tensor, position) only, not on the format that
stores it, so a model generated with its pruned weights as bitmap or Tiled-CSL and the
same model with them dense (zeros kept) hold the same weights: their logits must agree
(within the fp16 bound of the OPT runtime tests: 1e-2 of the largest |logit|), and so must
the first greedy token wherever the choice is decisive. Another seed gives another model.
The sparse models hold fewer weight bytes, as the formats' size formulas say.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sparsellm  # noqa: E402
from sparsellm.convert import read_config, write_generated  # noqa: E402

from gpu_reference import make_prompts  # noqa: E402

gpu = pytest.mark.gpu
TOLERANCE = 1e-2
SPARSITY = 0.8


def opt_config(tmp: Path) -> Path:
    """A small OPT whose decoder linears span several 128 x 64 tiles, with odd edges."""
    path = tmp / "opt-config.json"
    config = transformers.OPTConfig(vocab_size=1000, hidden_size=320, num_hidden_layers=3, ffn_dim=1300,
                                    num_attention_heads=5, max_position_embeddings=256, word_embed_proj_dim=320)
    path.write_text(config.to_json_string())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    config = opt_config(root)
    made = {}
    for name, fmt, seed in (("bitmap", "bitmap", 5), ("tiled_csl", "tiled_csl", 5), ("split24", "split24", 5),
                            ("dense", "dense", 5), ("reseeded", "bitmap", 6)):
        write_generated(config, root / name, sparsity=SPARSITY, format=fmt, seed=seed)
        made[name] = root / name
    return made


def pruned_formats(ckpt: Path) -> set:
    return {t["format"] for t in read_config(ckpt)["tensors"].values() if t["pruned"]}


@gpu
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "split24"])
def test_sparse_and_dense_forms_are_the_same_model(models, fmt):
    assert pruned_formats(models[fmt]) == {fmt} and pruned_formats(models["dense"]) == {"dense"}
    prompts = make_prompts(1000, [5, 17, 40, 2])
    with sparsellm.LLM(models[fmt], max_batch=4, max_seq_len=96) as a, \
            sparsellm.LLM(models["dense"], max_batch=4, max_seq_len=96) as b:
        la, lb = a.prompt_logits(prompts), b.prompt_logits(prompts)
        assert np.isfinite(la).all() and np.isfinite(lb).all()
        assert la.std() > 0.01, "the logits are flat: the weights were not drawn"
        for i in range(len(prompts)):
            scale = np.abs(lb[i]).max()
            assert np.abs(la[i] - lb[i]).max() <= TOLERANCE * scale, f"prompt {i}"
        ga = a.generate(prompts, max_new_tokens=16, stop_at_eos=False)
        gb = b.generate(prompts, max_new_tokens=16, stop_at_eos=False)
        for i, (x, y) in enumerate(zip(ga, gb)):  # the first token, wherever the choice is decisive
            assert len(x.token_ids) == len(y.token_ids) == 16 and all(0 <= t < 1000 for t in x.token_ids)
            top2 = np.sort(lb[i])[-2:]
            if top2[1] - top2[0] > 2 * TOLERANCE * np.abs(lb[i]).max():
                assert x.token_ids[0] == y.token_ids[0], f"prompt {i}"
        assert 0 < a.weight_bytes < b.weight_bytes


@gpu
def test_another_seed_is_another_model(models):
    prompts = make_prompts(1000, [9])
    with sparsellm.LLM(models["bitmap"], max_batch=1, max_seq_len=32) as a:
        la = a.prompt_logits(prompts)
    with sparsellm.LLM(models["reseeded"], max_batch=1, max_seq_len=32) as b:
        lb = b.prompt_logits(prompts)
    assert np.abs(la - lb).max() > 10 * TOLERANCE * np.abs(la).max()


@gpu
def test_loading_twice_draws_the_same_weights(models):
    prompts = make_prompts(1000, [12, 3])
    logits = []
    for _ in range(2):
        with sparsellm.LLM(models["bitmap"], max_batch=2, max_seq_len=32) as llm:
            logits.append(llm.prompt_logits(prompts))
    np.testing.assert_array_equal(logits[0], logits[1])
