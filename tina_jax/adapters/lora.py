"""LoRA [Hu et al. 2021] as PEFT initialises and scales it.

For a kernel K [in, out] (y = x @ K): K' = K + scale * A B with A [in, r], B [r, out],
scale = alpha / r (or alpha / sqrt(r) with rsLoRA). PEFT stores ``lora_A.weight`` = A^T [r, in] and
``lora_B.weight`` = B^T [out, r] and initialises ``nn.init.kaiming_uniform_(lora_A.weight, a=sqrt(5))``:
gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), fan_in = in, bound = sqrt(3) * gain / sqrt(fan_in) = 1 / sqrt(in),
so A ~ U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the initial update is exactly zero.

Pure functions over arrays; ``tina_jax.adapters.core`` wires them into the ``Adapter`` API.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tina_jax.models.linear import LowRank

DEFAULTS = dict(r=32, alpha=128.0, dropout=0.05, use_rslora=False)  # Tina (RECIPES.md section 3)


def kaiming_uniform_bound(fan_in: int, a: float = math.sqrt(5)) -> float:
    """torch.nn.init.kaiming_uniform_'s bound for leaky_relu gain with slope ``a``."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return math.sqrt(3.0) * gain / math.sqrt(fan_in)


def init_factors(rng: jax.Array, num_layers: int, d_in: int, d_out: int, r: int) -> dict:
    """{"a": fp32 [L, in, r] Kaiming-uniform (PEFT), "b": fp32 zeros [L, r, out]}."""
    bound = kaiming_uniform_bound(d_in)
    a = jax.random.uniform(rng, (num_layers, d_in, r), jnp.float32, -bound, bound)
    return {"a": a, "b": jnp.zeros((num_layers, r, d_out), jnp.float32)}


def container(base: jax.Array, factors: dict, scale: float, dropout_key=None, dropout: float = 0.0) -> LowRank:
    """The LowRank container for one stacked kernel base [L, in, out] (dropout keys [L] or None)."""
    return LowRank(base=base, a=factors["a"], b=factors["b"], scale=scale,
                   dropout_key=dropout_key, dropout_rate=float(dropout) if dropout_key is not None else 0.0)


def count(num_layers: int, d_in: int, d_out: int, r: int) -> int:
    return num_layers * r * (d_in + d_out)
