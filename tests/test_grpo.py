"""grpo_step: exact micro-batching, REINFORCE gradient, KL, purity, sharding on a simulated 8-device mesh."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tina_jax
from tina_jax.rl.advantages import compute_advantages
from tina_jax.rl.grpo import GrpoConfig, grpo_step, make_grpo_step, sequence_logprobs
from tina_jax.rl.losses import LossConfig

from grpo_fixtures import CFG, G, P, make_batch, make_state


def _leaves_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("aggregation", ["token_mean", "microbatch_token_mean", "seq_mean_token_mean",
                                         "seq_sum_const"])
def test_micro_batching_equals_full_batch(aggregation):
    loss = LossConfig(aggregation=aggregation, beta=0.04, max_completion_length=6, tis_cap=2.0, microbatch_rows=G)
    state = make_state(optax.sgd(1.0))
    batch = make_batch()
    full_state, full_m = make_grpo_step(GrpoConfig(loss=loss, group_size=G), donate=False)(state, batch)
    for mbs in (2,):
        s, m = make_grpo_step(GrpoConfig(loss=loss, group_size=G, micro_batch_size=mbs), donate=False)(state, batch)
        _leaves_close(s.trainable, full_state.trainable, 1e-6)
        for k in full_m:
            assert abs(float(m[k]) - float(full_m[k])) <= 1e-6 * max(1.0, abs(float(full_m[k]))), k


def test_one_update_is_reinforce():
    """With old = stop_grad(current) the ratio is 1 and the update is -lr * grad of -(A * logp) token mean."""
    lr = 0.1
    state = make_state(optax.sgd(lr))
    batch = make_batch(with_sampler=False)
    new_state, m = make_grpo_step(GrpoConfig(loss=LossConfig(), group_size=G), donate=False)(state, batch)
    assert float(m["ratio_dev"]) == 0.0 and float(m["clip_fraction"]) == 0.0

    adv = np.asarray(compute_advantages(batch["rewards"], G, "grpo"))
    r = np.asarray(batch["rewards"]).reshape(-1, G)  # NumPy reference of the advantage formula
    want_adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)

    def reinforce(params):  # direct: full logits, no chunking
        ids = jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
        logits = tina_jax.forward(CFG, params, ids, mask)[:, P - 1:-1]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["completion_ids"][..., None], -1)[..., 0]
        cm = batch["completion_mask"]
        return -jnp.sum(adv[:, None] * logp * cm) / jnp.sum(cm)

    g = jax.grad(reinforce)(state.trainable)
    want = jax.tree.map(lambda p, gg: p - lr * gg, state.trainable, g)
    _leaves_close(new_state.trainable, want, 1e-6)
    cm = np.asarray(batch["completion_mask"])
    assert abs(float(m["loss"]) - float(-(adv[:, None] * cm).sum() / cm.sum())) < 1e-6  # ratio == 1


def test_kl_zero_when_policy_is_reference_and_positive_after_update():
    gc = GrpoConfig(loss=LossConfig(beta=0.04), group_size=G)
    step = make_grpo_step(gc, donate=False)
    state = make_state(optax.sgd(1.0))
    s1, m1 = step(state, make_batch())
    assert float(m1["kl"]) == 0.0
    _, m2 = step(s1, make_batch(seed=1))
    assert float(m2["kl"]) > 0.0


def test_sequence_logprobs_match_forward_and_temperature():
    state = make_state()
    batch = make_batch()
    lp, ent = sequence_logprobs(CFG, state.trainable, batch["prompt_ids"], batch["prompt_mask"],
                                batch["completion_ids"], batch["completion_mask"], chunk=4, temperature=0.7)
    ids = jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
    logits = np.asarray(tina_jax.forward(CFG, state.trainable, ids, mask))[:, P - 1:-1] / 0.7
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want = np.take_along_axis(logits, np.asarray(batch["completion_ids"])[..., None], -1)[..., 0] - logz
    np.testing.assert_allclose(np.asarray(lp), want, atol=1e-5)
    p = np.exp(logits - logz[..., None])
    np.testing.assert_allclose(np.asarray(ent), -(p * np.log(p)).sum(-1), atol=1e-4)


def test_step_is_pure():
    gc = GrpoConfig(loss=LossConfig(beta=0.04), group_size=G)
    step = make_grpo_step(gc, donate=False)
    state, batch = make_state(optax.sgd(1.0)), make_batch()
    a_state, a_m = step(state, batch)
    b_state, b_m = step(state, batch)
    _leaves_close((a_state.trainable, a_state.opt_state), (b_state.trainable, b_state.opt_state), 0.0)
    np.testing.assert_array_equal(jax.random.key_data(a_state.rng), jax.random.key_data(b_state.rng))
    assert {k: float(v) for k, v in a_m.items()} == {k: float(v) for k, v in b_m.items()}
    # unjitted call gives the same result (no hidden state in the jit wrapper)
    c_state, _ = grpo_step(state, batch, gc)
    _leaves_close(a_state.trainable, c_state.trainable, 1e-6)


def test_old_logprobs_and_clip_higher_take_effect():
    batch = make_batch()
    state = make_state(optax.sgd(1.0))
    lp, _ = sequence_logprobs(CFG, state.trainable, batch["prompt_ids"], batch["prompt_mask"],
                              batch["completion_ids"], batch["completion_mask"])
    shifted = dict(batch, old_logprobs=lp - 0.25)  # ratio = e^0.25 = 1.28
    _, m_sym = make_grpo_step(GrpoConfig(loss=LossConfig(clip_eps_high=0.2), group_size=G), donate=False)(state, shifted)
    _, m_hi = make_grpo_step(GrpoConfig(loss=LossConfig(clip_eps_high=0.3), group_size=G), donate=False)(state, shifted)
    adv = np.asarray(compute_advantages(batch["rewards"], G))
    cm = np.asarray(batch["completion_mask"])
    frac_pos = (cm * (adv[:, None] > 0)).sum() / cm.sum()
    assert abs(float(m_sym["clip_frac_high"]) - frac_pos) < 1e-6
    assert float(m_hi["clip_frac_high"]) == 0.0
    assert abs(float(m_sym["ratio_dev"]) - (np.exp(0.25) - 1)) < 1e-4


def test_bad_batches_raise_clear_errors():
    state, batch = make_state(), make_batch()
    gc = GrpoConfig(group_size=G)
    with pytest.raises(ValueError, match="completion_mask"):
        grpo_step(state, {k: v for k, v in batch.items() if k != "completion_mask"}, gc)
    with pytest.raises(ValueError, match="micro_batch_size 3"):
        grpo_step(state, batch, GrpoConfig(group_size=G, micro_batch_size=3))
    with pytest.raises(ValueError, match="group_size"):
        grpo_step(state, batch, GrpoConfig())
    with pytest.raises(ValueError, match="keep_reference"):
        grpo_step(make_state(keep_reference=False), batch, GrpoConfig(loss=LossConfig(beta=0.1), group_size=G))


def test_mesh_that_does_not_divide_is_an_error_naming_the_array():
    from tina_jax.sharding import tree_shardings

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    tree_shardings(make_state().trainable, mesh)  # 1 device: everything divides
    fake = type("M", (), {"shape": {"data": 1, "fsdp": 3, "tensor": 1}})()
    from tina_jax.sharding import spec_for
    with pytest.raises(ValueError, match=r"layers/q_proj.*does not divide mesh axis 'fsdp' of size 3"):
        spec_for("q_proj", (2, 32, 32), fake, "layers/q_proj")


def test_sharded_step_matches_one_device_on_8_simulated_devices():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), env_path()]))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("mesh_worker.py"))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"(8, 1, 1)", "(2, 2, 2)", "(1, 4, 2)"}
    for shape, diff in result.items():
        assert diff["params"] <= 1e-5 and diff["metrics"] <= 1e-5, (shape, diff)


def env_path() -> str:
    return os.environ.get("PYTHONPATH", "")


def test_trimming_padding_columns_does_not_change_the_step():
    from tina_jax.trainer import trim_padding

    batch = make_batch()
    # widen with extra all-padding columns: 11 on the prompt's left, 13 after the completions
    wide = dict(batch)
    for k in ("prompt_ids", "prompt_mask"):
        wide[k] = jnp.pad(batch[k], ((0, 0), (11, 0)))
    for k in ("completion_ids", "completion_mask", "sampler_logprobs"):
        wide[k] = jnp.pad(batch[k], ((0, 0), (0, 13)))
    trimmed = trim_padding(wide, multiple=4)
    assert trimmed["prompt_ids"].shape[1] == 8 and trimmed["completion_ids"].shape[1] == 8
    gc = GrpoConfig(loss=LossConfig(beta=0.04), group_size=G)
    step = make_grpo_step(gc, donate=False)
    a, ma = step(make_state(optax.sgd(1.0)), wide)
    b, mb = step(make_state(optax.sgd(1.0)), trimmed)
    _leaves_close(a.trainable, b.trainable, 1e-6)
    for k in ma:
        assert abs(float(ma[k]) - float(mb[k])) <= 1e-5, k


def _grouped_batch(seed: int = 0) -> dict:
    """make_batch with the G rows of each group sharing their prompt (as a rollout produces)."""
    batch = make_batch(seed)
    for k in ("prompt_ids", "prompt_mask"):
        batch[k] = jnp.repeat(batch[k][::G], G, axis=0)
    return batch


def test_shared_prompt_forward_equals_full_forward():
    state, batch = make_state(), _grouped_batch()
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    full, ent_full = sequence_logprobs(CFG, state.trainable, *args, chunk=4)
    shared, ent_shared = sequence_logprobs(CFG, state.trainable, *args, chunk=4, group_size=G)
    cm = np.asarray(batch["completion_mask"]).astype(bool)
    np.testing.assert_allclose(np.asarray(shared)[cm], np.asarray(full)[cm], atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent_shared)[cm], np.asarray(ent_full)[cm], atol=2e-5)


@pytest.mark.parametrize("micro", [None, G])
def test_shared_prompt_step_equals_unshared_step(micro):
    loss = LossConfig(beta=0.04)
    batch = _grouped_batch()
    a, ma = make_grpo_step(GrpoConfig(loss=loss, group_size=G), donate=False)(make_state(optax.sgd(1.0)), batch)
    b, mb = make_grpo_step(GrpoConfig(loss=loss, group_size=G, share_prompts=True, micro_batch_size=micro),
                           donate=False)(make_state(optax.sgd(1.0)), batch)
    _leaves_close(a.trainable, b.trainable, 2e-6)
    for k in ma:
        assert abs(float(ma[k]) - float(mb[k])) <= 2e-5 * max(1.0, abs(float(ma[k]))), k
    with pytest.raises(ValueError, match="whole groups"):
        GrpoConfig(group_size=G, share_prompts=True, micro_batch_size=G + 1)


@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_kl_and_logprobs_use_the_logprob_temperature(temp):
    """TRL 0.15.2 / Feb-2025 TRL (Tina, Open-RS) score log_softmax(logits) at T=1 although they sample at 0.7;
    verl scores logits / T. The k3 KL of grpo_step equals the NumPy formula on logits / logprob_temperature."""
    gc = GrpoConfig(loss=LossConfig(beta=0.04), group_size=G, logprob_temperature=temp)
    step = make_grpo_step(gc, donate=False)
    state = make_state(optax.sgd(1.0))
    s1, _ = step(state, make_batch())
    batch = make_batch(seed=1)
    _, m = step(s1, batch)
    ids = jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)

    def logp(params):
        z = np.asarray(tina_jax.forward(CFG, params, ids, mask), np.float64)[:, P - 1:-1] / temp
        z = z - z.max(-1, keepdims=True)
        lz = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return np.take_along_axis(lz, np.asarray(batch["completion_ids"])[..., None], -1)[..., 0]

    d = logp(state.trainable) - logp(s1.trainable)  # ref - policy
    cm = np.asarray(batch["completion_mask"])
    want = ((np.exp(d) - d - 1) * cm).sum() / cm.sum()
    assert want > 1e-6
    assert abs(float(m["kl"]) - want) <= 1e-4 * want + 1e-7


def test_microbatch_token_mean_is_open_rs_loss():
    """Open-RS's TRL (2025-02-25): loss = (per_token_loss * mask).sum() / mask.sum() on each device micro-batch
    (one group of G), averaged over micro-batches. With one update per rollout (ratio 1, no KL) the loss is
    mean_g [ -sum_{i in g} A_i n_i / N_g ], and it differs from one token mean over the step."""
    batch = make_batch(with_sampler=False)
    state = make_state(optax.sgd(0.1))
    adv = np.asarray(compute_advantages(batch["rewards"], G, "grpo"))
    n = np.asarray(batch["completion_mask"]).sum(1)
    want = np.mean([-(adv[g:g + G] * n[g:g + G]).sum() / n[g:g + G].sum() for g in range(0, len(n), G)])
    cfg = GrpoConfig(loss=LossConfig(aggregation="microbatch_token_mean", microbatch_rows=G), group_size=G,
                     micro_batch_size=2)  # interleaved accumulation chunks straddle the groups: still exact
    _, m = make_grpo_step(cfg, donate=False)(state, batch)
    assert abs(float(m["loss"]) - want) < 1e-6
    _, m_dapo = make_grpo_step(GrpoConfig(loss=LossConfig(), group_size=G), donate=False)(state, batch)
    assert abs(float(m_dapo["loss"]) - float(-(adv * n).sum() / n.sum())) < 1e-6
    assert abs(float(m_dapo["loss"]) - want) > 1e-3
