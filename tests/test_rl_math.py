"""GRPO math (tina_jax.rl) against direct NumPy implementations of the formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tina_jax.rl import (
    LossConfig,
    aggregate,
    chunked_logprobs,
    compute_advantages,
    finalize_loss,
    finalize_metrics,
    kl_per_token,
    per_token_loss,
    policy_loss,
    zero_advantage_group_fraction,
)

AGGS = ("token_mean", "seq_mean_token_mean", "seq_sum_const")
L_MAX = 9  # max_completion_length used with seq_sum_const


def cfg_for(aggregation, **kw):
    return LossConfig(aggregation=aggregation, max_completion_length=L_MAX, **kw)


def random_batch(seed, b=8, t=L_MAX, with_empty_row=True):
    """logp, old_logp, ref_logp, sampler_logp, adv [B], mask [B,T] (float64 numpy)."""
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, size=(b, t))
    old = logp + rng.normal(0, 0.25, size=(b, t))
    ref = logp + rng.normal(0, 0.3, size=(b, t))
    sampler = old + rng.normal(0, 0.5, size=(b, t))
    adv = rng.normal(size=b)
    lengths = rng.integers(1, t + 1, size=b)
    if with_empty_row:
        lengths[2] = 0
    mask = np.arange(t)[None, :] < lengths[:, None]
    return logp, old, ref, sampler, adv, mask


# ----------------------------------------------------------------------------- advantages


def np_advantages(rewards, g, mode, eps=1e-4):
    r = np.asarray(rewards, np.float64).reshape(-1, g)
    out = np.zeros_like(r)
    for k, grp in enumerate(r):
        for i in range(g):
            if mode == "grpo":
                out[k, i] = (grp[i] - grp.mean()) / (np.std(grp, ddof=1) + eps)
            elif mode == "drgrpo":
                out[k, i] = grp[i] - grp.mean()
            else:
                out[k, i] = grp[i] - np.mean(np.delete(grp, i))
    return out.reshape(-1)


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("g", [2, 6])
def test_advantages_match_numpy(mode, g):
    rng = np.random.default_rng(g)
    rewards = rng.normal(size=5 * g).astype(np.float32)
    rewards[:g] = 1.0  # one group with no signal
    rewards[g : 2 * g] = rng.integers(0, 2, size=g)  # binary rewards
    want = np_advantages(rewards, g, mode)
    got = compute_advantages(jnp.asarray(rewards), g, mode)
    assert got.shape == (5 * g,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got[:g]), 0.0)
    got2d = compute_advantages(jnp.asarray(rewards).reshape(5, g), g, mode)
    np.testing.assert_array_equal(np.asarray(got2d), np.asarray(got))
    jitted = jax.jit(functools.partial(compute_advantages, group_size=g, mode=mode))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(rewards))), want, rtol=1e-5, atol=1e-5)


def test_grpo_advantage_eps_and_ddof():
    # rewards (0, 1): mean 0.5, unbiased std sqrt(0.5); eps 0.1 changes the scale.
    got = compute_advantages(jnp.array([0.0, 1.0]), 2, "grpo", eps=0.1)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(np.asarray(got), [-0.5 / (s + 0.1), 0.5 / (s + 0.1)], rtol=1e-6)


def test_advantages_validation():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        compute_advantages(jnp.zeros(4), 1)
    with pytest.raises(ValueError, match="not a positive multiple"):
        compute_advantages(jnp.zeros(7), 4)
    with pytest.raises(ValueError, match="num_groups, group_size"):
        compute_advantages(jnp.zeros((3, 5)), 4)
    with pytest.raises(ValueError, match="unknown advantage mode"):
        compute_advantages(jnp.zeros(8), 4, "ppo")
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages(jnp.zeros((2, 2, 2)), 2)
    with pytest.raises(ValueError, match="not a positive multiple"):
        zero_advantage_group_fraction(jnp.zeros(5), 2)


def test_group_std_mean_is_trls_reward_std():
    from tina_jax.rl import group_std_mean

    r = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5, 0, 2, 0, 0], np.float32)
    want = np.mean([np.std(g, ddof=1) for g in r.reshape(4, 4)])  # torch .std() is unbiased
    np.testing.assert_allclose(float(group_std_mean(jnp.asarray(r), 4)), want, rtol=1e-6)
    assert abs(want - np.std(r)) > 0.05  # differs from the batch std, which is logged too


def test_zero_advantage_group_fraction():
    r = jnp.array([1, 1, 1, 0, 0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5, 0, 2, 0, 0], jnp.float32)
    np.testing.assert_allclose(float(zero_advantage_group_fraction(r, 4)), 1 / 4)
    np.testing.assert_allclose(float(zero_advantage_group_fraction(r.reshape(8, 2), 2)), 5 / 8)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(aggregation="mean"), "unknown aggregation"),
        (dict(clip_eps_low=-0.1), "clip_eps_low"),
        (dict(clip_eps_low=1.5), "clip_eps_low"),
        (dict(clip_eps_high=-0.2), "clip_eps_high"),
        (dict(beta=-0.04), "beta"),
        (dict(kl_estimator="k2"), "kl_estimator"),
        (dict(tis_cap=0.0), "tis_cap"),
        (dict(aggregation="seq_sum_const"), "max_completion_length"),
        (dict(max_completion_length=0), "max_completion_length"),
    ],
)
def test_loss_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_missing_inputs_raise():
    logp, old, ref, sampler, adv, mask = (jnp.asarray(x) for x in random_batch(0))
    with pytest.raises(ValueError, match="ref_logp"):
        per_token_loss(logp, old, adv, mask, LossConfig(beta=0.04))
    with pytest.raises(ValueError, match="sampler_logp"):
        per_token_loss(logp, old, adv, mask, LossConfig(tis_cap=2.0))
    with pytest.raises(ValueError, match="advantages"):
        per_token_loss(logp, old, adv[:3], mask, LossConfig())
    with pytest.raises(ValueError, match="old_logp"):
        per_token_loss(logp, old[:, :3], adv, mask, LossConfig())


# ----------------------------------------------------------------------------- per-token loss


def np_per_token(logp, old, adv, mask, *, el, eh, beta=0.0, est="k3", ref=None, cap=None, sampler=None):
    a = np.broadcast_to(adv[:, None], logp.shape)
    r = np.exp(logp - old)
    pg = -np.minimum(r * a, np.clip(r, 1 - el, 1 + eh) * a)
    if cap is not None:
        pg = pg * np.minimum(np.exp(old - sampler), cap)
    if beta:
        d = ref - logp
        kl = np.exp(d) - d - 1 if est == "k3" else logp - ref
        pg = pg + beta * kl
    return np.where(mask, pg, 0.0)


def np_aggregate(lt, mask, agg):
    lt = np.where(mask, lt, 0.0)
    n = mask.sum(1)
    if agg == "token_mean":
        return lt.sum() / n.sum()
    if agg == "seq_mean_token_mean":
        return np.mean(lt.sum(1) / np.maximum(n, 1))
    return lt.sum() / (mask.shape[0] * L_MAX)


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_per_token_loss_matches_numpy(est):
    logp, old, ref, sampler, adv, mask = random_batch(1)
    cfg = LossConfig(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04, kl_estimator=est)
    got, aux = per_token_loss(*(jnp.asarray(x) for x in (logp, old, adv, mask)), cfg, ref_logp=jnp.asarray(ref))
    want = np_per_token(logp, old, adv, mask, el=0.2, eh=0.28, beta=0.04, est=est, ref=ref)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["ratio"])[mask], np.exp(logp - old)[mask], rtol=1e-5)
    assert set(aux) == {"ratio", "is_clipped_low", "is_clipped_high", "is_clipped_dual", "kl"}


@pytest.mark.parametrize("agg", AGGS)
def test_aggregate_matches_numpy(agg):
    rng = np.random.default_rng(2)
    _, _, _, _, _, mask = random_batch(2)
    lt = rng.normal(size=mask.shape)
    s, d = aggregate(jnp.asarray(lt), jnp.asarray(mask), cfg_for(agg))
    np.testing.assert_allclose(float(finalize_loss(s, d)), np_aggregate(lt, mask, agg), rtol=1e-6, atol=1e-7)
    # seq_mean_token_mean counts every row (the empty row 2 included); others as documented.
    want_d = {"token_mean": mask.sum(), "seq_mean_token_mean": 8, "seq_sum_const": 8 * L_MAX}[agg]
    assert float(d) == want_d


def test_clip_higher_boundaries():
    el, eh, d = 0.2, 0.28, 1e-3
    ratios = np.array([1 - el - d, 1 - el + d, 1.0, 1 + eh - d, 1 + eh + d, 1 + 0.2 + d])
    t = ratios.size
    old = np.full((2, t), -1.0)
    logp = old + np.log(ratios)[None, :]
    adv = np.array([1.5, -0.7])  # row 0: A > 0, row 1: A < 0
    mask = np.ones((2, t), bool)
    cfg = LossConfig(clip_eps_low=el, clip_eps_high=eh)
    f = lambda lp: per_token_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg)
    loss, aux = f(jnp.asarray(logp))
    np.testing.assert_allclose(
        np.asarray(loss), np_per_token(logp, old, adv, mask, el=el, eh=eh), rtol=1e-5, atol=1e-6
    )
    # A > 0 clips only above 1 + eh (1.2 + d is NOT clipped with clip-higher 0.28).
    np.testing.assert_array_equal(np.asarray(aux["is_clipped_high"][0]), [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(aux["is_clipped_low"][0]), 0)
    # A < 0 clips only below 1 - el.
    np.testing.assert_array_equal(np.asarray(aux["is_clipped_low"][1]), [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(aux["is_clipped_high"][1]), 0)
    # Gradient: 0 where clipped, else -A * ratio.
    g = jax.grad(lambda lp: jnp.sum(f(lp)[0]))(jnp.asarray(logp))
    clipped = np.asarray(aux["is_clipped_high"] + aux["is_clipped_low"]) > 0
    np.testing.assert_allclose(
        np.asarray(g), np.where(clipped, 0.0, -adv[:, None] * ratios[None, :]), rtol=1e-5, atol=1e-7
    )
    # Symmetric clip 0.2 clips the 1.2 + d token for A > 0.
    _, aux_sym = per_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), LossConfig())
    np.testing.assert_array_equal(np.asarray(aux_sym["is_clipped_high"][0]), [0, 0, 0, 1, 1, 1])


def test_kl_estimators():
    logp, _, ref, _, _, _ = random_batch(3)
    d = ref - logp
    np.testing.assert_allclose(
        np.asarray(kl_per_token(jnp.asarray(logp), jnp.asarray(ref), "k3")), np.exp(d) - d - 1, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(kl_per_token(jnp.asarray(logp), jnp.asarray(ref), "k1")), logp - ref, rtol=1e-5, atol=1e-6
    )
    # KL = 0 when logp == ref, for both estimators, and k3's gradient vanishes there too.
    lp = jnp.asarray(logp, jnp.float32)
    for est in ("k1", "k3"):
        np.testing.assert_array_equal(np.asarray(kl_per_token(lp, lp, est)), 0.0)
    g = jax.grad(lambda x: jnp.sum(kl_per_token(x, lp, "k3")))(lp)
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)
    # Inside the loss: beta * kl is added per token, the KL metric is the token mean.
    _, old, _, _, adv, mask = random_batch(3)
    cfg = LossConfig(beta=0.5, aggregation="token_mean")
    args = [jnp.asarray(x) for x in (logp, old, adv, mask)]
    with_kl, _ = per_token_loss(*args, cfg, ref_logp=jnp.asarray(ref))
    no_kl, _ = per_token_loss(*args, LossConfig())
    np.testing.assert_allclose(
        np.asarray(with_kl - no_kl), np.where(mask, 0.5 * (np.exp(d) - d - 1), 0), rtol=1e-5, atol=1e-6
    )
    _, _, m = policy_loss(*args, cfg, ref_logp=jnp.asarray(ref))
    np.testing.assert_allclose(float(finalize_metrics(m)["kl"]), (np.exp(d) - d - 1)[mask].mean(), rtol=1e-5)


def test_truncated_importance_sampling():
    logp, old, _, sampler, adv, mask = random_batch(4)
    cap = 2.0
    w = np.minimum(np.exp(old - sampler), cap)
    assert (w[mask] == cap).any() and (w[mask] < 0.5).any()  # the cap binds; no lower floor
    cfg = LossConfig(tis_cap=cap, clip_eps_high=0.28)
    args = [jnp.asarray(x) for x in (logp, old, adv, mask)]
    got, aux = per_token_loss(*args, cfg, sampler_logp=jnp.asarray(sampler))
    want = np_per_token(logp, old, adv, mask, el=0.2, eh=0.28, cap=cap, sampler=sampler)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["tis_weight"])[mask], w[mask], rtol=1e-5)
    # The weight is a constant: gradient = w * (untruncated gradient).
    f = lambda c, s: lambda lp: jnp.sum(per_token_loss(lp, *args[1:], c, sampler_logp=s)[0])
    g_tis = jax.grad(f(cfg, jnp.asarray(sampler)))(args[0])
    g_plain = jax.grad(f(LossConfig(clip_eps_high=0.28), None))(args[0])
    np.testing.assert_allclose(np.asarray(g_tis), w * np.asarray(g_plain), rtol=1e-5, atol=1e-7)
    _, _, m = policy_loss(*args, cfg, sampler_logp=jnp.asarray(sampler))
    fm = finalize_metrics(m)
    np.testing.assert_allclose(float(fm["tis_weight"]), w[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(fm["tis_capped"]), (w[mask] >= cap).mean(), rtol=1e-6)


def test_padding_values_do_not_matter():
    logp, old, ref, sampler, adv, mask = random_batch(8)
    cfg = LossConfig(beta=0.04, tis_cap=2.0, aggregation="seq_mean_token_mean")

    def run(fill):
        dirty = [np.where(mask, x, fill) for x in (logp, old, ref, sampler)]
        lp, o, r, sp = (jnp.asarray(x, jnp.float32) for x in dirty)

        def f(lp):
            s, d, m = policy_loss(lp, o, jnp.asarray(adv), jnp.asarray(mask), cfg, ref_logp=r, sampler_logp=sp)
            return finalize_loss(s, d), m

        return jax.value_and_grad(f, has_aux=True)(lp)

    (v0, m0), g0 = run(0.0)
    for fill in (np.nan, -np.inf, 50.0):
        (v, m), g = run(fill)
        assert np.isfinite(float(v)) and np.isfinite(np.asarray(g)).all()
        np.testing.assert_array_equal(float(v), float(v0))
        np.testing.assert_array_equal(np.asarray(g), np.asarray(g0))
        for k in m0:
            np.testing.assert_array_equal(float(m[k]), float(m0[k]))
    np.testing.assert_array_equal(np.asarray(g0)[~mask], 0.0)


# ----------------------------------------------------------------------------- micro-batching


@functools.lru_cache(maxsize=None)
def _loss_and_grad(cfg):
    """jit(value_and_grad) of the summed policy loss w.r.t. logp, with (denom, metrics) aux."""

    def sums(lp, old, adv, mask, ref, sampler):
        s, d, m = policy_loss(lp, old, adv, mask, cfg, ref_logp=ref, sampler_logp=sampler)
        return s, (d, m)

    return jax.jit(jax.value_and_grad(sums, has_aux=True))


@pytest.mark.parametrize("agg", AGGS)
def test_microbatches_equal_full_batch(agg):
    batch = [jnp.asarray(x, jnp.float32) for x in random_batch(5)]
    logp, old, ref, sampler, adv, mask = batch
    cfg = cfg_for(agg, clip_eps_high=0.28, beta=0.04, tis_cap=2.0)
    f = _loss_and_grad(cfg)
    (s, (d, m)), g = f(logp, old, adv, mask, ref, sampler)
    want_loss = np_aggregate(
        np_per_token(
            *(np.asarray(x, np.float64) for x in (logp, old, adv)), np.asarray(mask) != 0,
            el=0.2, eh=0.28, beta=0.04, ref=np.asarray(ref, np.float64), cap=2.0,
            sampler=np.asarray(sampler, np.float64),
        ),
        np.asarray(mask) != 0, agg,
    )
    np.testing.assert_allclose(float(finalize_loss(s, d)), want_loss, rtol=1e-5)
    full_grad = np.asarray(g / jnp.maximum(d, 1.0))
    fm = finalize_metrics(m)
    assert set(fm) == {"tokens", "clip_low", "clip_high", "clip_dual", "ratio_dev", "kl", "tis_weight", "tis_capped"}

    # Row-wise micro-batches of whole completions: 2, 3 and 4 pieces, equal and unequal sizes.
    for splits in ([4, 4], [2, 2, 2, 2], [2, 4, 2]):
        bounds = np.cumsum([0] + splits)
        tot_s, tot_d, grads, tot_m = 0.0, 0.0, [], None
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            (sk, (dk, mk)), gk = f(*(x[lo:hi] for x in (logp, old, adv, mask, ref, sampler)))
            tot_s, tot_d = tot_s + sk, tot_d + dk
            grads.append(gk)
            tot_m = mk if tot_m is None else jax.tree.map(jnp.add, tot_m, mk)
        np.testing.assert_allclose(
            float(finalize_loss(tot_s, tot_d)), float(finalize_loss(s, d)), rtol=1e-6, atol=1e-7
        )
        micro_grad = np.asarray(jnp.concatenate(grads, axis=0) / jnp.maximum(tot_d, 1.0))
        np.testing.assert_allclose(micro_grad, full_grad, rtol=1e-6, atol=1e-7)
        fm_micro = finalize_metrics(tot_m)
        for k in fm:
            np.testing.assert_allclose(float(fm_micro[k]), float(fm[k]), rtol=1e-6, atol=1e-7)


def test_metrics_match_numpy():
    logp, old, _, _, adv, mask = random_batch(6)
    el, eh = 0.1, 0.15
    _, _, m = policy_loss(*(jnp.asarray(x) for x in (logp, old, adv, mask)), LossConfig(clip_eps_low=el, clip_eps_high=eh))
    fm = finalize_metrics(m)
    r = np.exp(logp - old)
    a = np.broadcast_to(adv[:, None], r.shape)
    assert float(fm["tokens"]) == mask.sum()
    np.testing.assert_allclose(float(fm["clip_low"]), ((a < 0) & (r < 1 - el))[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(fm["clip_high"]), ((a > 0) & (r > 1 + eh))[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(fm["ratio_dev"]), np.abs(r - 1)[mask].mean(), rtol=1e-5)
    assert float(fm["clip_low"]) > 0 and float(fm["clip_high"]) > 0


# ----------------------------------------------------------------------------- REINFORCE limit


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("old_is_none", [True, False])
def test_one_update_is_reinforce(agg, old_is_none):
    logp, _, _, _, adv, mask = random_batch(7)
    logp_j, adv_j, mask_j = jnp.asarray(logp, jnp.float32), jnp.asarray(adv), jnp.asarray(mask)
    cfg = cfg_for(agg, clip_eps_low=0.0, clip_eps_high=0.0)  # clip inert at ratio == 1 even with eps 0

    def loss(lp):
        old = None if old_is_none else jax.lax.stop_gradient(lp)
        s, d, m = policy_loss(lp, old, adv_j, mask_j, cfg)
        return finalize_loss(s, d), m

    (val, m), g = jax.value_and_grad(loss, has_aux=True)(logp_j)
    assert float(m["ratio_dev"]) == 0.0 and float(m["clip_low"]) == 0 and float(m["clip_high"]) == 0
    n = mask.sum(1, keepdims=True)
    norm = {"token_mean": mask.sum(), "seq_mean_token_mean": 8 * np.maximum(n, 1), "seq_sum_const": 8 * L_MAX}[agg]
    want = -adv[:, None] * mask / norm
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(val), np_aggregate(-adv[:, None] * np.ones_like(logp), mask, agg), rtol=1e-5)


# ----------------------------------------------------------------------------- chunked logprobs


@functools.partial(jax.jit, static_argnums=3)
def direct_logprobs(hidden, w, targets, temperature):
    z = jnp.einsum("btd,dv->btv", hidden, w) / temperature
    lsm = jax.nn.log_softmax(z, axis=-1)
    logp = jnp.take_along_axis(lsm, targets[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(lsm) * lsm, axis=-1)


@pytest.mark.parametrize(
    "chunk_size, use_callable", [(1, False), (3, False), (16, False), (3, True)]
)
def test_chunked_logprobs_match_direct(chunk_size, use_callable):
    b, t, d, v, temp = 2, 7, 8, 33, 0.7  # T = 7 is not a multiple of 3 or 16
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(k1, (b, t, d))
    w = jax.random.normal(k2, (d, v)) * 0.5
    targets = jax.random.randint(k3, (b, t), 0, v)
    cot = jax.random.normal(k4, (2, b, t))  # random cotangents for logp and entropy

    def chunked(h, w):
        head = (lambda x: x @ w) if use_callable else w
        return chunked_logprobs(h, head, targets, chunk_size, temperature=temp)

    def direct(h, w):
        return direct_logprobs(h, w, targets, temp)  # full [B, T, V] logits

    def scalar(fn):
        return lambda h, w: jnp.sum(cot[0] * fn(h, w)[0]) + jnp.sum(cot[1] * fn(h, w)[1])

    got = jax.jit(chunked)(hidden, w)
    want = jax.jit(direct)(hidden, w)
    assert got[0].shape == (b, t) and got[0].dtype == jnp.float32
    for gx, wx in zip(got, want):
        np.testing.assert_allclose(np.asarray(gx), np.asarray(wx), rtol=1e-5, atol=1e-5)
    # The direct version itself against NumPy (float64).
    z = np.asarray(hidden, np.float64) @ np.asarray(w, np.float64) / temp
    zmax = z.max(-1, keepdims=True)
    lsm = z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))
    np_logp = np.take_along_axis(lsm, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(got[0]), np_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got[1]), -(np.exp(lsm) * lsm).sum(-1), rtol=1e-5, atol=1e-5)

    g_got = jax.jit(jax.grad(scalar(chunked), argnums=(0, 1)))(hidden, w)
    g_want = jax.jit(jax.grad(scalar(direct), argnums=(0, 1)))(hidden, w)
    for gx, wx in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(gx), np.asarray(wx), rtol=1e-5, atol=1e-5)


def test_chunked_logprobs_validation():
    h, w, tg = jnp.zeros((1, 4, 3)), jnp.zeros((3, 5)), jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(h, w, tg, 0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs(h, w, tg, 2, temperature=0.0)
    with pytest.raises(ValueError, match="lm_head"):
        chunked_logprobs(h, jnp.zeros((4, 5)), tg, 2)
    with pytest.raises(ValueError, match="targets"):
        chunked_logprobs(h, w, tg[:, :3], 2)


def test_microbatch_token_mean_matches_open_rs_formula():
    """Open-RS's TRL: each device micro-batch (blocks of R consecutive rows) takes its own token mean,
    the step averages them; exact for any row split given the whole-batch block counts."""
    from tina_jax.rl.losses import block_token_counts

    rng = np.random.default_rng(3)
    _, _, _, _, _, mask = random_batch(3, b=8)
    lt = rng.normal(size=mask.shape)
    cfg = LossConfig(aggregation="microbatch_token_mean", microbatch_rows=4)
    want = np.mean([np.where(mask, lt, 0)[k:k + 4].sum() / mask[k:k + 4].sum() for k in (0, 4)])
    s, d = aggregate(jnp.asarray(lt), jnp.asarray(mask), cfg)
    assert float(d) == 2.0
    np.testing.assert_allclose(float(finalize_loss(s, d)), want, rtol=1e-6)
    blocks = block_token_counts(jnp.asarray(mask), 4)
    tot_s = tot_d = 0.0
    for rows in ([0, 5], [1, 2, 6], [3, 4, 7]):  # accumulation chunks that cut across the blocks
        sk, dk = aggregate(jnp.asarray(lt[rows]), jnp.asarray(mask[rows]), cfg, blocks[np.asarray(rows)])
        tot_s, tot_d = tot_s + sk, tot_d + dk
    np.testing.assert_allclose(float(finalize_loss(tot_s, tot_d)), want, rtol=1e-6)
    with pytest.raises(ValueError, match="microbatch_rows"):
        LossConfig(aggregation="microbatch_token_mean")


def test_dual_clip_matches_verl():
    """verl compute_policy_loss_vanilla with clip_ratio_c = 3: for A < 0 the clipped loss max(-rA, -clip(r)A)
    is capped at -cA (zero gradient there); A > 0 is unchanged."""
    el, eh, c = 0.2, 0.4, 3.0
    ratios = np.array([0.5, 1.0, 1.3, 2.9, 3.1, 8.0])
    old = np.full((2, ratios.size), -1.0)
    logp = old + np.log(ratios)[None]
    adv = np.array([0.8, -1.3])
    mask = np.ones(logp.shape, bool)
    a = adv[:, None]
    pg1, pg2 = -a * ratios, -a * np.clip(ratios, 1 - el, 1 + eh)
    c1 = np.maximum(pg1, pg2)
    want = np.where(a < 0, np.minimum(-a * c, c1), c1)
    cfg = LossConfig(clip_eps_low=el, clip_eps_high=eh, dual_clip=c)
    f = lambda lp: per_token_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg)  # noqa: E731
    got, aux = f(jnp.asarray(logp))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["is_clipped_dual"]), [[0] * 6, [0, 0, 0, 0, 1, 1]])
    g = np.asarray(jax.grad(lambda lp: jnp.sum(f(lp)[0]))(jnp.asarray(logp)))
    assert g[1, 4] == 0.0 and g[1, 5] == 0.0 and g[1, 3] != 0.0
    no_dual, _ = per_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                LossConfig(clip_eps_low=el, clip_eps_high=eh))
    np.testing.assert_allclose(np.asarray(no_dual), c1, rtol=1e-5)
    with pytest.raises(ValueError, match="dual_clip"):
        LossConfig(dual_clip=1.0)
