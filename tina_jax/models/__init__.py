"""Decoder-only transformers (Llama, Qwen2/2.5, Qwen3) as pure functions of a parameter pytree."""
from tina_jax.models.config import ModelConfig
from tina_jax.models.decoder import (
    forward, forward_cached, hidden_states, init_cache, init_params, lm_head, logits_from_hidden,
    param_shapes, positions_from_mask,
)
from tina_jax.models.loading import REGISTRY, CheckpointError, Model, load_config, load_model

__all__ = [
    "ModelConfig", "Model", "CheckpointError", "REGISTRY", "load_model", "load_config", "forward",
    "forward_cached", "hidden_states", "init_cache", "init_params", "lm_head", "logits_from_hidden",
    "param_shapes", "positions_from_mask",
]
