"""Batched sampling with a KV cache: prefill each prompt once, decode in one jitted ``lax.while_loop``.

    out = generate(model, prompts, SamplingConfig(max_new_tokens=256, num_samples=8), rng)
    out.texts            # list[str], B*G completions (group-major: prompt 0's G samples first)
    batch = out.batch()  # prompt_ids/prompt_mask/completion_ids/completion_mask/sampler_logprobs for grpo_step

Lower level (pure, jit-able; arrays in, arrays out)::

    tokens, logprobs, lengths = sample_tokens(config, params, prompt_ids, prompt_mask, rng, sampling)

How it runs
-----------
1. **Prefill** the B distinct left-padded prompts once (``decoder.forward_cached``); logits only at the
   last prompt position, repeated to the prompt's G rows. The prompt KV cache (per layer
   ``[B, Hkv, hd, P]`` keys, ``[B, Hkv, P, hd]`` values) is *shared* by the G sample rows: decode
   attention reads it once per prompt (a grouped einsum), so it is neither recomputed nor copied G times.
2. **Decode** in one ``lax.while_loop``: each step feeds the last sampled token of every row, writes its
   keys/values into the row's completion cache (per layer ``[R, Hkv, hd, N]`` / ``[R, Hkv, N, hd]``,
   R = B*G; loop-carried, so updated in place) at slot ``step``, attends to [shared prompt cache |
   own completion cache], computes the logits of that one position and picks the next token. The loop
   stops when every row has emitted a stop token or ``max_new_tokens`` is reached. Loop state: step,
   tokens, logprobs, done, lengths and the completion cache. The layer loop inside a step is unrolled
   over per-layer weights sliced once before the loop (a temporary copy of the layer weights, with q/k/v
   and gate/up fused into wider matmuls), so no step copies a stacked weight or cache slice. Adapter
   containers are merged once before the loop (``adapter_decoding="merged"``), or kept factored
   (``"factored"``): every adapted projection computes ``x K + c (x A) B`` inside the step, exactly as the
   trainer's forward does, so a tiny update is not rounded away by merging it into bf16 weights.
3. **Token choice** (``choose_tokens``): greedy = argmax; plain temperature sampling draws from the full
   softmax by a two-level inverse CDF (two uniforms per row; no per-vocabulary-entry random numbers, no
   sort); top-k uses ``lax.top_k``; top-p takes the top ``nucleus_cap`` candidates and applies the
   nucleus inside them, falling back (``lax.cond``) to an exact threshold search over the whole
   vocabulary (bisection on the probability threshold, 32 masked sums; no sort) when the candidates do
   not hold ``top_p`` of the mass, so the distribution is always exactly the one claimed. Step t draws
   with ``fold_in(rng, t)``.

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
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tina_jax.models import decoder
from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.models.linear import base_kernel, dense, is_container, materialize
from tina_jax.validation import FieldError, is_int, is_real

__all__ = [
    "SamplingConfig",
    "Generation",
    "generate",
    "sample_tokens",
    "choose_tokens",
    "encode_prompts",
    "pad_prompts",
    "prompt_bucket",
    "default_stop_token_ids",
]

MIN_BUCKET = 16
# End-of-turn / end-of-text tokens of the supported chat families, added to the default stop set
# when the tokenizer knows them.
_EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>")
_BLOCK = 256  # block size of the two-level inverse-CDF sampler
_NEG = -1e30  # masked attention score (finite, as in decoder.py)


# ----------------------------------------------------------------------------------------------
# Configuration and output
# ----------------------------------------------------------------------------------------------
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
      adapter_decoding: ``"merged"`` (fold low-rank adapters into the kernels once: plain matmuls, the
        authors' vLLM rollouts) or ``"factored"`` (``x K + c (x A) B`` per step, the trainer's numerics).
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

    def __post_init__(self):
        def need(ok: bool, field: str, message: str):
            if not ok:
                raise FieldError(field, f"{field} {message}, got {getattr(self, field)!r}")

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
        if self.cache_dtype is not None:
            try:
                as_dtype(self.cache_dtype)
            except ValueError as e:
                raise FieldError("cache_dtype", f"cache_dtype is invalid: {e}") from None
        need(self.adapter_decoding in ("merged", "factored"), "adapter_decoding", "must be 'merged' or 'factored'")
        if self.stop_token_ids is not None:
            raw = self.stop_token_ids
            ids = (int(raw),) if isinstance(raw, (int, np.integer)) else tuple(int(t) for t in raw)
            if any(t < 0 for t in ids):
                raise FieldError("stop_token_ids", f"stop_token_ids must be non-negative token ids, got {ids}")
            object.__setattr__(self, "stop_token_ids", ids)
        for name in ("temperature", "top_p"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("max_new_tokens", "top_k", "num_samples", "nucleus_cap"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def scoring_temperature(self) -> float:
        """The T of the distribution the sampler reports logprobs for, ``log_softmax(logits / T)``: the
        sampling temperature, and 1 for greedy decoding (T = 0 reports the temperature-1 log-softmax of the
        argmax; see the module docstring). A trainer that scores its samples "at the sampling temperature"
        (verl, TRL >= 0.16; the run config's ``grpo.logprob_temperature: sampling``) uses this number."""
        return self.temperature if self.temperature > 0 else 1.0

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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
# Token choice: greedy, temperature, top-k, top-p (exact)
# ----------------------------------------------------------------------------------------------
def _inverse_cdf(u: jax.Array, w: jax.Array) -> jax.Array:
    """int32[N]: index i drawn with probability w[:, i] / sum(w) for u ~ U[0, 1) [N]; w >= 0 [N, K].

    Never returns an index of zero weight (float round-off at the top end is clipped to the last
    positive entry).
    """
    k = w.shape[-1]
    cdf = jnp.cumsum(w, axis=-1)
    target = u * cdf[:, -1]
    idx = jnp.sum(cdf <= target[:, None], axis=-1).astype(jnp.int32)
    last_pos = (k - 1 - jnp.argmax((w > 0)[:, ::-1], axis=-1)).astype(jnp.int32)
    return jnp.minimum(idx, last_pos)


def _sample_weights(key: jax.Array, w: jax.Array) -> jax.Array:
    """int32[N]: one draw per row with probability w[:, i] / sum(w) from weights w >= 0 [N, K].

    Exact two-level inverse CDF for large K (a block of ``_BLOCK`` entries, then an entry inside it):
    two uniforms per row instead of K Gumbel draws, and no cumulative sum over the whole vocabulary.
    """
    n, k = w.shape
    k1, k2 = jax.random.split(key)
    if k <= 2 * _BLOCK:
        return _inverse_cdf(jax.random.uniform(k1, (n,)), w)
    nb = -(-k // _BLOCK)
    if nb * _BLOCK != k:
        w = jnp.pad(w, ((0, 0), (0, nb * _BLOCK - k)))
    blocks = w.reshape(n, nb, _BLOCK)
    b = _inverse_cdf(jax.random.uniform(k1, (n,)), jnp.sum(blocks, axis=-1))
    inner = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]
    return b * _BLOCK + _inverse_cdf(jax.random.uniform(k2, (n,)), inner)


def _sample_categorical(key: jax.Array, logp: jax.Array) -> jax.Array:
    """int32[N]: one draw per row from softmax(logp) [N, K] (logp may be unnormalised, -inf = excluded)."""
    return _sample_weights(key, jnp.exp(logp - jnp.max(logp, axis=-1, keepdims=True)))


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def _nucleus_pick(key, vals, idx, logq, top_p):
    """Nucleus inside sorted candidates: keep a token while the mass before it is < top_p.

    vals/idx/logq [N, K] sorted by descending probability; logq are the log-probs top-p sees.
    Returns (token ids, logprobs under the renormalised nucleus).
    """
    q = jnp.exp(logq)
    before = jnp.cumsum(q, axis=-1) - q
    keep = before < top_p
    keep = keep.at[:, 0].set(True)
    logr = jnp.where(keep, logq, -jnp.inf)
    logr = logr - jax.nn.logsumexp(logr, axis=-1, keepdims=True)
    c = _sample_categorical(key, logr)
    return _take(idx, c), _take(logr, c)


def choose_tokens(logits: jax.Array, key: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row: (int32[N] ids, f32[N] logprobs) from f32[N, V] logits.

    Pure and jit-able (``sampling`` static). See the module docstring for which logprob is reported.
    """
    logits = logits.astype(jnp.float32)
    n, v = logits.shape
    if sampling.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tok, _take(logits, tok) - jax.nn.logsumexp(logits, axis=-1)
    x = logits if sampling.temperature == 1.0 else logits / sampling.temperature
    top_k = sampling.top_k if 0 < sampling.top_k < v else 0
    top_p = sampling.top_p
    if top_k == 0 and top_p >= 1.0:  # plain temperature sampling: one exp pass, no sorting at all
        m = jnp.max(x, axis=-1, keepdims=True)
        w = jnp.exp(x - m)
        tok = _sample_weights(key, w)
        return tok, _take(x, tok) - m[:, 0] - jnp.log(jnp.sum(w, axis=-1))
    if top_k > 0:
        vals, idx = jax.lax.top_k(x, top_k)
        logq = vals - jax.nn.logsumexp(vals, axis=-1, keepdims=True)
        if top_p >= 1.0:
            c = _sample_categorical(key, logq)
            return _take(idx, c).astype(jnp.int32), _take(logq, c)
        tok, lp = _nucleus_pick(key, vals, idx, logq, top_p)
        return tok.astype(jnp.int32), lp
    # top-p over the full vocabulary: the top ``nucleus_cap`` candidates when they hold top_p of the
    # mass (the usual case), else an exact threshold search over the whole vocabulary.
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    cap = min(sampling.nucleus_cap, v)
    vals, idx = jax.lax.top_k(x, cap)
    mass = jnp.sum(jnp.exp(vals - lse), axis=-1)

    def capped():
        tok, lp = _nucleus_pick(key, vals, idx, vals - lse, top_p)
        return tok.astype(jnp.int32), lp

    def full():
        return _nucleus_threshold(key, x - lse, top_p)

    # The nucleus lies inside the cap iff the cap's mass reaches top_p (then the next token's
    # "mass before" is >= top_p and it is excluded).
    if cap == v:
        return capped()
    return jax.lax.cond(jnp.all(mass >= top_p), capped, full)


def _nucleus_threshold(key, logp, top_p):
    """Exact top-p over an unsorted vocabulary by bisection on the probability threshold.

    Token i is kept iff F(p_i) < top_p, where F(t) = sum of the probabilities > t (the mass before i
    in descending order; tied probabilities are kept or dropped together). F is monotone, so the kept
    set is {p_i >= t*}; t* is found exactly by bisection over the float32 bit patterns of p (ordered
    like the values for p >= 0): 32 masked sums over the vocabulary instead of a sort.
    Returns (token ids, logprobs under the renormalised nucleus).
    """
    p = jnp.exp(logp)
    bits = jax.lax.bitcast_convert_type(p, jnp.int32)
    lo = jnp.full((p.shape[0],), -1, jnp.int32)  # F(lo) = total mass >= top_p: not kept
    hi = jnp.max(bits, axis=-1)  # F(hi) = 0 < top_p: kept

    def step(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(bits > mid[:, None], p, 0.0), axis=-1) < top_p
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 32, step, (lo, hi))
    keep = bits >= hi[:, None]
    w = jnp.where(keep, p, 0.0)
    tok = _sample_weights(key, w)
    return tok, _take(logp, tok) - jnp.log(jnp.sum(w, axis=-1))


# ----------------------------------------------------------------------------------------------
# Prefill and decode
# ----------------------------------------------------------------------------------------------
def _merge_containers(params: Any) -> Any:
    """Fold adapter containers into plain kernels once, so the decode loop runs plain matmuls."""
    return jax.tree.map(materialize, params, is_leaf=is_container)


def _decode_attention(q, pk, pv, pmask, ck, cv, slot):
    """Attention of one new token per row over [shared prompt cache | own completion cache].

    q [R, 1, Hq, hd] (R = B*G rows, group-major); pk [B, Hkv, hd, P] / pv [B, Hkv, P, hd]: the prompt
    cache, read once per prompt for its G rows; pmask bool[B, P]; ck [R, Hkv, hd, N] / cv [R, Hkv, N, hd]:
    the rows' completion caches, valid up to and including ``slot`` (the new token is already written).
    Scores and softmax in fp32. Returns [R, 1, Hq, hd].
    """
    r, _, hq, hd = q.shape
    b, hkv, _, p = pk.shape
    g, rep = r // b, hq // hkv
    n = ck.shape[-1]
    dt = q.dtype
    f32 = jnp.float32
    q = q.reshape(r, hkv, rep, hd) * jnp.asarray(hd ** -0.5, dt)
    qp = q.reshape(b, g, hkv, rep, hd).transpose(0, 2, 1, 3, 4).reshape(b, hkv, g * rep, hd)
    s_p = jnp.einsum("bkqd,bkdp->bkqp", qp, pk.astype(dt), preferred_element_type=f32)
    s_p = jnp.where(pmask[:, None, None, :], s_p, _NEG)
    s_p = s_p.reshape(b, hkv, g, rep, p).transpose(0, 2, 1, 3, 4).reshape(r, hkv, rep, p)
    s_c = jnp.einsum("nkrd,nkds->nkrs", q, ck.astype(dt), preferred_element_type=f32)
    s_c = jnp.where(jnp.arange(n) <= slot, s_c, _NEG)
    probs = jax.nn.softmax(jnp.concatenate([s_p, s_c], axis=-1), axis=-1).astype(dt)
    p_p, p_c = probs[..., :p], probs[..., p:]
    p_p = p_p.reshape(b, g, hkv, rep, p).transpose(0, 2, 1, 3, 4).reshape(b, hkv, g * rep, p)
    o_p = jnp.einsum("bkqp,bkpd->bkqd", p_p, pv.astype(dt))
    o_p = o_p.reshape(b, hkv, g, rep, hd).transpose(0, 2, 1, 3, 4).reshape(r, hkv, rep, hd)
    o_c = jnp.einsum("nkrs,nksd->nkrd", p_c, cv.astype(dt))
    return (o_p + o_c).reshape(r, 1, hq, hd)


def _decode_layers(cfg: ModelConfig, layers: Any) -> list[dict]:
    """Stacked [L, ...] layer parameters -> L per-layer dicts for the decode loop, with the q/k/v
    kernels (and biases) concatenated into one ``qkv`` kernel and gate/up into ``gate_up`` (fewer,
    wider matmuls). Built once per call, before the loop (a copy of the layer weights)."""
    out = []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda x, i=i: x[i], layers)
        d = {"attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"], "o_proj": p["o_proj"],
             "down_proj": p["down_proj"],
             "qkv": jnp.concatenate([base_kernel(p[n]) for n in ("q_proj", "k_proj", "v_proj")], axis=-1),
             "gate_up": jnp.concatenate([base_kernel(p[n]) for n in ("gate_proj", "up_proj")], axis=-1)}
        for fused, names in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate_up", ("gate_proj", "up_proj"))):
            if any(is_container(p[n]) for n in names):  # factored decoding: the adapters' x A B terms
                d[fused + "_adapters"] = tuple(
                    (p[n].replace(base=None) if is_container(p[n]) else None, base_kernel(p[n]).shape[-1])
                    for n in names)
        if cfg.qkv_bias:
            d["qkv_bias"] = jnp.concatenate([p["q_bias"], p["k_bias"], p["v_bias"]], axis=-1)
        if cfg.qk_norm:
            d["q_norm"], d["k_norm"] = p["q_norm"], p["k_norm"]
        out.append(d)
    return out


def _fused_dense(x: jax.Array, p: dict, name: str, dt) -> jax.Array:
    """``x @ p[name]`` for a fused kernel, plus each part's adapter correction when decoding factored:
    per column block ``x K_j + c_j (x A_j) B_j``, the same operations as ``linear.dense``."""
    y = x @ p[name].astype(dt)
    parts = p.get(name + "_adapters")
    if parts is None:
        return y
    corr = [c.correction(x, dt).astype(y.dtype) if c is not None else jnp.zeros(x.shape[:-1] + (w,), y.dtype)
            for c, w in parts]
    return y + jnp.concatenate(corr, axis=-1)


def _decode_block(cfg: ModelConfig, p: dict, h: jax.Array, positions: jax.Array, attend) -> tuple:
    """``decoder._block`` for decoding with the fused kernels of ``_decode_layers`` (same numerics:
    every output column is the same dot product). h [R, 1, D]; ``attend(q, k, v) -> (out, extra)``."""
    dt = as_dtype(cfg.compute_dtype)
    r, t, _ = h.shape
    eps = cfg.rms_norm_eps
    qkv = _fused_dense(decoder.rms_norm(h, p["attn_norm"], eps), p, "qkv", dt)
    if cfg.qkv_bias:
        qkv = qkv + p["qkv_bias"].astype(dt)
    q, k, v = jnp.split(qkv, [cfg.q_dim, cfg.q_dim + cfg.kv_dim], axis=-1)
    q = q.reshape(r, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(r, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(r, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q, k = decoder.rms_norm(q, p["q_norm"], eps), decoder.rms_norm(k, p["k_norm"], eps)
    q, k = decoder.rope(q, positions, cfg.rope_theta), decoder.rope(k, positions, cfg.rope_theta)
    attn, extra = attend(q, k, v)
    h = h + dense(attn.reshape(r, t, cfg.q_dim), p["o_proj"], dt)
    gu = _fused_dense(decoder.rms_norm(h, p["mlp_norm"], eps), p, "gate_up", dt)
    f = cfg.intermediate_size
    h = h + dense(jax.nn.silu(gu[..., :f]) * gu[..., f:], p["down_proj"], dt)
    return h, extra


def _decode_hidden(cfg: ModelConfig, params, layers, tok, positions, slot, prompt_kv, pmask, cache):
    """One decode step for every row: final-norm hidden [R, D] and the completion caches with the new
    keys/values written at ``slot``.

    ``layers``: per-layer parameters from ``_decode_layers``; ``prompt_kv``: per-layer (pk, pv); ``cache``: per-layer
    (ck [R, Hkv, hd, N], cv [R, Hkv, N, hd]). The layer loop is unrolled so every cache and weight is
    its own loop-carried / loop-invariant buffer: no per-step dynamic slices (copies) of stacked weights
    or caches, and the cache writes happen in place.
    """
    h = decoder.embed(cfg, params, tok[:, None])
    pos = positions[:, None]
    new_cache = []
    for p, (pk, pv), (ck, cv) in zip(layers, prompt_kv, cache):
        def attend(q, k, v, pk=pk, pv=pv, ck=ck, cv=cv):
            # Write first, then read the written buffer: one live version, so the update is in place.
            r, _, hkv, hd = k.shape
            ck = jax.lax.dynamic_update_slice(ck, k.reshape(r, hkv, hd, 1).astype(ck.dtype), (0, 0, 0, slot))
            cv = jax.lax.dynamic_update_slice(cv, v.reshape(r, hkv, 1, hd).astype(cv.dtype), (0, 0, slot, 0))
            return _decode_attention(q, pk, pv, pmask, ck, cv, slot), (ck, cv)

        h, kv = _decode_block(cfg, p, h, pos, attend)
        new_cache.append(kv)
    h = decoder.rms_norm(h[:, 0], params["final_norm"], cfg.rms_norm_eps)
    return h, tuple(new_cache)


class _Loop(NamedTuple):
    step: jax.Array  # int32[]: the completion slot filled next
    tokens: jax.Array  # int32[R, N]
    logprobs: jax.Array  # f32[R, N]
    done: jax.Array  # bool[R]
    lengths: jax.Array  # int32[R]
    cache: tuple  # per layer (k [R, Hkv, hd, N], v [R, Hkv, N, hd]): the completion cache


def _resolve_stop(cfg: ModelConfig, sampling: SamplingConfig) -> tuple[int, ...]:
    return tuple(cfg.eos_token_ids) if sampling.stop_token_ids is None else sampling.stop_token_ids


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def sample_tokens(config: ModelConfig, params: Any, prompt_ids: jax.Array, prompt_mask: jax.Array,
                  rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample ``sampling.num_samples`` completions for each prompt of a left-padded batch.

    Args:
      config: the model config (static).
      params: parameter pytree (adapter containers merged once before decoding, or kept factored:
        ``sampling.adapter_decoding``).
      prompt_ids: int32[B, P], left-padded (pad values are ignored): the last column must be a real
        token of every row (``pad_prompts`` builds such a batch).
      prompt_mask: {0,1}/bool[B, P], 1 = real token (derived from lengths); each row needs at least one.
      rng: a PRNG key; step t draws with ``fold_in(rng, t)``.
      sampling: the static SamplingConfig. ``stop_token_ids=None`` means ``config.eos_token_ids``;
        ``pad_token_id=None`` means 0.

    Returns:
      tokens int32[B*G, N], logprobs f32[B*G, N], lengths int32[B*G] (rows group-major).
    """
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be [B, P]; got {prompt_ids.shape} and "
                         f"{prompt_mask.shape}")
    if sampling.adapter_decoding == "merged":
        params = _merge_containers(params)
    b, p = prompt_ids.shape
    g, n = sampling.num_samples, sampling.max_new_tokens
    r = b * g
    stop = jnp.asarray(_resolve_stop(config, sampling) or (-1,), jnp.int32)
    pad = jnp.int32(sampling.pad_token_id or 0)
    cdt = as_dtype(sampling.cache_dtype or config.compute_dtype)
    pmask = prompt_mask.astype(bool)
    plen = jnp.sum(pmask, axis=-1, dtype=jnp.int32)

    # Prefill: each distinct prompt once; logits at the last (real) position only.
    pcache = decoder.init_cache(config, b, p, cdt)
    pos = decoder.positions_from_mask(pmask)
    h, pcache = decoder.forward_cached(config, params, prompt_ids.astype(jnp.int32), pos, pcache,
                                       jnp.int32(0), pmask)
    logits = decoder.logits_from_hidden(config, params, h[:, -1])  # [B, V]
    tok, lp = choose_tokens(jnp.repeat(logits, g, axis=0), jax.random.fold_in(rng, 0), sampling)

    row_plen = jnp.repeat(plen, g)
    is_stop = lambda t: jnp.any(t[:, None] == stop[None, :], axis=-1)  # noqa: E731
    done = is_stop(tok)
    state = _Loop(
        step=jnp.int32(1),
        tokens=jnp.full((r, n), pad, jnp.int32).at[:, 0].set(tok),
        logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(lp),
        done=done,
        lengths=jnp.where(done, 1, n).astype(jnp.int32),
        cache=tuple((jnp.zeros((r, config.num_kv_heads, config.head_dim, n), cdt),
                     jnp.zeros((r, config.num_kv_heads, n, config.head_dim), cdt))
                    for _ in range(config.num_layers)),
    )
    layers = _decode_layers(config, params["layers"])
    prompt_kv = [(pcache["k"][i].transpose(0, 2, 3, 1), pcache["v"][i].transpose(0, 2, 1, 3))
                 for i in range(config.num_layers)]

    def cond(s: _Loop):
        return (s.step < n) & ~jnp.all(s.done)

    def body(s: _Loop):
        prev = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=1, keepdims=False)
        h, cache = _decode_hidden(config, params, layers, prev, row_plen + s.step - 1, s.step - 1, prompt_kv,
                                  pmask, s.cache)
        logits = decoder.logits_from_hidden(config, params, h)
        tok, lp = choose_tokens(logits, jax.random.fold_in(rng, s.step), sampling)
        tok = jnp.where(s.done, pad, tok)
        lp = jnp.where(s.done, 0.0, lp)
        newly = ~s.done & is_stop(tok)
        return _Loop(
            step=s.step + 1,
            tokens=jax.lax.dynamic_update_index_in_dim(s.tokens, tok, s.step, axis=1),
            logprobs=jax.lax.dynamic_update_index_in_dim(s.logprobs, lp, s.step, axis=1),
            done=s.done | newly,
            lengths=jnp.where(newly, s.step + 1, s.lengths),
            cache=cache,
        )

    out = jax.lax.while_loop(cond, body, state)
    return out.tokens, out.logprobs, out.lengths


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
