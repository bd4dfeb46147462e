"""Group-relative advantages for GRPO and its variants.

Rewards come in group-major order: the ``G`` completions of prompt 0, then the ``G`` of
prompt 1, and so on, either flat (``f32[num_groups * G]``) or already grouped
(``f32[num_groups, G]``). Every completion gets one scalar advantage; the loss broadcasts
it over the completion's tokens.

Modes (``r`` = rewards of one group, ``G`` = group size):

* ``"grpo"``   ``(r_i - mean(r)) / (std(r) + eps)`` with the unbiased std (ddof=1), as in
  TRL's GRPOTrainer (Tina, Open-RS; RECIPES.md section 2, eps = 1e-4).
* ``"drgrpo"`` ``r_i - mean(r)`` (Dr. GRPO; the warm-up paper, RECIPES.md section 7).
* ``"rloo"``   ``r_i - mean_{j != i} r_j`` (leave-one-out baseline), which equals
  ``G / (G - 1) * (r_i - mean(r))``.

All functions are pure ``jnp`` and jit-able with ``group_size`` and ``mode`` static;
shape problems raise ``ValueError`` at trace time.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

AdvantageMode = Literal["grpo", "drgrpo", "rloo"]
ADVANTAGE_MODES: tuple[str, ...] = ("grpo", "drgrpo", "rloo")

__all__ = [
    "ADVANTAGE_MODES",
    "AdvantageMode",
    "compute_advantages",
    "group_std_mean",
    "zero_advantage_group_fraction",
]


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    """Validates ``rewards`` and returns them as ``f32[num_groups, group_size]``."""
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise ValueError(f"group_size must be a Python int, got {group_size!r}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 for group-relative advantages, got {group_size}; "
            "sample at least 2 completions per prompt"
        )
    rewards = jnp.asarray(rewards, dtype=jnp.float32)
    if rewards.ndim == 2:
        if rewards.shape[1] != group_size:
            raise ValueError(
                f"rewards has shape {rewards.shape} but group_size={group_size}; a 2-D "
                "rewards array must be [num_groups, group_size]"
            )
        return rewards
    if rewards.ndim != 1:
        raise ValueError(
            f"rewards must be 1-D [num_groups * group_size] or 2-D [num_groups, group_size], "
            f"got shape {rewards.shape}"
        )
    n = rewards.shape[0]
    if n == 0 or n % group_size != 0:
        raise ValueError(
            f"rewards has {n} entries, which is not a positive multiple of "
            f"group_size={group_size}; pass all G completions of every prompt, group-major"
        )
    return rewards.reshape(n // group_size, group_size)


def compute_advantages(
    rewards: jax.Array,
    group_size: int,
    mode: AdvantageMode = "grpo",
    eps: float = 1e-4,
) -> jax.Array:
    """Per-completion advantages from group-major rewards.

    Args:
      rewards: ``f32[num_groups * G]`` or ``f32[num_groups, G]``, group-major.
      group_size: ``G`` (>= 2), static.
      mode: ``"grpo"``, ``"drgrpo"`` or ``"rloo"`` (see the module docstring), static.
      eps: added to the std in ``"grpo"`` mode (TRL uses 1e-4); unused otherwise.

    Returns:
      ``f32[num_groups * G]`` in the same group-major order. A group whose rewards are all
      equal gets advantage 0 for every member in every mode.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; expected one of {ADVANTAGE_MODES}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = _grouped(rewards, group_size)
    mean = jnp.mean(r, axis=1, keepdims=True)
    centred = r - mean
    if mode == "grpo":
        std = jnp.std(r, axis=1, keepdims=True, ddof=1)
        adv = centred / (std + eps)
    elif mode == "drgrpo":
        adv = centred
    else:  # rloo: r_i - (sum_j r_j - r_i) / (G - 1) == G / (G - 1) * (r_i - mean)
        adv = centred * (group_size / (group_size - 1))
    return adv.reshape(-1)


def zero_advantage_group_fraction(rewards: jax.Array, group_size: int) -> jax.Array:
    """Fraction of groups whose rewards are all exactly equal (no learning signal).

    Args:
      rewards: ``f32[num_groups * G]`` or ``f32[num_groups, G]``, group-major.
      group_size: ``G`` (>= 2), static.

    Returns:
      ``f32[]`` in [0, 1]: the share of prompts whose G completions all got the same reward
      (compared exactly: max == min), so all their advantages are 0.
    """
    r = _grouped(rewards, group_size)
    flat = jnp.max(r, axis=1) == jnp.min(r, axis=1)
    return jnp.mean(flat.astype(jnp.float32))


def group_std_mean(rewards: jax.Array, group_size: int) -> jax.Array:
    """Mean over groups of each group's unbiased (N - 1) reward std: TRL's logged ``reward_std``
    (``std_grouped_rewards.mean()``), beside the std of the whole batch. ``f32[]``."""
    r = _grouped(rewards, group_size)
    return jnp.mean(jnp.std(r, axis=1, ddof=1))
