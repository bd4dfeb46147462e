"""``sample_tokens``: prefill each distinct prompt once, then decode with the model's own cached forward.

See the ``tina_jax.sampling`` docstring for the design (segments, windows, compaction).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tina_jax.models import decoder
from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.models.linear import is_container
from tina_jax.sampling.config import SamplingConfig, resolve_stop
from tina_jax.sampling.tokens import choose_tokens

__all__ = ["sample_tokens", "merge_adapters", "segment_windows", "group_buckets"]

MAX_HALVINGS = 4  # compacted batches hold B, B/2, B/4, B/8 or B/16 prompt groups


def merge_adapters(params: Any, dtype: str | None = None) -> Any:
    """``params`` with every adapter container folded into a plain kernel (fp32 math), cast to ``dtype``
    (default: the base kernel's dtype). Copies the adapted kernels only; plain leaves are kept as they are."""
    def merge(w):
        if not is_container(w):
            return w
        m = w.base.astype(jnp.float32) + w.delta()
        return m.astype(as_dtype(dtype) if dtype is not None else w.base.dtype)

    return jax.tree.map(merge, params, is_leaf=is_container)


def segment_windows(n: int, first: int) -> tuple[int, ...]:
    """Attention windows (completion slots) of the decode segments: ``first``, doubling, capped at ``n``.

    Decode step s (1 <= s < n) writes slot s - 1 and runs in the first segment whose window exceeds it."""
    out, w = [], max(1, first)
    while w < n:
        out.append(w)
        w *= 2
    return tuple(out) + (n,)


def group_buckets(b: int) -> tuple[int, ...]:
    """Batch sizes, in prompt groups, a compacted batch may take: b, ceil(b/2), ... (``MAX_HALVINGS``)."""
    return tuple(sorted({-(-b // (1 << j)) for j in range(MAX_HALVINGS + 1)}, reverse=True))


class _State(NamedTuple):
    step: jax.Array  # int32[]: the completion slot filled next
    tokens: jax.Array  # int32[R, N]
    logprobs: jax.Array  # f32[R, N]
    done: jax.Array  # bool[R]
    lengths: jax.Array  # int32[R]
    rows: jax.Array  # int32[R]: each slot's row in the caller's order (compaction permutes slots)
    plen: jax.Array  # int32[R]: the row's prompt length (its first completion position)
    cache: dict  # the rows' completion cache, decoder layout: k [L, R, Hkv, hd, N], v [L, R, Hkv, N, hd]
    prefix: dict  # the prompts' cache: k [L, B, Hkv, hd, P], v [L, B, Hkv, P, hd], mask bool[B, P]


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def sample_tokens(config: ModelConfig, params: Any, prompt_ids: jax.Array, prompt_mask: jax.Array,
                  rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample ``sampling.num_samples`` completions for each prompt of a left-padded batch.

    Args:
      config: the model config (static).
      params: parameter pytree; adapter containers are merged once before decoding
        (``adapter_decoding="merged"``, in ``merge_dtype``) or applied factored in every step.
      prompt_ids: int32[B, P], left-padded (pad values are ignored): the last column must be a real
        token of every row (``pad_prompts`` builds such a batch).
      prompt_mask: {0,1}/bool[B, P], 1 = real token (derived from lengths); each row needs at least one.
      rng: a PRNG key; step t draws with ``fold_in(rng, t)``, row r with its index r in the batch.
      sampling: the static SamplingConfig. ``stop_token_ids=None`` means ``config.eos_token_ids``;
        ``pad_token_id=None`` means 0.

    Returns:
      tokens int32[B*G, N], logprobs f32[B*G, N], lengths int32[B*G] (rows group-major).
    """
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be [B, P]; got {prompt_ids.shape} and "
                         f"{prompt_mask.shape}")
    if sampling.adapter_decoding == "merged":
        params = merge_adapters(params, sampling.merge_dtype)
    b, p = prompt_ids.shape
    g, n = sampling.num_samples, sampling.max_new_tokens
    r = b * g
    stop_ids = resolve_stop(config, sampling)
    stop = jnp.asarray(stop_ids or (-1,), jnp.int32)
    pad = jnp.int32(sampling.pad_token_id or 0)
    cdt = as_dtype(sampling.cache_dtype or config.compute_dtype)
    pmask = prompt_mask.astype(bool)
    plen = jnp.sum(pmask, axis=-1, dtype=jnp.int32)

    # Prefill: each distinct prompt once; logits at the last (real) position only.
    pcache = decoder.init_cache(config, b, p, cdt)
    h, pcache = decoder.forward_cached(config, params, prompt_ids.astype(jnp.int32), decoder.positions_from_mask(pmask),
                                       pcache, jnp.int32(0), pmask)
    logits = decoder.logits_from_hidden(config, params, h[:, -1])  # [B, V]
    tok, lp = choose_tokens(jnp.repeat(logits, g, axis=0), jax.random.fold_in(rng, 0), sampling)

    is_stop = lambda t: jnp.any(t[:, None] == stop[None, :], axis=-1)  # noqa: E731
    done = is_stop(tok)
    state = _State(
        step=jnp.int32(1),
        tokens=jnp.full((r, n), pad, jnp.int32).at[:, 0].set(tok),
        logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(lp),
        done=done,
        lengths=jnp.where(done, 1, n).astype(jnp.int32),
        rows=jnp.arange(r, dtype=jnp.int32),
        plen=jnp.repeat(plen, g),
        cache=decoder.init_cache(config, r, n, cdt),
        prefix={"k": pcache["k"], "v": pcache["v"], "mask": pmask},
    )

    def run_segment(window: int, groups: int, s: _State) -> _State:
        """Decode steps while the slot written (step - 1) lies in ``window``, on the first ``groups`` groups."""
        rows = groups * g
        pre = s.prefix if groups == b else jax.tree.map(lambda x: x[:, :groups] if x.ndim > 2 else x[:groups],
                                                       s.prefix)

        def cond(s: _State):
            return (s.step <= window) & (s.step < n) & ~jnp.all(s.done[:rows])

        def body(s: _State):
            prev = jax.lax.dynamic_slice(s.tokens, (0, s.step - 1), (rows, 1))
            pos = s.plen[:rows, None] + s.step - 1
            h, cache = decoder.forward_cached(config, params, prev, pos, s.cache, s.step - 1, prefix=pre,
                                              window=window)
            logits = decoder.logits_from_hidden(config, params, h[:, 0])
            was = s.done[:rows]
            tok, lp = choose_tokens(logits, jax.random.fold_in(rng, s.step), sampling, rows=s.rows[:rows],
                                    num_rows=r, live=~was)
            tok = jnp.where(was, pad, tok)
            lp = jnp.where(was, 0.0, lp)
            newly = ~was & is_stop(tok)
            return s._replace(
                step=s.step + 1,
                tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
                logprobs=jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], (0, s.step)),
                done=jax.lax.dynamic_update_slice(s.done, was | newly, (0,)),
                lengths=jax.lax.dynamic_update_slice(s.lengths, jnp.where(newly, s.step + 1, s.lengths[:rows]), (0,)),
                cache=cache,
            )

        return jax.lax.while_loop(cond, body, s)

    windows = segment_windows(n, sampling.decode_window)
    buckets = group_buckets(b) if (sampling.compact_rows and stop_ids and len(windows) > 1) else (b,)
    for k, window in enumerate(windows):
        if k == 0 or len(buckets) == 1:
            state = run_segment(window, b, state)
            continue
        state, index = _compact(state, b, g, buckets)
        state = jax.lax.switch(index, [functools.partial(run_segment, window, bb) for bb in buckets], state)

    if len(buckets) == 1:
        return state.tokens, state.logprobs, state.lengths
    back = lambda x: jnp.zeros_like(x).at[state.rows].set(x)  # noqa: E731
    return back(state.tokens), back(state.logprobs), back(state.lengths)


def _compact(s: _State, b: int, g: int, buckets: tuple[int, ...]) -> tuple[_State, jax.Array]:
    """Live prompt groups first (stable), and the index of the smallest bucket that holds them."""
    live = ~jnp.all(s.done.reshape(b, g), axis=1)
    count = jnp.sum(live, dtype=jnp.int32)
    index = jnp.sum(jnp.asarray(buckets, jnp.int32) >= count, dtype=jnp.int32) - 1
    order = jnp.argsort(~live, stable=True)  # group order
    row_order = (order[:, None] * g + jnp.arange(g)[None, :]).reshape(b * g)
    take_rows = lambda x, axis=0: jnp.take(x, row_order, axis=axis)  # noqa: E731
    s = s._replace(
        tokens=take_rows(s.tokens), logprobs=take_rows(s.logprobs), done=take_rows(s.done),
        lengths=take_rows(s.lengths), rows=take_rows(s.rows), plen=take_rows(s.plen),
        cache={k: take_rows(v, 1) for k, v in s.cache.items()},
        prefix={"k": jnp.take(s.prefix["k"], order, axis=1), "v": jnp.take(s.prefix["v"], order, axis=1),
                "mask": jnp.take(s.prefix["mask"], order, axis=0)},
    )
    return s, index
