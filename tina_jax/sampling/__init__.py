"""Batched sampling with a KV cache: prefill each prompt once, then decode with the model's own cached forward.

    out = generate(model, prompts, SamplingConfig(max_new_tokens=256, num_samples=8), rng)
    out.texts            # list[str], B*G completions (group-major: prompt 0's G samples first)
    batch = out.batch()  # prompt_ids/prompt_mask/completion_ids/completion_mask/sampler_logprobs for grpo_step

Lower level (pure, jit-able; arrays in, arrays out)::

    tokens, logprobs, lengths = sample_tokens(config, params, prompt_ids, prompt_mask, rng, sampling)

Modules: ``config`` (``SamplingConfig``), ``tokens`` (token choice: ``choose_tokens``), ``decode``
(``sample_tokens``), this one (the host side: prompts -> padded batch -> ``Generation``).

How it runs
-----------
There is one model implementation: prefill and every decode step are ``decoder.forward_cached``, which
runs the training block (``decoder._block``, every projection through ``linear.dense``) under a
``lax.scan`` over the stacked layer weights, and ``decoder.attention``, the one attention function (rows
over a prefix shared by each group of rows plus their own keys) that the training forward uses too. One
KV-cache layout (``decoder.init_cache``: keys ``[L, rows, Hkv, hd, S]``, values ``[L, rows, Hkv, S, hd]``)
serves the prefill and the decode loop; no weight is copied or re-laid out per call (the scan takes one
layer's weights at a time: XLA on CPU copies that layer's slice each step, GPU/TPU backends can read it in
place). q/k/v and gate/up run as separate matmuls, as in training.

1. **Prefill** the B distinct left-padded prompts once; logits only at the last prompt position, repeated
   to the prompt's G rows. The prompt cache is the decode loop's *shared prefix*: attention reads it once
   per prompt for its G sample rows (a grouped einsum), never copied G times.
2. **Decode** in segments, each a ``lax.while_loop`` of steps: a step feeds the last token of every row,
   writes its keys/values into the rows' completion cache at slot ``step - 1`` (loop-carried, updated in
   place), attends to [shared prompt cache | own completion cache], and picks the next token. Segment
   windows double (``decode_window``, 2x, 4x, ... up to ``max_new_tokens``) and a step reads only its
   segment's window of the completion cache, so attention work follows the filled part of the cache, not
   its allocated size. Decoding stops when every row has emitted a stop token or ``max_new_tokens``.
3. **Compaction** (``compact_rows``, with stop tokens): at each segment boundary the prompt groups whose G
   rows have all stopped move behind the live ones (a permutation of the loop state) and the next segment
   runs on the smallest batch of B, B/2, ..., B/16 groups that holds the live ones (``lax.switch`` over
   those static sizes), so a long tail of a few long rows stops paying matmul work for the finished ones.
   Row r draws its random numbers by its index in the full batch (``choose_tokens(rows=...)``), so
   windows and compaction never change which tokens are sampled. The outputs are put back in order.
4. **Adapters**: ``adapter_decoding="merged"`` folds the containers into plain kernels once per call
   (``merge_dtype``; only the adapted kernels are copied), ``"factored"`` keeps them: every adapted
   projection computes ``x K + c (x A) B`` inside the step through ``linear.dense``, exactly as the
   trainer's forward, so a tiny update is not rounded away by merging it into bf16 weights.
5. **Token choice** (``tokens.choose_tokens``): greedy, temperature, top-k and exact top-p; step t draws with
   ``fold_in(rng, t)``.

Prompt buckets
--------------
The padded prompt length P is the next power of two >= max(16, longest prompt in the batch), capped at the
prompt limit (``max_prompt_length``, default ``max_position_embeddings - max_new_tokens``). A run with a
fixed batch shape and sampling config therefore compiles at most ``log2(limit / 16) + 2`` decode programs
(e.g. 7 for prompts up to 1024 tokens; in practice 1-3, since prompt lengths of one dataset cluster).

Logprobs
--------
``logprobs[r, t]`` is the log-probability of ``tokens[r, t]`` under the distribution it was drawn from:
``log_softmax(logits / T)`` for plain sampling; after top-k/top-p truncation and renormalisation otherwise
(the order of transformers' warpers: temperature, top-k, then top-p on the top-k-renormalised
distribution). Greedy (T = 0) reports ``log_softmax(logits)`` of the argmax (the temperature-1
distribution). After a row's stop token: token = pad id, logprob = 0.

Masks come from lengths, never from token ids (SmolLM2's pad id equals its EOS id, which occurs inside
every chat prompt).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tina_jax.models.config import ModelConfig
from tina_jax.sampling.config import SamplingConfig
from tina_jax.sampling.decode import merge_adapters, sample_tokens
from tina_jax.sampling.tokens import choose_tokens

__all__ = [
    "SamplingConfig",
    "Generation",
    "generate",
    "sample_tokens",
    "choose_tokens",
    "merge_adapters",
    "encode_prompts",
    "pad_prompts",
    "prompt_bucket",
    "default_stop_token_ids",
]

MIN_BUCKET = 16
# End-of-turn / end-of-text tokens of the supported chat families, added to the default stop set
# when the tokenizer knows them.
_EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>")


@dataclasses.dataclass(frozen=True)
class Generation:
    """The result of ``generate``. Rows r = prompt * G + sample (group-major).

    tokens        int32[B*G, N]  completion ids; the stop token included; pad id after it
    logprobs      f32[B*G, N]    sampler logprobs of ``tokens`` (see the module docstring); 0 after the end
    lengths       int32[B*G]     completion tokens including the stop token
    truncated     bool[B*G]      reached max_new_tokens without a stop token
    texts         list[str]      decoded completions without the stop token (skip_special_tokens=True)
    prompt_ids    int32[B, P]    the left-padded prompt batch the sampler saw (P = the bucket)
    prompt_mask   int32[B, P]    1 = real prompt token (from lengths)
    prompt_lengths int32[B]
    num_samples   G
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    texts: list
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    prompt_lengths: jax.Array
    num_samples: int

    @property
    def completion_mask(self) -> jax.Array:
        """int32[B*G, N]: 1 for completion tokens up to and including the stop token."""
        n = self.tokens.shape[1]
        return (jnp.arange(n)[None, :] < self.lengths[:, None]).astype(jnp.int32)

    @property
    def prompt_index(self) -> jax.Array:
        """int32[B*G]: the prompt each row answers."""
        return jnp.arange(self.tokens.shape[0], dtype=jnp.int32) // self.num_samples

    def batch(self) -> dict[str, jax.Array]:
        """The row arrays ``grpo_step`` takes (prompts repeated for each of their G rows)."""
        g = self.num_samples
        return {
            "prompt_ids": jnp.repeat(self.prompt_ids, g, axis=0),
            "prompt_mask": jnp.repeat(self.prompt_mask, g, axis=0),
            "completion_ids": self.tokens,
            "completion_mask": self.completion_mask,
            "sampler_logprobs": self.logprobs,
        }

    def sequences(self) -> tuple[jax.Array, jax.Array]:
        """(input_ids, attention_mask) int32[B*G, P + N]: prompt then completion, for teacher forcing.

        ``forward(config, params, ids, mask)[:, P - 1 + t]`` scores ``tokens[:, t]``.
        """
        b = self.batch()
        ids = jnp.concatenate([b["prompt_ids"], b["completion_ids"]], axis=1)
        mask = jnp.concatenate([b["prompt_mask"], b["completion_mask"]], axis=1)
        return ids, mask


# ----------------------------------------------------------------------------------------------
# Host side: prompts -> padded batch -> sample -> Generation
# ----------------------------------------------------------------------------------------------
def prompt_bucket(length: int, limit: int | None = None) -> int:
    """The padded prompt length for a batch whose longest prompt has ``length`` tokens:
    the next power of two >= max(16, length), capped at ``limit``."""
    bucket = max(MIN_BUCKET, 1 << max(0, int(length) - 1).bit_length())
    return min(bucket, limit) if limit is not None else bucket


def _is_messages(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and all(
        isinstance(m, Mapping) for m in x)


def _is_ids(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 1 and (x.size == 0 or np.issubdtype(x.dtype, np.integer))
    return isinstance(x, Sequence) and not isinstance(x, str) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x)


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Token ids of each prompt.

    ``prompts`` is a non-empty list of one kind:
      - chat conversations (lists of ``{"role", "content"}`` dicts): rendered with the tokenizer's chat
        template and ``add_generation_prompt=True`` (``tina_jax.data.prompts.render_prompts``);
      - strings: encoded as-is with ``tokenizer(text, add_special_tokens=False)`` (so a string that is
        an already-rendered chat prompt is not given a second BOS);
      - token id lists (or 1-D integer arrays): used as given.
    """
    if isinstance(prompts, (str, Mapping)) or not isinstance(prompts, (Sequence, np.ndarray)):
        raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}; wrap one prompt "
                         "in a list")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    for i, x in enumerate(prompts):
        if isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, str) and len(x) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token or message")
    if all(isinstance(x, str) for x in prompts):
        if tokenizer is None:
            raise ValueError("string prompts need a tokenizer; the model has none (pass token id lists)")
        ids = [list(map(int, tokenizer(x, add_special_tokens=False)["input_ids"])) for x in prompts]
    elif all(_is_messages(x) for x in prompts):
        if tokenizer is None:
            raise ValueError("chat prompts need a tokenizer; the model has none (pass token id lists)")
        from tina_jax.data.prompts import render_prompts

        ids, _ = render_prompts(tokenizer, prompts)
    elif all(_is_ids(x) for x in prompts):
        ids = [[int(t) for t in x] for x in prompts]
    else:
        kinds = sorted({"str" if isinstance(x, str) else "messages" if _is_messages(x) else
                        "token ids" if _is_ids(x) else type(x).__name__ for x in prompts})
        raise ValueError(f"prompts must all be chat message lists, all strings or all token id lists; got a mix "
                         f"or an unsupported kind: {kinds}")
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"prompt {i} encodes to no tokens: every prompt needs at least one token")
    return ids


def pad_prompts(ids: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to ``length``: (int32[B, length] ids, int32[B, length] mask from the lengths)."""
    batch = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, x in enumerate(ids):
        if len(x):
            batch[i, length - len(x):] = x
            mask[i, length - len(x):] = 1
    return batch, mask


def default_stop_token_ids(config: ModelConfig, tokenizer=None) -> tuple[int, ...]:
    """``config.eos_token_ids`` plus the tokenizer's EOS and known end-of-turn tokens, sorted."""
    ids = set(int(t) for t in config.eos_token_ids)
    if tokenizer is not None:
        if getattr(tokenizer, "eos_token_id", None) is not None:
            ids.add(int(tokenizer.eos_token_id))
        for t in _EOT_TOKENS:  # present iff the id maps back to the token (unknown tokens map to unk)
            i = tokenizer.convert_tokens_to_ids(t) if hasattr(tokenizer, "convert_tokens_to_ids") else None
            if isinstance(i, int) and tokenizer.convert_ids_to_tokens(i) == t:
                ids.add(i)
    return tuple(sorted(t for t in ids if 0 <= t < config.vocab_size))


def _as_key(rng) -> jax.Array:
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def generate(model, prompts: Sequence, sampling: SamplingConfig, rng, params: Any = None,
             mesh: jax.sharding.Mesh | None = None) -> Generation:
    """Sample ``sampling.num_samples`` completions for each prompt.

    Args:
      model: what ``load_model`` returns (``.config``, ``.params``, ``.tokenizer``).
      prompts: a list of chat conversations, strings or token id lists (see ``encode_prompts``).
      sampling: a SamplingConfig.
      rng: a PRNG key (or an int seed). The same key gives the same tokens; fold the training step into
        it (``jax.random.fold_in(key, step)``) so every rollout sees fresh noise.
      params: replaces ``model.params`` (adapted or merged parameters; any pytree the decoder accepts).
      mesh: the device mesh of sharded ``params``: the prompt rows are split over its batch axes (when they
        divide) and the outputs come back to every process (``tina_jax.distributed``); in a multi-process
        run every process passes the same prompts and gets the whole Generation.

    Returns:
      a Generation (rows group-major: prompt 0's G samples, then prompt 1's, ...).
    """
    if not isinstance(sampling, SamplingConfig):
        raise ValueError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    cfg, tok = model.config, model.tokenizer
    params = model.params if params is None else params
    ids = encode_prompts(tok, prompts)
    limit = sampling.max_prompt_length
    if limit is None:
        limit = cfg.max_position_embeddings - sampling.max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens={sampling.max_new_tokens} leaves no room for a prompt within "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
    for i, x in enumerate(ids):
        if len(x) > limit:
            raise ValueError(f"prompt {i} has {len(x)} tokens, more than the limit of {limit} "
                             f"(max_prompt_length, default max_position_embeddings - max_new_tokens); "
                             "shorten it or raise SamplingConfig.max_prompt_length")
        bad = [t for t in x if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} contains token ids outside [0, {cfg.vocab_size}): {bad[:5]}")
    stop = sampling.stop_token_ids
    if stop is None:
        stop = default_stop_token_ids(cfg, tok)
    pad = sampling.pad_token_id
    if pad is None:
        pad = getattr(tok, "pad_token_id", None)
        pad = 0 if pad is None else int(pad)
    s = sampling.replace(stop_token_ids=stop, pad_token_id=pad)
    if mesh is not None and mesh.size > 1:  # compaction would move rows across devices
        s = s.replace(compact_rows=False)
    p = prompt_bucket(max(map(len, ids)), limit)
    batch, mask = pad_prompts(ids, p, pad)
    if mesh is None:
        tokens, logprobs, lengths = sample_tokens(cfg, params, jnp.asarray(batch), jnp.asarray(mask), _as_key(rng), s)
    else:
        from tina_jax import distributed, sharding as shd

        rows_sh = (shd.batch_sharding(mesh) if len(batch) % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0
                   else shd.replicated(mesh))
        key = jax.random.wrap_key_data(distributed.place(jax.random.key_data(_as_key(rng)), shd.replicated(mesh)))
        out = sample_tokens(cfg, params, distributed.place(batch, rows_sh), distributed.place(mask, rows_sh), key, s)
        tokens, logprobs, lengths = (jnp.asarray(distributed.to_host(x)) for x in out)

    host_tok, host_len = np.asarray(tokens), np.asarray(lengths)
    last = host_tok[np.arange(len(host_len)), host_len - 1]
    stopped = np.isin(last, np.asarray(stop, np.int64)) if stop else np.zeros(len(host_len), bool)
    texts = []
    if tok is not None:
        rows = [host_tok[i, :host_len[i] - int(stopped[i])].tolist() for i in range(len(host_len))]
        texts = list(tok.batch_decode(rows, skip_special_tokens=True))
    return Generation(
        tokens=tokens, logprobs=logprobs, lengths=lengths, truncated=jnp.asarray(~stopped),
        texts=texts, prompt_ids=jnp.asarray(batch), prompt_mask=jnp.asarray(mask),
        prompt_lengths=jnp.asarray([len(x) for x in ids], jnp.int32), num_samples=s.num_samples,
    )
