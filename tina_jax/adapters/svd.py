"""SVD-based adapters: LoRA-XS and TinyLoRA (RECIPES.md section 6).

Both start from the rank-r truncated SVD of the frozen kernel, in fp32: K [in, out] ~ U S V^T with
``us = U[:, :r] * S[:r]`` [in, r] (S folded into the input-side factor) and ``vt = V^T[:r]`` [r, out].
The update is dK = scale * us @ R @ vt with scale = alpha / r and an r x r core R:

- LoRA-XS [MohammadrezaBanaei/LoRA-XS]: R is trainable, init N(0, 1e-5^2) (``init_module_weights``
  with sigma 1e-5). Their LLM scripts (main_math_tuning.py) set lora_alpha = r, i.e. scale 1.
- TinyLoRA [arXiv 2602.04118; jxmorris12/verl-lora verl/utils/lora_utils.py, ``RandomLinear``]:
  R = (1/sqrt(u)) sum_i v_i P_i with fixed P [u, r, r] ~ N(0, 1) and trainable v [u] (fp32,
  init N(0, 1e-5^2)); r = 2, alpha = 32. Modules may share v ("tying"):

  * ``tiled``: modules in (layer, module) order -- (layer 0: q,k,v,o,gate,up,down), (layer 1: ...) --
    are cut into consecutive chunks of ``n_tie``; each chunk shares one v.  #groups = ceil(M * L / n_tie).
  * ``structured``: for each module type, consecutive chunks of ``n_tie`` layers share one v.
    #groups = M * ceil(L / n_tie).

  Projections P (``projections``):

  * ``shared_by_min_dim`` (default; what the authors' code computes): ``get_linear_rec_svd`` calls
    ``torch.manual_seed(42)`` before every module's ``torch.svd_lowrank``, which draws
    ``min(in, out) x r`` normals, and the module's ``RandomLinear`` then draws P from that state. Modules
    whose kernels have the same smaller dimension therefore get the *same* P (on Qwen2.5-7B: q, o, gate,
    up, down share one, k and v another), in every layer. Here: one P per distinct ``min(in, out)``.
  * ``per_module``: an independent P for every module and layer, as the paper's text describes.
  * ``shared``: one P [u, r, r] for every module.

  v is tied separately (``n_tie``, ``tie_mode``); tied modules with equal P get identical cores.

Orientation: the core acts as ``x @ us @ R @ vt`` in training, sampling, merging and export alike.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from tina_jax.models.linear import SvdCore

LORA_XS_DEFAULTS = dict(r=64, alpha=None, use_rslora=False, init_std=1e-5)  # alpha None -> alpha = r
PROJECTIONS = ("shared_by_min_dim", "per_module", "shared")
TINYLORA_DEFAULTS = dict(r=2, alpha=32.0, u=1, n_tie=1, tie_mode="tiled", projections="shared_by_min_dim",
                         use_rslora=False, init_std=1e-5)
TIE_MODES = ("tiled", "structured")


@functools.partial(jax.jit, static_argnums=1)
def truncated_svd(kernel: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
    """Top-r SVD factors of a stacked kernel [L, in, out], one layer at a time, in fp32.

    Returns (us [L, in, r], vt [L, r, out]) with kernel[l] ~ us[l] @ vt[l] (exact when r = rank).
    """
    def one(k):
        u, s, vh = jnp.linalg.svd(k.astype(jnp.float32), full_matrices=False)
        return u[:, :r] * s[:r], vh[:r, :]

    return jax.lax.map(one, kernel)


def tie_index(num_layers: int, num_modules: int, n_tie: int, mode: str) -> tuple[tuple[int, ...], ...]:
    """Group of every (module, layer): a nested tuple [M][L] of ints in [0, num_groups)."""
    if mode == "tiled":
        return tuple(tuple((l * num_modules + m) // n_tie for l in range(num_layers))
                     for m in range(num_modules))
    if mode == "structured":
        per = math.ceil(num_layers / n_tie)
        return tuple(tuple(m * per + l // n_tie for l in range(num_layers)) for m in range(num_modules))
    raise ValueError(f"unknown tie_mode {mode!r}; use one of {TIE_MODES}")


def num_groups(num_layers: int, num_modules: int, n_tie: int, mode: str) -> int:
    if mode == "tiled":
        return math.ceil(num_layers * num_modules / n_tie)
    if mode == "structured":
        return num_modules * math.ceil(num_layers / n_tie)
    raise ValueError(f"unknown tie_mode {mode!r}; use one of {TIE_MODES}")


def tinylora_core(v: jax.Array, p: jax.Array, index: tuple[int, ...]) -> jax.Array:
    """One module's cores [L, r, r] = (1/sqrt(u)) sum_i v[index[l], i] P[l?, i].

    v fp32 [G, u] (trainable, tied); p [L, u, r, r] (per module and layer) or [u, r, r] (shared);
    index: the module's group per layer (static). The gather is differentiable, so tied modules receive
    the sum of their gradients in one shared v.
    """
    u = v.shape[-1]
    vm = jnp.take(v, jnp.asarray(index, jnp.int32), axis=0)  # [L, u]
    eq = "lu,lurs->lrs" if p.ndim == 4 else "lu,urs->lrs"
    return jnp.einsum(eq, vm.astype(jnp.float32), p.astype(jnp.float32)) / math.sqrt(u)


def container(base: jax.Array, us: jax.Array, core: jax.Array, vt: jax.Array, scale: float) -> SvdCore:
    return SvdCore(base=base, us=us, core=core, vt=vt, scale=scale)
