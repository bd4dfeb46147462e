"""Optimizer and learning-rate schedule from the run config (optax), applied to the trainable pytree only.

``cosine_with_min_lr`` reproduces transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (as
Tina and Open-RS ran it, RECIPES.md section 2): linear warm-up from 0 over ``ceil(warmup_ratio * N)``
steps, then cosine decay from ``lr`` to ``min_lr_ratio * lr`` at step ``N`` (``N = schedule_steps``, which
Tina sets to twice the steps it actually ran). optax passes the update count starting at 0, like the
HF LambdaLR, so the first update uses the schedule's value at 0.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def lr_schedule(lr: float, schedule: str, total_steps: int, warmup_ratio: float = 0.0,
                min_lr_ratio: float = 0.0) -> optax.Schedule:
    """A learning-rate schedule ``step -> lr`` (see module docstring)."""
    warmup = math.ceil(warmup_ratio * total_steps)

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


def build_optimizer(optim, max_steps: int) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping, from an ``OptimSection`` (tina_jax.config)."""
    total = optim.schedule_steps or max_steps
    sched = lr_schedule(optim.lr, optim.schedule, total, optim.warmup_ratio, optim.min_lr_ratio)
    parts = []
    if optim.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.max_grad_norm))
    parts.append(optax.adamw(sched, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*parts)
