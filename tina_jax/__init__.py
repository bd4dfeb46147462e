"""tina_jax: teach small language models to reason with RL (GRPO + LoRA/TinyLoRA), in JAX.

Public names are imported lazily, so light submodules (e.g. ``tina_jax.rewards`` in checker worker
processes) do not pay for importing JAX.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "load_model": "tina_jax.models", "load_config": "tina_jax.models", "forward": "tina_jax.models",
    "init_params": "tina_jax.models", "Model": "tina_jax.models", "ModelConfig": "tina_jax.models",
    "CheckpointError": "tina_jax.models",
    # RL
    "grpo_step": "tina_jax.rl.grpo", "make_grpo_step": "tina_jax.rl.grpo", "init_state": "tina_jax.rl.grpo",
    "TrainState": "tina_jax.rl.grpo", "GrpoConfig": "tina_jax.rl.grpo", "LossConfig": "tina_jax.rl.losses",
    "compute_advantages": "tina_jax.rl.advantages", "policy_params": "tina_jax.rl.grpo",
    # sampling
    "generate": "tina_jax.sampling", "SamplingConfig": "tina_jax.sampling", "Generation": "tina_jax.sampling",
    # evaluation
    "evaluate": "tina_jax.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tina_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
