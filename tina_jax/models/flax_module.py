"""The decoder as a thin ``flax.nnx`` module over the same parameter pytree (no copy).

The model is a pure function (``forward(config, params, ids, mask)``); users of Flax tooling can hold
and call it as a module instead::

    from tina_jax.models.flax_module import TinaLM
    lm = TinaLM.from_model(model)                    # or TinaLM(config, params), params may be adapted
    logits = lm(input_ids, attention_mask)           # == forward(config, params, input_ids, attention_mask)
    graphdef, state = nnx.split(lm)                  # state: the same arrays, wrapped in nnx.Param
    opt = nnx.Optimizer(lm, optax.adamw(1e-5), wrt=nnx.Param)
    params = lm.pytree()                             # back to the plain pytree (no copy)

Each array leaf of ``params`` (adapter containers included: their factors become leaves too) is wrapped
in an ``nnx.Param`` that references the same ``jax.Array``; ``__call__`` unwraps them and calls
:func:`tina_jax.models.forward`, so there is exactly one implementation of the model.
"""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from tina_jax.models.config import ModelConfig
from tina_jax.models.decoder import forward

__all__ = ["TinaLM"]


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class TinaLM(nnx.Module):
    """``forward`` as an nnx module; ``config`` is static, ``params`` are ``nnx.Param`` leaves."""

    def __init__(self, config: ModelConfig, params: Any):
        self.config = config
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    @classmethod
    def from_model(cls, model: Any, params: Any = None) -> "TinaLM":
        """From ``load_model``'s result (``params`` replaces its weights, e.g. adapted ones)."""
        return cls(model.config, model.params if params is None else params)

    def pytree(self) -> Any:
        """The plain parameter pytree ``forward`` takes (the arrays themselves, not copies)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_var)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """float32 logits ``[B, T, vocab]`` (see :func:`tina_jax.models.forward`)."""
        return forward(self.config, self.pytree(), input_ids, attention_mask)
