"""A tiny model, state and batch for grpo_step tests (shared by tests/test_grpo.py and the mesh worker).

Dimensions divide every mesh the tests use (data/fsdp/tensor up to 8/4/2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tina_jax
from tina_jax.rl.grpo import init_state

CFG = tina_jax.ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)
B, P, C, G = 8, 5, 6, 4


def make_batch(seed: int = 0, with_sampler: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, C + 1, (B, 1))
    batch = dict(
        prompt_ids=rng.integers(0, CFG.vocab_size, (B, P)).astype(np.int32),
        prompt_mask=np.ones((B, P), np.int32),
        completion_ids=rng.integers(0, CFG.vocab_size, (B, C)).astype(np.int32),
        completion_mask=(np.arange(C)[None] < lengths).astype(np.int32),
        rewards=rng.normal(size=B).astype(np.float32),
    )
    batch["prompt_mask"][1, :2] = 0  # left padding
    batch["prompt_mask"][5, :3] = 0
    if with_sampler:
        batch["sampler_logprobs"] = (rng.normal(size=(B, C)) - 3).astype(np.float32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def make_state(tx=None, keep_reference: bool = True, seed: int = 0):
    params = tina_jax.init_params(CFG, jax.random.key(seed))
    return init_state(CFG, params, tx or optax.adamw(1e-2), jax.random.key(seed + 1), keep_reference=keep_reference)
