"""The one matmul every projection goes through, and the low-rank weight containers adapters build.

A projection kernel is stored as ``[in, out]`` so ``y = x @ K``. Adapters (``tina_jax.adapters``) replace
a kernel in the parameter pytree with a container; ``dense`` computes the adapted product without ever
forming the full-size update, so gradients exist only for the small factors.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LowRank:
    """K' = base + scale * a @ b  (LoRA).  base [..., in, out], a [..., in, r], b [..., r, out]."""

    base: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = struct.field(pytree_node=False, default=1.0)

    def dense(self, x: jax.Array, dtype) -> jax.Array:
        y = x @ self.base.astype(dtype)
        return y + (self.scale * ((x @ self.a.astype(dtype)) @ self.b.astype(dtype))).astype(y.dtype)

    def merged(self) -> jax.Array:
        upd = self.scale * (self.a.astype(jnp.float32) @ self.b.astype(jnp.float32))
        return (self.base.astype(jnp.float32) + upd).astype(self.base.dtype)


@struct.dataclass
class SvdCore:
    """K' = base + scale * us @ core @ vt  (LoRA-XS, TinyLoRA).

    base [..., in, out], us [..., in, r] (U S, frozen), core [..., r, r] (built from trainable values),
    vt [..., r, out] (V^T, frozen).
    """

    base: jax.Array
    us: jax.Array
    core: jax.Array
    vt: jax.Array
    scale: float = struct.field(pytree_node=False, default=1.0)

    def dense(self, x: jax.Array, dtype) -> jax.Array:
        y = x @ self.base.astype(dtype)
        z = ((x @ self.us.astype(dtype)) @ self.core.astype(dtype)) @ self.vt.astype(dtype)
        return y + (self.scale * z).astype(y.dtype)

    def merged(self) -> jax.Array:
        f32 = jnp.float32
        upd = self.scale * (self.us.astype(f32) @ self.core.astype(f32) @ self.vt.astype(f32))
        return (self.base.astype(f32) + upd).astype(self.base.dtype)


def dense(x: jax.Array, w: Any, dtype) -> jax.Array:
    """``x @ w`` in ``dtype`` for a plain kernel, or the container's low-rank product."""
    if hasattr(w, "dense"):
        return w.dense(x, dtype)
    return x @ w.astype(dtype)


def is_container(w: Any) -> bool:
    return hasattr(w, "merged")


def materialize(w: Any) -> jax.Array:
    """A plain kernel: the container's merged weight, or ``w`` itself."""
    return w.merged() if is_container(w) else w
