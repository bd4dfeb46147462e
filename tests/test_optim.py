"""Learning-rate schedules: HF's cosine_with_min_lr and verl's constant-with-warm-up stepped once per rollout."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tina_jax import optim
from tina_jax.config import load_config


def _verl_constant_with_warmup(step: int, warmup: int) -> float:
    # verl/utils/torch_functional.py get_constant_schedule_with_warmup: LambdaLR factor per scheduler step
    return step / max(1.0, warmup) if step < warmup else 1.0


def test_verl_schedule_steps_once_per_rollout_and_adam_applies_it():
    """TinyLoRA (verl): 348 rollouts x 2 optimizer updates, warm-up int(0.05 x 348) = 17 scheduler steps, and
    lr_scheduler.step() once per rollout: both updates of rollout s use lr x min(1, s / 17)."""
    o = load_config(None, ["optim.lr=0.01", "optim.schedule=constant_with_warmup", "optim.warmup_steps=17",
                           "optim.weight_decay=0.0", "optim.max_grad_norm=null"]).optim
    sched = optim.update_schedule(o, 348, updates_per_rollout=2)
    for update in range(0, 60):
        assert float(sched(update)) == pytest.approx(0.01 * _verl_constant_with_warmup(update // 2, 17), rel=1e-6, abs=1e-12)
    # per-update stepping (the old behaviour) ends warm-up after 9 rollouts instead
    per_update = optim.update_schedule(o.__class__(**{**o.__dict__, "schedule_unit": "update"}), 348, 2)
    assert float(per_update(17)) == pytest.approx(0.01) and float(sched(17)) < 0.01
    # Adam with a constant gradient moves a parameter by ~lr per update: the applied rates are the schedule's
    tx = optim.build_optimizer(o, 348, updates_per_rollout=2)
    p = jnp.zeros(())
    st = tx.init(p)
    moves = []
    for _ in range(40):
        upd, st = tx.update(jnp.ones(()), st, p)
        moves.append(-float(upd))
        p = optax.apply_updates(p, upd)
    want = [0.01 * _verl_constant_with_warmup(u // 2, 17) for u in range(40)]
    np.testing.assert_allclose(moves, want, rtol=1e-5, atol=1e-9)


def test_hf_cosine_with_min_lr_matches_transformers_formula():
    """transformers get_cosine_with_min_lr_schedule_with_warmup: warm-up ceil(0.1 x N), cosine to 10%."""
    o = load_config(None, ["optim.lr=1e-6", "optim.schedule=cosine_with_min_lr", "optim.warmup_ratio=0.1",
                           "optim.min_lr_ratio=0.1"]).optim
    n = 1500
    sched = optim.update_schedule(o, n)
    warm = math.ceil(0.1 * n)
    for s in (0, 1, 149, 150, 151, 800, 1499, 1500):
        if s < warm:
            want = s / warm
        else:
            prog = (s - warm) / (n - warm)
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))
        assert float(sched(s)) == pytest.approx(1e-6 * want, rel=1e-5), s
