"""Token choice: greedy, temperature, top-k, top-p (exact), and the logprob of the drawn token.

``choose_tokens(logits, key, sampling)`` picks one token per row. Greedy = argmax; plain temperature
sampling draws from the full softmax by a two-level inverse CDF (two uniforms per row; no per-vocabulary-
entry random numbers, no sort); top-k uses ``lax.top_k``; top-p takes the top ``nucleus_cap`` candidates
and applies the nucleus inside them, falling back (``lax.cond``) to an exact threshold search over the
whole vocabulary (bisection on the probability threshold, 32 masked sums; no sort) when the candidates do
not hold ``top_p`` of the mass, so the distribution is always exactly the one claimed.

The logprob is that of the distribution the token was drawn from: ``log_softmax(logits / T)`` for plain
sampling; after top-k/top-p truncation and renormalisation otherwise (transformers' warper order:
temperature, top-k, then top-p on the top-k-renormalised distribution). Greedy (T = 0) reports
``log_softmax(logits)`` of the argmax (the temperature-1 distribution).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tina_jax.sampling.config import SamplingConfig

__all__ = ["choose_tokens"]

_BLOCK = 256  # block size of the two-level inverse-CDF sampler


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


def _uniforms(key: jax.Array, n: int, rows: jax.Array | None, num_rows: int | None) -> tuple[jax.Array, jax.Array]:
    """The two U[0, 1) numbers of each of the n rows: drawn for ``num_rows`` rows and taken at ``rows``
    (a row's draws depend on its index in the full batch only, so a compacted batch draws what the full
    batch would), or for the n rows directly."""
    k1, k2 = jax.random.split(key)
    if rows is None:
        return jax.random.uniform(k1, (n,)), jax.random.uniform(k2, (n,))
    return jax.random.uniform(k1, (num_rows,))[rows], jax.random.uniform(k2, (num_rows,))[rows]


def _sample_weights(u: tuple[jax.Array, jax.Array], w: jax.Array) -> jax.Array:
    """int32[N]: one draw per row with probability w[:, i] / sum(w) from weights w >= 0 [N, K], given the
    rows' two uniforms ``u`` (``_uniforms``).

    Exact two-level inverse CDF for large K (a block of ``_BLOCK`` entries, then an entry inside it):
    two uniforms per row instead of K Gumbel draws, and no cumulative sum over the whole vocabulary.
    """
    n, k = w.shape
    u1, u2 = u
    if k <= 2 * _BLOCK:
        return _inverse_cdf(u1, w)
    nb = -(-k // _BLOCK)
    if nb * _BLOCK != k:
        w = jnp.pad(w, ((0, 0), (0, nb * _BLOCK - k)))
    blocks = w.reshape(n, nb, _BLOCK)
    b = _inverse_cdf(u1, jnp.sum(blocks, axis=-1))
    inner = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]
    return b * _BLOCK + _inverse_cdf(u2, inner)


def _sample_categorical(u: tuple[jax.Array, jax.Array], logp: jax.Array) -> jax.Array:
    """int32[N]: one draw per row from softmax(logp) [N, K] (logp may be unnormalised, -inf = excluded)."""
    return _sample_weights(u, jnp.exp(logp - jnp.max(logp, axis=-1, keepdims=True)))


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def _nucleus_pick(u, vals, idx, logq, top_p):
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
    c = _sample_categorical(u, logr)
    return _take(idx, c), _take(logr, c)


def choose_tokens(logits: jax.Array, key: jax.Array, sampling: SamplingConfig, rows: jax.Array | None = None,
                  num_rows: int | None = None, live: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row: (int32[N] ids, f32[N] logprobs) from f32[N, V] logits.

    Pure and jit-able (``sampling`` static). See the module docstring for which logprob is reported.
    ``rows`` int32[N] (with ``num_rows``): each row's index in the full batch, whose random numbers it
    uses (a decoder running a compacted batch of live rows draws what the full batch would). ``live``
    bool[N]: rows whose token matters (the top-p fallback is chosen on these only); default all.
    """
    logits = logits.astype(jnp.float32)
    n, v = logits.shape
    if sampling.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tok, _take(logits, tok) - jax.nn.logsumexp(logits, axis=-1)
    u = _uniforms(key, n, rows, num_rows)
    x = logits if sampling.temperature == 1.0 else logits / sampling.temperature
    top_k = sampling.top_k if 0 < sampling.top_k < v else 0
    top_p = sampling.top_p
    if top_k == 0 and top_p >= 1.0:  # plain temperature sampling: one exp pass, no sorting at all
        m = jnp.max(x, axis=-1, keepdims=True)
        w = jnp.exp(x - m)
        tok = _sample_weights(u, w)
        return tok, _take(x, tok) - m[:, 0] - jnp.log(jnp.sum(w, axis=-1))
    if top_k > 0:
        vals, idx = jax.lax.top_k(x, top_k)
        logq = vals - jax.nn.logsumexp(vals, axis=-1, keepdims=True)
        if top_p >= 1.0:
            c = _sample_categorical(u, logq)
            return _take(idx, c).astype(jnp.int32), _take(logq, c)
        tok, lp = _nucleus_pick(u, vals, idx, logq, top_p)
        return tok.astype(jnp.int32), lp
    # top-p over the full vocabulary: the top ``nucleus_cap`` candidates when they hold top_p of the
    # mass (the usual case), else an exact threshold search over the whole vocabulary.
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    cap = min(sampling.nucleus_cap, v)
    vals, idx = jax.lax.top_k(x, cap)
    mass = jnp.sum(jnp.exp(vals - lse), axis=-1)

    def capped():
        tok, lp = _nucleus_pick(u, vals, idx, vals - lse, top_p)
        return tok.astype(jnp.int32), lp

    def full():
        return _nucleus_threshold(u, x - lse, top_p)

    # The nucleus lies inside the cap iff the cap's mass reaches top_p (then the next token's
    # "mass before" is >= top_p and it is excluded).
    if cap == v:
        return capped()
    enough = mass >= top_p
    if live is not None:
        enough = enough | ~live
    return jax.lax.cond(jnp.all(enough), capped, full)


def _nucleus_threshold(u, logp, top_p):
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
    tok = _sample_weights(u, w)
    return tok, _take(logp, tok) - jnp.log(jnp.sum(w, axis=-1))

