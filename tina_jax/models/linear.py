"""The one matmul every projection goes through, and the low-rank weight containers adapters build.

A projection kernel is stored as ``[in, out]`` so ``y = x @ K``. Adapters (``tina_jax.adapters``) replace
a kernel in the parameter pytree with a container; ``dense`` computes the adapted product without ever
forming the full-size update, so gradients exist only for the small factors:

- ``LowRank(base, a, b, scale)``:       y = x @ base + scale * ((drop(x) @ a) @ b)       (LoRA)
- ``SvdCore(base, us, core, vt, scale)``: y = x @ base + scale * (((x @ us) @ core) @ vt) (LoRA-XS, TinyLoRA)

Containers are pytree nodes whose array fields may carry leading axes (the stacked-layer axis ``L``):
``lax.scan`` over the layers slices every leaf, so inside the scan each container holds one layer.
``scale`` and ``dropout_rate`` are static (not leaves).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LowRank:
    """K' = base + scale * a @ b  (LoRA), with optional inverted dropout on the adapter input.

    base [..., in, out]; a [..., in, r]; b [..., r, out]; dropout_key: typed PRNG key array [...]
    (one key per leading index, e.g. per layer) or None. Dropout is applied only when
    ``dropout_key`` is set and ``dropout_rate > 0``; the base product never sees it (PEFT's
    ``lora_B(lora_A(dropout(x)))``).
    """

    base: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout_key: Any = None
    dropout_rate: float = struct.field(pytree_node=False, default=0.0)

    def dense(self, x: jax.Array, dtype) -> jax.Array:
        """x [..., in] -> [..., out] in ``dtype``; one layer's container (no leading axes on the leaves)."""
        y = x @ self.base.astype(dtype)
        return y + self.correction(x, dtype).astype(y.dtype)

    def correction(self, x: jax.Array, dtype) -> jax.Array:
        """The adapter's term of ``dense``: ``scale * (drop(x) @ a) @ b``, matmuls in ``dtype`` (``base``
        unused); ``dense`` adds it, cast to the base product's dtype."""
        xa = x
        if self.dropout_key is not None and self.dropout_rate > 0.0:
            if self.dropout_rate >= 1.0:
                raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
            keep = jax.random.bernoulli(self.dropout_key, 1.0 - self.dropout_rate, x.shape)
            xa = jnp.where(keep, x / (1.0 - self.dropout_rate), jnp.zeros_like(x)).astype(x.dtype)
        z = (xa @ self.a.astype(dtype)) @ self.b.astype(dtype)
        return self.scale * z

    def delta(self) -> jax.Array:
        """The fp32 update scale * a @ b, [..., in, out] (materialises a full-size array)."""
        f32 = jnp.float32
        return self.scale * (self.a.astype(f32) @ self.b.astype(f32))

    def merged(self) -> jax.Array:
        """base + update in fp32, cast back to base.dtype."""
        return (self.base.astype(jnp.float32) + self.delta()).astype(self.base.dtype)


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
        return y + self.correction(x, dtype).astype(y.dtype)

    def correction(self, x: jax.Array, dtype) -> jax.Array:
        """The adapter's term of ``dense``: ``scale * ((x @ us) @ core) @ vt``, matmuls in ``dtype``."""
        z = ((x @ self.us.astype(dtype)) @ self.core.astype(dtype)) @ self.vt.astype(dtype)
        return self.scale * z

    def delta(self) -> jax.Array:
        """The fp32 update scale * us @ core @ vt, [..., in, out]."""
        f32 = jnp.float32
        return self.scale * ((self.us.astype(f32) @ self.core.astype(f32)) @ self.vt.astype(f32))

    def merged(self) -> jax.Array:
        return (self.base.astype(jnp.float32) + self.delta()).astype(self.base.dtype)


def dense(x: jax.Array, w: Any, dtype) -> jax.Array:
    """``x @ w`` in ``dtype`` for a plain kernel, or the container's low-rank product."""
    if hasattr(w, "dense"):
        return w.dense(x, dtype)
    return x @ w.astype(dtype)


def base_kernel(w: Any) -> jax.Array:
    """The frozen kernel under a container, or ``w`` itself."""
    return w.base if is_container(w) else w


def is_container(w: Any) -> bool:
    return isinstance(w, (LowRank, SvdCore)) or hasattr(w, "merged")


def materialize(w: Any) -> jax.Array:
    """A plain kernel: the container's merged weight, or ``w`` itself."""
    return w.merged() if is_container(w) else w


def materialize_tree(params: Any) -> Any:
    """``params`` with every container folded back into a plain kernel (fp32 math, base dtype)."""
    return jax.tree.map(materialize, params, is_leaf=is_container)
