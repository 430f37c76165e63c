"""Text generation with a converted sparsellm checkpoint on one GPU.

    from sparsellm import LLM

    with LLM("opt-1.3b-s70", max_batch=8) as llm:
        out = llm.generate(["Hello, my name is"], max_new_tokens=32)
        print(out[0].text, llm.last_stats["decode_tokens_per_s"])

The model runs in the C++ runtime (``sparsellm._C.Runtime``, see
``cpp/include/sparsellm/llm.h``): weights uploaded once (dense or sparse per
tensor, as the checkpoint stores them), the KV cache and every workspace
allocated at construction, decode steps replayed from CUDA graphs. Prompts are
strings (tokenized with the checkpoint's tokenizer, when the conversion copied
one) or token ids. Each prompt's length plus ``max_new_tokens`` must fit
``max_seq_len``.

Tensor parallelism: a checkpoint converted with ``--tp N`` runs under ``mpirun -n N`` with the
same code (``tp=None`` detects the launch; see ``sparsellm.launch``). Every rank must make the
same calls with the same arguments; each returns the same results (print them on ``llm.rank == 0``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sparsellm.convert.checkpoint import read_config
from sparsellm.errors import InvalidArgument

# Files whose presence means the checkpoint carries a Hugging Face tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_INT32 = 1 << 31


@dataclass
class Generation:
    """One prompt's result: its ids, the generated ids (EOS included when it stopped there),
    their text (None without a tokenizer) and why it stopped ("eos" or "length")."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str


def _load_tokenizer(path: Path):
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as first:  # config.json is ours, not a transformers config: try the files alone
        try:
            if (path / "tokenizer.json").is_file():
                from transformers import PreTrainedTokenizerFast

                return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        except Exception:
            pass
        warnings.warn(f"{path}: the tokenizer files could not be loaded ({first}); "
                      "generate() takes and returns token ids only", stacklevel=3)
        return None


class LLM:
    """An OPT model loaded from a sparsellm checkpoint directory onto the current GPU.

    ``max_batch``: most prompts per ``generate`` call. ``max_seq_len``: most tokens per
    sequence, prompt included (default: min(max_position_embeddings, 2048)); the KV cache
    holds max_batch x max_seq_len tokens. ``cuda_graphs``: replay decode steps from CUDA
    graphs (captured once per batch size). ``tp``: tensor-parallel ranks (None: the mpirun world
    size, 1 outside mpirun; sparsellm.launch). Raises DeviceError without a GPU, FormatError
    for a bad checkpoint and InvalidArgument for an unsupported model or option
    (``sparsellm.launch.TensorParallelError``, on every rank, for a launch that does not fit the
    checkpoint).
    """

    def __init__(self, path: str | os.PathLike, *, max_batch: int = 8, max_seq_len: int | None = None,
                 cuda_graphs: bool = True, tp: int | None = None):
        from sparsellm._native import native

        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: no such file; expected a directory written by "
                                    "`sparsellm convert`")
        self.config: dict = read_config(self.path)  # FormatError for a malformed one
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgument(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 2):
            raise InvalidArgument(f"max_seq_len must be an integer >= 2 or None, got {max_seq_len!r}")
        # Tensor parallelism: checks on every rank, NCCL id from rank 0, device by local rank.
        from sparsellm.launch import setup_tensor_parallel

        self.tp = setup_tensor_parallel(self.path, tp)
        tp_args = {} if self.tp is None else dict(tp_rank=self.tp.rank, tp_world=self.tp.world,
                                                  nccl_id=self.tp.nccl_id, device=self.tp.device)
        # The native constructor checks the checkpoint, then the GPU (DeviceError without one).
        self._runtime = native().Runtime(str(self.path), max_batch=max_batch, max_seq_len=max_seq_len or 0,
                                         use_cuda_graphs=bool(cuda_graphs), **tp_args)
        self.info: dict = self._runtime.info
        self.max_batch: int = self.info["max_batch"]
        self.max_seq_len: int = self.info["max_seq_len"]
        self.tokenizer = _load_tokenizer(self.path)
        self.last_stats: dict[str, Any] = {}
        self._graph_warned = False

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Frees the model's GPU memory; the LLM cannot be used afterwards."""
        runtime, self._runtime = getattr(self, "_runtime", None), None
        if runtime is not None:
            runtime.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self):
        if self._runtime is None:
            raise InvalidArgument("this LLM has been closed")
        return self._runtime

    @property
    def rank(self) -> int:
        """This process's tensor-parallel rank (0 without tensor parallelism)."""
        return 0 if self.tp is None else self.tp.rank

    @property
    def weight_bytes(self) -> int:
        return self._live().weight_bytes

    @property
    def peak_mem_bytes(self) -> int:
        return self._live().peak_device_bytes

    # --- prompts --------------------------------------------------------------------

    def _ids(self, prompt: Any, index: int) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgument(f"prompt {index} is text, but {self.path} has no tokenizer; pass token ids")
            return [int(t) for t in self.tokenizer(prompt)["input_ids"]]
        if hasattr(prompt, "tolist"):  # numpy / torch
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple)):
            raise InvalidArgument(f"prompt {index}: expected a string or a list of token ids, got {type(prompt).__name__}")
        ids = []
        for j, t in enumerate(prompt):
            if isinstance(t, bool) or not isinstance(t, int) and not hasattr(t, "__index__"):
                raise InvalidArgument(f"prompt {index}, token {j}: expected an integer id, got {t!r}")
            t = int(t)
            if not -_INT32 <= t < _INT32:
                raise InvalidArgument(f"generate: prompt {index}, token {j}: id {t} is outside the vocabulary "
                                      f"[0, {self.info['vocab_size']})")
            ids.append(t)
        return ids

    def encode(self, prompts: str | Sequence[Any]) -> list[list[int]]:
        """Token ids of a str, a list of str, a list of int or a list of lists of int."""
        if isinstance(prompts, str):
            return [self._ids(prompts, 0)]
        if hasattr(prompts, "tolist") and not isinstance(prompts, (list, tuple)):
            prompts = prompts.tolist()
        if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
            raise InvalidArgument("prompts: expected a string, a list of strings, a list of token ids or a list of "
                                  "lists of token ids (not empty)")
        if all(isinstance(p, int) or hasattr(p, "__index__") and not isinstance(p, (str, list, tuple))
               for p in prompts):
            return [self._ids(list(prompts), 0)]
        return [self._ids(p, i) for i, p in enumerate(prompts)]

    # --- generation -----------------------------------------------------------------

    def generate(self, prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True) -> list[Generation]:
        """Continue each prompt by up to ``max_new_tokens`` tokens.

        ``temperature`` 0 is greedy; otherwise tokens are sampled from the softmax at that
        temperature, limited to the ``top_k`` most likely (0: no limit) and to the nucleus of
        mass ``top_p``. ``seed`` makes sampling reproducible (sequence i uses a stream derived
        from (seed, i)). A sequence stops at the model's EOS token when ``stop_at_eos``.
        Fills ``last_stats``.
        """
        runtime = self._live()
        ids = self.encode(prompts)
        for name, value in (("max_new_tokens", max_new_tokens), ("top_k", top_k), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"{name} must be an integer, got {value!r}")
        if not 0 <= seed < (1 << 64):
            raise InvalidArgument(f"seed must be in [0, 2**64), got {seed}")
        if not -_INT32 <= max_new_tokens < _INT32 or not -_INT32 <= top_k < _INT32:
            raise InvalidArgument("max_new_tokens and top_k must fit 32 bits")
        out = runtime.generate(ids, max_new_tokens, float(temperature), top_k, float(top_p), seed,
                               bool(stop_at_eos))
        if out["graph_error"] and not self._graph_warned:
            self._graph_warned = True
            warnings.warn(out["graph_error"], RuntimeWarning, stacklevel=2)
        results = []
        for prompt_ids, tokens, reason in zip(ids, out["tokens"], out["finish_reasons"]):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else None
            results.append(Generation(prompt_ids=prompt_ids, token_ids=list(tokens), text=text,
                                      finish_reason=reason))
        generated = sum(len(r.token_ids) for r in results)
        decode_tokens = sum(max(len(r.token_ids) - 1, 0) for r in results)
        prefill_ms, decode_ms, steps = out["prefill_ms"], out["decode_ms"], out["decode_steps"]
        total_s = (prefill_ms + decode_ms) / 1e3
        self.last_stats = {
            "batch": len(ids),
            "prompt_tokens": sum(len(p) for p in ids),
            "prefill_ms": prefill_ms,
            "decode_ms": decode_ms,
            "decode_ms_per_step": decode_ms / steps if steps else 0.0,
            "decode_steps": steps,
            "graph_steps": out["graph_steps"],  # decode steps replayed from a CUDA graph
            "generated_tokens": generated,
            "tokens_per_s": generated / total_s if total_s > 0 else 0.0,
            "decode_tokens_per_s": decode_tokens / (decode_ms / 1e3) if decode_ms > 0 else 0.0,
            "peak_mem_bytes": runtime.peak_device_bytes,
            "weight_bytes": runtime.weight_bytes,
        }
        return results

    def prompt_logits(self, prompts):
        """float32 numpy array [len(prompts), vocab]: the logits after each prompt's last token."""
        return self._live().prompt_logits(self.encode(prompts))

    def __repr__(self) -> str:
        state = "closed" if self._runtime is None else f"max_batch={self.max_batch}, max_seq_len={self.max_seq_len}"
        return f"LLM({str(self.path)!r}, {self.info.get('dtype')}, {state})"
