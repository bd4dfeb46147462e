"""tina_jax: teach small language models to reason with RL (GRPO + LoRA/TinyLoRA), in JAX."""
from tina_jax.models import (
    CheckpointError, Model, ModelConfig, forward, init_params, load_config, load_model,
)

__version__ = "0.1.0"
__all__ = ["load_model", "load_config", "forward", "init_params", "Model", "ModelConfig", "CheckpointError"]
