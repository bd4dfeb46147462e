"""``SamplingConfig``: what to sample (a static argument of the jitted sampler)."""
from __future__ import annotations

import dataclasses

import numpy as np

from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.validation import FieldError, is_int, is_real

__all__ = ["SamplingConfig", "resolve_stop"]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """What to sample. Frozen and hashable: it is a static argument of the jitted sampler.

    Attributes:
      max_new_tokens: N, completion slots per row (>= 1).
      temperature: >= 0; 0 = greedy (argmax; top_k and top_p are then ignored).
      top_p: nucleus mass in (0, 1]; 1 = off.
      top_k: keep the k most likely tokens; 0 = off.
      num_samples: G completions per prompt (rows are group-major).
      stop_token_ids: a row ends after emitting one of these (the stop token is part of the completion).
        ``None`` = the default set (``config.eos_token_ids``, plus, in ``generate``, the tokenizer's EOS
        and known end-of-turn tokens); ``()`` = never stop (every row runs ``max_new_tokens``).
      cache_dtype: KV-cache dtype name; ``None`` = the model's compute dtype (bfloat16 on accelerators).
      max_prompt_length: longest accepted prompt; ``None`` = ``max_position_embeddings - max_new_tokens``.
      nucleus_cap: candidates examined by top-p before falling back to the exact threshold search.
      pad_token_id: fills the slots after a row's stop token; ``None`` = the tokenizer's pad id (in
        ``generate``), else 0. Masks never depend on it.
      adapter_decoding: ``"merged"`` (fold low-rank adapters into the kernels once per call, in
        ``merge_dtype``: plain matmuls, the authors' vLLM rollouts) or ``"factored"`` (``x K + c (x A) B``
        in every step through ``linear.dense``, the trainer's numerics; no weight is copied).
      merge_dtype: dtype of the merged kernels (``adapter_decoding="merged"``); ``None`` = each base
        kernel's dtype. ``"float32"`` keeps a tiny update of bf16 weights when the compute dtype is fp32.
      decode_window: the first attention window of the decode loop, in completion slots (>= 1). Decoding
        runs in segments whose windows double from it up to ``max_new_tokens``; each step's attention
        reads only its segment's window of the completion cache. Speed and compile count only: the tokens
        do not depend on it.
      compact_rows: at each segment boundary, move the prompt groups whose G rows have all stopped out of
        the batch (live groups first, the batch cut to the smallest of B, B/2, B/4, B/8, B/16 groups that
        holds them), so finished rows stop costing work. Speed only; ``generate`` turns it off for a
        multi-device mesh (it would move rows across devices).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    stop_token_ids: tuple[int, ...] | None = None
    cache_dtype: str | None = None
    max_prompt_length: int | None = None
    nucleus_cap: int = 256
    pad_token_id: int | None = None
    adapter_decoding: str = "merged"
    merge_dtype: str | None = None
    decode_window: int = 32
    compact_rows: bool = True

    def __post_init__(self):
        def need(ok: bool, field: str, message: str):
            if not ok:
                raise FieldError(field, f"{field} {message}, got {getattr(self, field)!r}")

        def dtype_ok(field: str):
            if getattr(self, field) is not None:
                try:
                    as_dtype(getattr(self, field))
                except ValueError as e:
                    raise FieldError(field, f"{field} is invalid: {e}") from None

        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "must be an int >= 1")
        need(is_real(self.temperature) and self.temperature >= 0, "temperature",
             "must be a finite number >= 0 (0 = greedy)")
        need(is_real(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1] (1 = off)")
        need(is_int(self.top_k) and self.top_k >= 0, "top_k", "must be an int >= 0 (0 = off)")
        need(is_int(self.num_samples) and self.num_samples >= 1, "num_samples", "must be an int >= 1")
        need(is_int(self.nucleus_cap) and self.nucleus_cap >= 1, "nucleus_cap", "must be an int >= 1")
        need(self.max_prompt_length is None or (is_int(self.max_prompt_length) and self.max_prompt_length >= 1),
             "max_prompt_length", "must be None or an int >= 1")
        need(self.pad_token_id is None or (is_int(self.pad_token_id) and self.pad_token_id >= 0), "pad_token_id",
             "must be None or a token id >= 0")
        dtype_ok("cache_dtype")
        dtype_ok("merge_dtype")
        need(is_int(self.decode_window) and self.decode_window >= 1, "decode_window", "must be an int >= 1")
        need(isinstance(self.compact_rows, (bool, np.bool_)), "compact_rows", "must be true or false")
        need(self.adapter_decoding in ("merged", "factored"), "adapter_decoding", "must be 'merged' or 'factored'")
        if self.stop_token_ids is not None:
            raw = self.stop_token_ids
            ids = (int(raw),) if isinstance(raw, (int, np.integer)) else tuple(int(t) for t in raw)
            if any(t < 0 for t in ids):
                raise FieldError("stop_token_ids", f"stop_token_ids must be non-negative token ids, got {ids}")
            object.__setattr__(self, "stop_token_ids", ids)
        for name in ("temperature", "top_p"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "compact_rows", bool(self.compact_rows))
        for name in ("max_new_tokens", "top_k", "num_samples", "nucleus_cap", "decode_window"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def scoring_temperature(self) -> float:
        """The T of the distribution the sampler reports logprobs for, ``log_softmax(logits / T)``: the
        sampling temperature, and 1 for greedy decoding (T = 0 reports the temperature-1 log-softmax of the
        argmax; see the package docstring). A trainer that scores its samples "at the sampling temperature"
        (verl, TRL >= 0.16; the run config's ``grpo.logprob_temperature: sampling``) uses this number."""
        return self.temperature if self.temperature > 0 else 1.0

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0



def resolve_stop(cfg: ModelConfig, sampling: SamplingConfig) -> tuple[int, ...]:
    """The stop ids a sampling run uses: ``sampling.stop_token_ids``, or ``cfg.eos_token_ids`` when None."""
    return tuple(cfg.eos_token_ids) if sampling.stop_token_ids is None else sampling.stop_token_ids
