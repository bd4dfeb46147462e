"""Per-token GRPO/PPO policy losses that aggregate exactly under micro-batching.

The model-independent half of a GRPO step. Shapes: ``B`` completions (rows), ``T``
completion positions; ``mask`` is ``[B, T]`` and marks the completion tokens that count
(bool, or 0/1; any non-zero entry counts as a token).

Pipeline::

    loss_tokens, aux = per_token_loss(logp, old_logp, adv, mask, cfg, ref_logp, sampler_logp)
    loss_sum, loss_denom = aggregate(loss_tokens, mask, cfg)
    # or both at once, with metric sums:
    loss_sum, loss_denom, metric_sums = policy_loss(logp, old_logp, adv, mask, cfg, ...)

Micro-batching contract (the reason losses return a sum and a denominator). Split the
batch along the **row** axis into micro-batches that each hold whole completions (any
split: equal sizes are not required). For micro-batch ``k`` compute ``(s_k, d_k)``. Then
the full-batch loss is exactly::

    loss = sum_k s_k / max(sum_k d_k, 1)         # == finalize_loss(sum_k s_k, sum_k d_k)

and, because every ``d_k`` is a count that does not depend on the parameters, the
full-batch gradient is ``sum_k grad(s_k) / max(sum_k d_k, 1)``: accumulate the gradients
of the *sums* and divide once at the end. Never average per-micro-batch means.

Metrics follow the same rule: ``policy_loss`` returns token *sums* (``metric_sums``) with
the token count under ``"tokens"``; add them over micro-batches and call
``finalize_metrics`` once to get token means.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from tina_jax.validation import FieldError, is_int, is_real

Aggregation = Literal["token_mean", "microbatch_token_mean", "seq_mean_token_mean", "seq_sum_const"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "microbatch_token_mean", "seq_mean_token_mean", "seq_sum_const")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k3")

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "Aggregation",
    "LossConfig",
    "aggregate",
    "chunked_logprobs",
    "finalize_loss",
    "finalize_metrics",
    "kl_per_token",
    "per_token_loss",
    "policy_loss",
]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static configuration of the GRPO policy loss (hashable: usable as a jit static arg).

    Attributes:
      aggregation: how per-token losses become one scalar (``n_i`` = completion tokens of
        row ``i``, ``B`` = rows, ``L`` = ``max_completion_length``):

        * ``"token_mean"``: ``sum_{i,t} l_it / sum_i n_i``: one token mean over the whole batch,
          across micro-batches (DAPO's definition).
        * ``"microbatch_token_mean"``: the batch cut into consecutive blocks of
          ``microbatch_rows`` rows (the reference's device micro-batch); a token mean within each
          block, then the mean over blocks: ``(1/K) sum_k sum_{i in k,t} l_it / sum_{i in k} n_i``
          (Open-RS's TRL of 2025-02-25, later TRL's ``bnpo``; one block = one group of G there).
          Independent of how this library splits the batch for gradient accumulation.
        * ``"seq_mean_token_mean"``: ``(1/B) sum_i (sum_t l_it / n_i)`` (Tina / TRL 0.15).
          Every row counts in ``B``; a row with ``n_i = 0`` contributes 0.
        * ``"seq_sum_const"``: ``sum_{i,t} l_it / (B * L)`` (Dr. GRPO; TRL ``dr_grpo``).
      clip_eps_low: lower clip, ratio clipped below at ``1 - clip_eps_low``; in [0, 1].
      clip_eps_high: upper clip, ratio clipped above at ``1 + clip_eps_high``; >= 0
        (``clip_eps_high > clip_eps_low`` is DAPO's clip-higher; ``inf`` disables it).
      beta: KL coefficient (>= 0). With ``beta > 0`` a reference logprob is required.
      kl_estimator: ``"k3"`` ``exp(ref - logp) - (ref - logp) - 1`` (TRL, Schulman's
        low-variance estimator) or ``"k1"`` ``logp - ref``.
      tis_cap: truncated importance sampling cap ``C`` (> 0) or ``None`` (off). See
        ``per_token_loss``.
      max_completion_length: the constant ``L`` of ``"seq_sum_const"`` (required there).
      microbatch_rows: the block size of ``"microbatch_token_mean"`` (required there).
      dual_clip: dual-clip PPO's ``c`` (> 1) or ``None`` (off): for ``A < 0`` the ratio is also
        capped at ``c`` (verl ``clip_ratio_c``, default 3 there).
    """

    aggregation: Aggregation = "token_mean"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    beta: float = 0.0
    kl_estimator: Literal["k1", "k3"] = "k3"
    tis_cap: float | None = None
    max_completion_length: int | None = None
    microbatch_rows: int | None = None
    dual_clip: float | None = None

    def __post_init__(self):
        def need(ok: bool, field: str, message: str):
            if not ok:
                raise FieldError(field, f"{field} {message}, got {getattr(self, field)!r}")

        if self.aggregation not in AGGREGATIONS:
            raise FieldError("aggregation", f"unknown aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
        need(is_real(self.clip_eps_low) and 0.0 <= self.clip_eps_low <= 1.0, "clip_eps_low",
             "must be in [0, 1] (ratio floor 1 - eps)")
        need(is_real(self.clip_eps_high, finite=False) and self.clip_eps_high >= 0.0, "clip_eps_high",
             "must be >= 0 (inf = no upper clip)")
        need(is_real(self.beta) and self.beta >= 0.0, "beta", "(KL coefficient) must be >= 0")
        need(self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"must be one of {KL_ESTIMATORS}")
        need(self.tis_cap is None or (is_real(self.tis_cap) and self.tis_cap > 0), "tis_cap",
             "must be > 0 or None (truncated importance sampling off)")
        mcl = self.max_completion_length
        need(mcl is None or (is_int(mcl) and mcl >= 1), "max_completion_length", "must be a positive int or None")
        rows = self.microbatch_rows
        need(rows is None or (is_int(rows) and rows >= 1), "microbatch_rows", "must be a positive int or None")
        need(self.aggregation != "microbatch_token_mean" or rows is not None, "microbatch_rows",
             "must be set (rows per reference micro-batch, e.g. G) with aggregation='microbatch_token_mean'")
        need(self.dual_clip is None or (is_real(self.dual_clip) and self.dual_clip > 1.0), "dual_clip",
             "must be > 1 or None (off)")
        need(self.aggregation != "seq_sum_const" or mcl is not None, "max_completion_length",
             "must be set with aggregation='seq_sum_const' (Dr. GRPO normalises by num_sequences * "
             "max_completion_length)")


def _check_2d(name: str, x: jax.Array, shape: tuple[int, ...]) -> None:
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} (same as mask [B, T])")


def kl_per_token(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token KL(pi || pi_ref) estimate from sampled-token logprobs, ``f32``.

    ``"k3"``: ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, 0 iff ``logp == ref``);
    ``"k1"``: ``logp - ref``.
    """
    logp = logp.astype(jnp.float32)
    ref_logp = ref_logp.astype(jnp.float32)
    if estimator == "k3":
        d = ref_logp - logp
        return jnp.exp(d) - d - 1.0
    if estimator == "k1":
        return logp - ref_logp
    raise ValueError(f"unknown kl estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def per_token_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: LossConfig,
    ref_logp: jax.Array | None = None,
    sampler_logp: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped-surrogate GRPO loss per token.

    Args:
      logp: ``f32[B, T]`` log pi_theta(token) under the policy being trained (carries the
        gradient).
      old_logp: ``f32[B, T]`` log pi_old(token), the policy at the start of this update
        (treated as a constant), or ``None`` for ``stop_gradient(logp)`` (one update per
        generation batch: ratio == 1, gradient == REINFORCE ``-A * grad logp``).
      advantages: ``f32[B]`` (one per completion, broadcast over tokens) or ``f32[B, T]``.
      mask: ``[B, T]`` completion-token mask (bool or 0/1).
      cfg: the ``LossConfig``.
      ref_logp: ``f32[B, T]`` reference-policy logprobs (constant); required if
        ``cfg.beta > 0``; if given with ``beta == 0`` the KL is still reported in ``aux``.
      sampler_logp: ``f32[B, T]`` logprobs reported by the sampler for the sampled tokens
        (constant); required if ``cfg.tis_cap`` is set, ignored otherwise.

    Per token, with ``r = exp(logp - old_logp)``, ``A`` the advantage,
    ``el, eh = cfg.clip_eps_low, cfg.clip_eps_high``::

        pg   = -min(r * A, clip(r, 1 - el, 1 + eh) * A)
        pg   = min(pg, -c * A) if A < 0 # only if cfg.dual_clip = c is set (dual-clip PPO, verl)
        pg  *= w                       # only if cfg.tis_cap is set (TIS, below)
        loss = pg + beta * kl          # only if beta > 0

    The min is evaluated branch-free: a token is clipped iff ``A > 0 and r > 1 + eh``
    (``is_clipped_high``) or ``A < 0 and r < 1 - el`` (``is_clipped_low``); there the loss
    is the constant ``-(1 + eh) A`` resp. ``-(1 - el) A`` with zero gradient, elsewhere it is
    ``-r A``. This equals the min exactly (ties on the boundary count as unclipped), and
    keeps the gradient ``-A r grad logp`` at ``r == 1`` for any ``el, eh >= 0``.

    Truncated importance sampling (TIS) matches verl's ``compute_policy_loss_vanilla``
    (``tis_imp_ratio_cap``, verl PR #2953): ``w = min(exp(old_logp - sampler_logp), C)``
    per token, a constant (no gradient, no lower floor), multiplying the policy-gradient
    term only, before aggregation; the KL term is not reweighted (verl adds its KL loss
    separately). It corrects for the sampler's numerics differing from the trainer's:
    ``old_logp`` is the trainer's logprob of the sampled token, ``sampler_logp`` the
    sampler's. With ``old_logp=None`` the weight uses ``stop_gradient(logp)``.

    Padding (``mask == 0``) may hold any value, inf/NaN included: it is replaced by 0 in
    every input before use, so it changes neither the loss nor the gradient.

    Returns:
      ``loss_tokens``: ``f32[B, T]``, 0 where ``mask`` is 0.
      ``aux``: per-token ``f32[B, T]`` arrays, **not masked** (values at padding are
      meaningless), all without gradient:
        ``ratio``, ``is_clipped_low``, ``is_clipped_high`` (0/1), ``kl`` (only if
        ``ref_logp`` is given), ``tis_weight`` (only if TIS is on).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {mask.shape}")
    shape = mask.shape
    valid = mask != 0

    def clean(name, x):
        # Zero the padding first so that any value there (even inf/NaN) affects neither
        # the loss nor the gradient.
        x = jnp.asarray(x)
        _check_2d(name, x, shape)
        return jnp.where(valid, x.astype(jnp.float32), 0.0)

    logp = clean("logp", logp)
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    else:
        old_logp = jax.lax.stop_gradient(clean("old_logp", old_logp))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    if adv.shape == shape[:1]:
        adv = adv[:, None]
    elif adv.shape != shape:
        raise ValueError(
            f"advantages has shape {adv.shape}, expected [B]={shape[:1]} or [B, T]={shape}"
        )
    adv = jnp.broadcast_to(adv, shape)

    ratio = jnp.exp(logp - old_logp)
    clipped_high = (adv > 0) & (ratio > 1.0 + cfg.clip_eps_high)
    clipped_low = (adv < 0) & (ratio < 1.0 - cfg.clip_eps_low)
    clip_value = jnp.where(clipped_high, 1.0 + cfg.clip_eps_high, 1.0 - cfg.clip_eps_low)
    if cfg.dual_clip is not None:  # verl: for A < 0, max(-rA, -clip(r)A) is capped at -cA
        clipped_dual = (adv < 0) & (ratio > cfg.dual_clip)
        clip_value = jnp.where(clipped_dual, cfg.dual_clip, clip_value)
    else:
        clipped_dual = jnp.zeros_like(clipped_low)
    surrogate_ratio = jnp.where(clipped_high | clipped_low | clipped_dual, clip_value, ratio)
    pg = -surrogate_ratio * adv

    aux: dict[str, jax.Array] = {
        "ratio": jax.lax.stop_gradient(ratio),
        "is_clipped_low": clipped_low.astype(jnp.float32),
        "is_clipped_high": clipped_high.astype(jnp.float32),
        "is_clipped_dual": clipped_dual.astype(jnp.float32),
    }

    if cfg.tis_cap is not None:
        if sampler_logp is None:
            raise ValueError(
                "cfg.tis_cap is set (truncated importance sampling) but sampler_logp is None; "
                "pass the sampler's logprobs of the sampled tokens or set tis_cap=None"
            )
        sampler_logp = jax.lax.stop_gradient(clean("sampler_logp", sampler_logp))
        w = jnp.minimum(jnp.exp(old_logp - sampler_logp), cfg.tis_cap)
        pg = pg * w
        aux["tis_weight"] = w

    loss = pg
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError(
            f"cfg.beta={cfg.beta} > 0 needs ref_logp (reference-policy logprobs); pass it "
            "or set beta=0"
        )
    if ref_logp is not None:
        ref_logp = jax.lax.stop_gradient(clean("ref_logp", ref_logp))
        kl = kl_per_token(logp, ref_logp, cfg.kl_estimator)
        if cfg.beta > 0:
            loss = loss + cfg.beta * kl
        aux["kl"] = jax.lax.stop_gradient(kl)

    loss = jnp.where(valid, loss, 0.0)
    return loss, aux


def block_token_counts(mask: jax.Array, rows: int) -> jax.Array:
    """``f32[B]``: for each row, the completion tokens of its block of ``rows`` consecutive rows (the
    normaliser of ``microbatch_token_mean``). Compute it on the whole batch before splitting it."""
    b = mask.shape[0]
    if b % rows:
        raise ValueError(f"microbatch_token_mean: the batch of {b} rows is not a whole number of blocks of "
                         f"{rows} rows (grpo.aggregation_rows)")
    n = jnp.sum(mask != 0, axis=1).astype(jnp.float32).reshape(b // rows, rows)
    return jnp.repeat(jnp.sum(n, axis=1), rows)


def aggregate(
    loss_tokens: jax.Array, mask: jax.Array, cfg: LossConfig, block_tokens: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Reduces per-token losses to ``(sum, denom)``, both ``f32[]``.

    With ``n_i = sum_t mask[i, t]`` and ``B`` rows:

    * ``token_mean``:          ``sum = sum_{i,t} l_it``,          ``denom = sum_i n_i``
    * ``microbatch_token_mean``: ``sum = sum_i (sum_t l_it / N_k(i))``, ``denom = B / R`` with
      ``R = cfg.microbatch_rows`` and ``N_k(i)`` the tokens of row i's block (``block_tokens``
      ``f32[B]``, from ``block_token_counts`` on the whole batch; computed here when None, which
      needs this call to hold whole blocks)
    * ``seq_mean_token_mean``: ``sum = sum_i (sum_t l_it / max(n_i, 1))``, ``denom = B``
    * ``seq_sum_const``:       ``sum = sum_{i,t} l_it``,          ``denom = B * L``

    ``sum / max(denom, 1)`` is the loss, and over row-wise micro-batches
    ``sum_k sum_k / max(sum_k denom_k, 1)`` equals the full-batch loss exactly (see the
    module docstring). ``denom`` is a count and carries no gradient.
    """
    if loss_tokens.shape != mask.shape or mask.ndim != 2:
        raise ValueError(
            f"loss_tokens {loss_tokens.shape} and mask {mask.shape} must both be [B, T]"
        )
    valid = mask != 0
    lt = jnp.where(valid, loss_tokens.astype(jnp.float32), 0.0)
    counts = jnp.sum(valid, axis=1).astype(jnp.float32)
    num_rows = jnp.asarray(mask.shape[0], jnp.float32)
    if cfg.aggregation == "token_mean":
        return jnp.sum(lt), jnp.sum(counts)
    if cfg.aggregation == "microbatch_token_mean":
        if block_tokens is None:
            block_tokens = block_token_counts(mask, cfg.microbatch_rows)
        per_row = jnp.sum(lt, axis=1) / jnp.maximum(block_tokens.astype(jnp.float32), 1.0)
        return jnp.sum(per_row), num_rows / float(cfg.microbatch_rows)
    if cfg.aggregation == "seq_mean_token_mean":
        return jnp.sum(jnp.sum(lt, axis=1) / jnp.maximum(counts, 1.0)), num_rows
    if cfg.aggregation == "seq_sum_const":
        return jnp.sum(lt), num_rows * float(cfg.max_completion_length)
    raise ValueError(f"unknown aggregation {cfg.aggregation!r}")  # unreachable after __post_init__


def finalize_loss(loss_sum: jax.Array, loss_denom: jax.Array) -> jax.Array:
    """``loss_sum / max(loss_denom, 1)``: the loss from (accumulated) sums and denominators."""
    return loss_sum / jnp.maximum(loss_denom, 1.0)


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: LossConfig,
    ref_logp: jax.Array | None = None,
    sampler_logp: jax.Array | None = None,
    block_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``per_token_loss`` + ``aggregate``, plus token sums for metrics.

    Arguments as in ``per_token_loss``; ``block_tokens`` as in ``aggregate``.

    Returns:
      ``(loss_sum f32[], loss_denom f32[], metric_sums)``. ``metric_sums`` maps names to
      ``f32[]`` sums over the masked completion tokens, all without gradient:

      * ``"tokens"``: number of completion tokens (the denominator of every metric);
      * ``"clip_low"``, ``"clip_high"``: tokens clipped at ``1 - el`` (A < 0) / ``1 + eh``
        (A > 0);
      * ``"ratio_dev"``: sum of ``|ratio - 1|``;
      * ``"kl"``: sum of per-token KL (only if ``ref_logp`` is given);
      * ``"tis_weight"``, ``"tis_capped"``: sum of TIS weights and count of tokens whose
        weight hit the cap (only if ``cfg.tis_cap`` is set).

      Add the dicts over micro-batches and call ``finalize_metrics`` once.
    """
    loss_tokens, aux = per_token_loss(
        logp, old_logp, advantages, mask, cfg, ref_logp=ref_logp, sampler_logp=sampler_logp
    )
    loss_sum, loss_denom = aggregate(loss_tokens, mask, cfg, block_tokens)
    valid = mask != 0

    def tsum(x):
        return jax.lax.stop_gradient(jnp.sum(jnp.where(valid, x, 0.0)))

    metrics = {
        "tokens": jnp.sum(valid).astype(jnp.float32),
        "clip_low": tsum(aux["is_clipped_low"]),
        "clip_high": tsum(aux["is_clipped_high"]),
        "clip_dual": tsum(aux["is_clipped_dual"]),
        "ratio_dev": tsum(jnp.abs(aux["ratio"] - 1.0)),
    }
    if "kl" in aux:
        metrics["kl"] = tsum(aux["kl"])
    if "tis_weight" in aux:
        metrics["tis_weight"] = tsum(aux["tis_weight"])
        metrics["tis_capped"] = tsum((aux["tis_weight"] >= cfg.tis_cap).astype(jnp.float32))
    return loss_sum, loss_denom, metrics


def finalize_metrics(metric_sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Token means from (accumulated) ``policy_loss`` metric sums.

    Every entry except ``"tokens"`` is divided by ``max(tokens, 1)``; ``"tokens"`` is kept
    as the count.
    """
    if "tokens" not in metric_sums:
        raise ValueError("metric_sums must contain 'tokens' (as returned by policy_loss)")
    n = jnp.maximum(metric_sums["tokens"], 1.0)
    return {k: (v if k == "tokens" else v / n) for k, v in metric_sums.items()}


def chunked_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array | Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    chunk_size: int,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities of ``targets`` and entropies, without materialising [B, T, V].

    The sequence axis is processed ``chunk_size`` positions at a time with ``lax.map``;
    only ``f32[B, chunk_size, V]`` logits exist at once. The chunk body is wrapped in
    ``jax.checkpoint``, so the backward pass recomputes each chunk's logits instead of
    storing all of them. ``T`` need not be a multiple of ``chunk_size`` (padded internally,
    padding discarded).

    Args:
      hidden: ``[B, T, D]`` final hidden states (after the final norm) at the positions
        that predict ``targets``.
      lm_head: ``[D, V]`` output kernel (``logits = hidden @ lm_head``) or a callable
        ``[B, c, D] -> [B, c, V]`` (e.g. tied embeddings or an adapter-aware projection).
      targets: ``i32[B, T]`` token ids whose logprobs are wanted.
      chunk_size: positions per chunk (>= 1), static.
      temperature: logits are divided by it (> 0) before the softmax: use the sampler's
        temperature to score the distribution the tokens were drawn from.

    Returns:
      ``(logp f32[B, T], entropy f32[B, T])`` with ``logp = log_softmax(z / temp)[target]``
      and ``entropy = -sum_v p_v log p_v``. Logits are computed in float32
      (``preferred_element_type``). Differentiable w.r.t. ``hidden`` and ``lm_head``.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {hidden.shape}")
    b, t, d = hidden.shape
    if targets.shape != (b, t):
        raise ValueError(f"targets has shape {targets.shape}, expected [B, T]={(b, t)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if callable(lm_head):
        project = lm_head
        weights = None
    else:
        if getattr(lm_head, "ndim", None) != 2 or lm_head.shape[0] != d:
            raise ValueError(
                f"lm_head has shape {getattr(lm_head, 'shape', type(lm_head))}, expected a [D, V] "
                f"array with D={d}, or a callable hidden -> logits (e.g. for adapter containers)"
            )
        project = None
        weights = lm_head
    if t == 0:
        empty = jnp.zeros((b, 0), jnp.float32)
        return empty, empty

    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n, c, d).swapaxes(0, 1)  # [n, B, c, D]
    ts = targets.reshape(b, n, c).swapaxes(0, 1)  # [n, B, c]
    inv_temp = 1.0 / float(temperature)

    @jax.checkpoint
    def body(w, h, tgt):
        if w is None:
            z = project(h).astype(jnp.float32)
        else:
            z = jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32)
        z = z * inv_temp
        lse = jax.nn.logsumexp(z, axis=-1)  # [B, c]
        z_tgt = jnp.take_along_axis(z, tgt[..., None].astype(jnp.int32), axis=-1)[..., 0]
        p = jnp.exp(z - lse[..., None])
        entropy = lse - jnp.sum(p * z, axis=-1)
        return z_tgt - lse, entropy

    logp, ent = jax.lax.map(lambda xs: body(weights, *xs), (hs, ts))  # [n, B, c] each
    logp = logp.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    ent = ent.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    return logp, ent
