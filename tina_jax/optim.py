"""Optimizer and learning-rate schedule from the run config (optax), applied to the trainable pytree only.

``cosine_with_min_lr`` reproduces transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (as
Tina and Open-RS ran it, RECIPES.md section 2): linear warm-up from 0 over ``ceil(warmup_ratio * N)``
steps, then cosine decay from ``lr`` to ``min_lr_ratio * lr`` at step ``N`` (``N = schedule_steps``, which
Tina sets to twice the steps it actually ran). optax passes the update count starting at 0, like the
HF LambdaLR, so the first update uses the schedule's value at 0.

The schedule advances once per rollout (``optim.schedule_unit: rollout``, verl's ``lr_scheduler.step()``
after all optimizer updates of one rollout batch) or once per optimizer update (``update``). With one update
per rollout (Tina, Open-RS: TRL's one update per generation batch) both are the same. Warm-up lasts
``optim.warmup_steps`` schedule steps when set, else ``ceil(warmup_ratio * N)`` (HF's rounding; verl
takes ``int(ratio * N)``, so its recipe sets ``warmup_steps``).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def lr_schedule(lr: float, schedule: str, total_steps: int, warmup_ratio: float = 0.0,
                min_lr_ratio: float = 0.0, warmup_steps: int | None = None) -> optax.Schedule:
    """A learning-rate schedule ``step -> lr`` (see module docstring)."""
    warmup = math.ceil(warmup_ratio * total_steps) if warmup_steps is None else int(warmup_steps)

    def warm(step):
        return lr * step / max(1, warmup)

    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "constant_with_warmup":
        return lambda step: jnp.where(step < warmup, warm(step), lr)
    if schedule == "cosine_with_min_lr":
        def fn(step):
            progress = (step - warmup) / max(1, total_steps - warmup)
            cos = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
            return jnp.where(step < warmup, warm(step), lr * cos)
        return fn
    raise ValueError(f"unknown schedule {schedule!r}; use cosine_with_min_lr, constant or constant_with_warmup")


def update_schedule(optim, max_steps: int, updates_per_rollout: int = 1) -> optax.Schedule:
    """The rate of each optimizer update, ``update count -> lr`` (what optax applies): the configured
    schedule indexed by rollouts (``update // updates_per_rollout``) or by updates (``schedule_unit``)."""
    total = optim.schedule_steps or max_steps
    if optim.schedule_unit == "update":
        total *= updates_per_rollout  # max_steps counts rollouts
    sched = lr_schedule(optim.lr, optim.schedule, total, optim.warmup_ratio, optim.min_lr_ratio,
                        getattr(optim, "warmup_steps", None))
    if optim.schedule_unit == "update" or updates_per_rollout == 1:
        return sched
    return lambda count: sched(count // updates_per_rollout)


def build_optimizer(optim, max_steps: int, updates_per_rollout: int = 1) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping, from an ``OptimSection`` (tina_jax.config); ``max_steps``
    counts rollouts, each followed by ``updates_per_rollout`` optimizer updates."""
    sched = update_schedule(optim, max_steps, updates_per_rollout)
    parts = []
    if optim.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.max_grad_norm))
    parts.append(optax.adamw(sched, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*parts)
