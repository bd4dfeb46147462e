"""The decoder: embed -> scan(layers) -> final norm -> logits, as pure functions of a parameter pytree.

Parameter pytree (layers stacked on a leading axis L so one ``lax.scan`` runs them all)::

    {"embed": [V, D],
     "layers": {"attn_norm": [L, D], "q_proj": [L, D, Hq*hd], "k_proj": [L, D, Hkv*hd],
                "v_proj": [L, D, Hkv*hd], "o_proj": [L, Hq*hd, D],
                "q_bias"/"k_bias"/"v_bias": [L, H*hd]   (qkv_bias: Qwen2),
                "q_norm"/"k_norm": [L, hd]              (qk_norm: Qwen3),
                "mlp_norm": [L, D], "gate_proj": [L, D, F], "up_proj": [L, D, F], "down_proj": [L, F, D]},
     "final_norm": [D],
     "lm_head": [D, V]                                   (untied embeddings only)}

Kernels are ``[in, out]`` (``y = x @ K``); any kernel may be an adapter container (see ``linear.py``).
Activations and matmuls run in ``config.compute_dtype``; RMSNorm statistics, softmax and logits in fp32.

KV cache (prefill and decoding, one layout): ``{"k": [L, B, Hkv, hd, S], "v": [L, B, Hkv, S, hd]}`` in a
configurable dtype (keys stored transposed, so both attention matmuls read the cache in XLA's canonical
dot layout without a per-step transpose), written in place at a slot index shared by the batch (prompts are
left-padded so all rows align). ``attention`` is the one attention function: rows over an optional prefix
shared by each group of rows (a prompt's keys for its G completions) plus their own keys; the training
forward, the shared-prompt GRPO forward, the prefill and every decode step use it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.models.linear import dense

Params = dict[str, Any]
Cache = dict[str, jax.Array]
_NEG = -1e30  # finite "minus infinity": a fully masked row (a left-pad query) stays NaN-free


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF RMSNorm: statistics in fp32, normalised value cast back to x.dtype, then scaled."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * weight.astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """int32[B, T] positions counting only real tokens (left padding gets position 0)."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """int32[B, T] positions restarting at 0 at the first token of each segment (run of equal ids)."""
    t = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (HF's rotate-half layout). x [B, T, H, hd], positions int[B, T]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, hd]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def cache_layout(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys/values [B, T, Hkv, hd] as the cache stores them: keys [B, Hkv, hd, T], values [B, Hkv, T, hd]."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, prefix: tuple | None = None) -> jax.Array:
    """Grouped-query attention of R rows over [a prefix shared by each group of rows | the rows' own keys].

    q [R, T, Hq, hd]; k [R, Hkv, hd, S] and v [R, Hkv, S, hd]: each row's own keys/values in the cache
    layout (``cache_layout``); mask bool[R or 1, T, S] (True = may attend).
    ``prefix``: None, or (pk [B, Hkv, hd, P], pv [B, Hkv, P, hd], pmask bool[B, P]): keys/values shared by
    the G = R / B rows of each group (rows group-major: a prompt's cache for its G samples), read once per
    group instead of being copied G times. Scores (scaled by hd^-0.5 in fp32) and softmax in fp32, one
    softmax over the prefix and own keys together. Returns [R, T, Hq, hd] in q's dtype.
    """
    r, t, hq, hd = q.shape
    hkv, s = k.shape[1], k.shape[-1]
    rep = hq // hkv
    dt, f32, scale = q.dtype, jnp.float32, hd ** -0.5
    qr = q.reshape(r, t, hkv, rep, hd).transpose(0, 2, 1, 3, 4)  # [R, Hkv, T, rep, hd]
    s_c = jnp.einsum("nktrd,nkds->nktrs", qr, k.astype(dt), preferred_element_type=f32) * scale
    s_c = jnp.where(mask[:, None, :, None, :], s_c, _NEG)
    if prefix is None:
        probs = jax.nn.softmax(s_c, axis=-1).astype(dt)
        out = jnp.einsum("nktrs,nksd->nktrd", probs, v.astype(dt))
    else:
        pk, pv, pmask = prefix
        b, p = pk.shape[0], pk.shape[-1]
        g = r // b
        qp = qr.reshape(b, g, hkv, t, rep, hd).transpose(0, 2, 1, 3, 4, 5)  # [B, Hkv, G, T, rep, hd]
        s_p = jnp.einsum("bkgtrd,bkdp->bkgtrp", qp, pk.astype(dt), preferred_element_type=f32) * scale
        s_p = jnp.where(pmask[:, None, None, None, None, :], s_p, _NEG)
        s_p = s_p.transpose(0, 2, 1, 3, 4, 5).reshape(r, hkv, t, rep, p)
        probs = jax.nn.softmax(jnp.concatenate([s_p, s_c], axis=-1), axis=-1).astype(dt)
        p_p = probs[..., :p].reshape(b, g, hkv, t, rep, p).transpose(0, 2, 1, 3, 4, 5)
        o_p = jnp.einsum("bkgtrp,bkpd->bkgtrd", p_p, pv.astype(dt))
        o_p = o_p.transpose(0, 2, 1, 3, 4, 5).reshape(r, hkv, t, rep, hd)
        out = o_p + jnp.einsum("nktrs,nksd->nktrd", probs[..., p:], v.astype(dt))
    return out.transpose(0, 2, 1, 3, 4).reshape(r, t, hq, hd)


def _qkv(cfg: ModelConfig, p: Params, x: jax.Array, positions: jax.Array):
    """Projections, biases, q/k norm and RoPE for one layer. x is the normed input [B, T, D]."""
    dt = as_dtype(cfg.compute_dtype)
    b, t, _ = x.shape
    q, k, v = dense(x, p["q_proj"], dt), dense(x, p["k_proj"], dt), dense(x, p["v_proj"], dt)
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v


def _mlp(cfg: ModelConfig, p: Params, x: jax.Array) -> jax.Array:
    dt = as_dtype(cfg.compute_dtype)
    h = jax.nn.silu(dense(x, p["gate_proj"], dt)) * dense(x, p["up_proj"], dt)
    return dense(h, p["down_proj"], dt)


def _block(cfg: ModelConfig, p: Params, h: jax.Array, positions: jax.Array, attend_fn) -> tuple:
    """One pre-norm decoder layer; ``attend_fn(q, k, v) -> (out, extra)`` supplies keys/mask."""
    dt = as_dtype(cfg.compute_dtype)
    b, t, _ = h.shape
    q, k, v = _qkv(cfg, p, rms_norm(h, p["attn_norm"], cfg.rms_norm_eps), positions)
    attn, extra = attend_fn(q, k, v)
    h = h + dense(attn.reshape(b, t, cfg.q_dim), p["o_proj"], dt)
    h = h + _mlp(cfg, p, rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps))
    return h, extra


def embed(cfg: ModelConfig, params: Params, input_ids: jax.Array) -> jax.Array:
    return jnp.take(params["embed"], input_ids, axis=0).astype(as_dtype(cfg.compute_dtype))


def lm_head(cfg: ModelConfig, params: Params) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied)."""
    return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def logits_from_hidden(cfg: ModelConfig, params: Params, h: jax.Array) -> jax.Array:
    """fp32 logits [..., V] from final hidden states [..., D]."""
    w = lm_head(cfg, params)
    w = w.merged() if hasattr(w, "merged") else w
    return jnp.einsum("...d,dv->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Full-sequence forward (training, scoring)
# ----------------------------------------------------------------------------------------------
def hidden_states(
    cfg: ModelConfig,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    return_layers: bool = False,
    segment_ids: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Final-norm hidden states [B, T, D] (compute dtype) for a left-padded batch, no cache.

    input_ids int[B, T]; attention_mask {0,1}[B, T] (1 = real token; default all ones);
    positions int[B, T] (default: derived from the mask). With ``return_layers`` also returns the
    residual stream after every layer, [L, B, T, D] (for per-layer parity tests).
    ``segment_ids`` int[B, T] (packed rows; replaces ``attention_mask``): 0 = padding, k >= 1 = the k-th
    sequence of the row; a token attends only within its own segment and positions restart at each
    segment (``positions_from_segments``), so a packed row computes what its sequences would alone.
    """
    b, t = input_ids.shape
    if segment_ids is not None:
        valid = segment_ids != 0
        if positions is None:
            positions = positions_from_segments(segment_ids)
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = jnp.tril(jnp.ones((t, t), bool))[None] & same & valid[:, None, :]
    else:
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        valid = attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None] & valid[:, None, :]  # [B, T(query), T(key)]

    def layer(h, p):
        h, _ = _block(cfg, p, h, positions, lambda q, k, v: (attention(q, *cache_layout(k, v), mask), None))
        return h, (h if return_layers else None)

    if cfg.remat:
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
    h, per_layer = jax.lax.scan(layer, embed(cfg, params, input_ids), params["layers"])
    out = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
    return (out, per_layer) if return_layers else out


def forward(
    cfg: ModelConfig,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> jax.Array:
    """float32 logits [B, T, V] for every position (no cache). See ``hidden_states`` for the inputs."""
    return logits_from_hidden(cfg, params, hidden_states(cfg, params, input_ids, attention_mask, positions))


# ----------------------------------------------------------------------------------------------
# KV-cache forward (decoding)
# ----------------------------------------------------------------------------------------------
def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
    """Zeroed cache: keys [L, batch, Hkv, hd, max_len], values [L, batch, Hkv, max_len, hd], in ``dtype``
    (default: compute dtype)."""
    dtype = as_dtype(dtype or cfg.compute_dtype)
    L, hkv, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    return {"k": jnp.zeros((L, batch, hkv, hd, max_len), dtype), "v": jnp.zeros((L, batch, hkv, max_len, hd), dtype)}


def forward_cached(
    cfg: ModelConfig,
    params: Params,
    input_ids: jax.Array,
    positions: jax.Array,
    cache: Cache,
    write_index: jax.Array,
    kv_valid: jax.Array | None = None,
    prefix: Cache | None = None,
    window: int | None = None,
) -> tuple[jax.Array, Cache]:
    """Run T new tokens per row against the cache, writing their keys/values at slots
    ``write_index .. write_index + T - 1`` (shared by all rows). The prefill and every decode step.

    input_ids int[b, T]; positions int[b, T]; write_index int32[]. The b rows are the first b rows of the
    cache (all of them, or a sampler's compacted live rows). ``kv_valid`` bool[b, S] marks cache slots holding
    real tokens *including* the T being written (None: every slot up to the query's own). Query t attends
    to valid slots <= write_index + t, and to ``prefix`` when given: ``{"k": [L, Bp, Hkv, hd, P],
    "v": [L, Bp, Hkv, P, hd], "mask": bool[Bp, P]}``, keys shared by the b / Bp rows of each group (a
    prompt's cache read once for its G samples). ``window`` (static): attention reads only slots
    [0, window) of the cache, which must hold every slot written (the filled part of a long cache).
    Layers run under ``lax.scan`` over the stacked weights (no copy of the weights is made up front).
    Returns (final-norm hidden [b, T, D], updated cache). Pass the cache as a donated argument (or a loop
    carry) so XLA updates it in place.
    """
    b, t = input_ids.shape
    _, _, hkv, hd, s = cache["k"].shape
    w = s if window is None else int(window)
    slot = jnp.arange(w)
    q_slot = write_index + jnp.arange(t)
    mask = (slot[None, :] <= q_slot[:, None])[None]  # [1, T, W]
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, :w]
    cdt = cache["k"].dtype
    pmask = None if prefix is None else prefix["mask"]

    def layer(carry, xs):
        h, ck, cv, i = carry
        p, pre = xs

        def attend(q, k, v):
            # Write first, then read the written buffer: one live version, so the update is in place.
            kt, vt = cache_layout(k.astype(cdt), v.astype(cdt))
            ck2 = jax.lax.dynamic_update_slice(ck, kt[None], (i, 0, 0, 0, write_index))
            cv2 = jax.lax.dynamic_update_slice(cv, vt[None], (i, 0, 0, write_index, 0))
            kw = jax.lax.dynamic_slice(ck2, (i, 0, 0, 0, 0), (1, b, hkv, hd, w))[0]
            vw = jax.lax.dynamic_slice(cv2, (i, 0, 0, 0, 0), (1, b, hkv, w, hd))[0]
            pfx = None if pre is None else (pre[0], pre[1], pmask)
            return attention(q, kw, vw, mask, pfx), (ck2, cv2)

        h, (ck, cv) = _block(cfg, p, h, positions, attend)
        return (h, ck, cv, i + 1), None

    pre = None if prefix is None else (prefix["k"], prefix["v"])
    init = (embed(cfg, params, input_ids), cache["k"], cache["v"], jnp.int32(0))
    (h, ck, cv, _), _ = jax.lax.scan(layer, init, (params["layers"], pre))
    return rms_norm(h, params["final_norm"], cfg.rms_norm_eps), {"k": ck, "v": cv}


# ----------------------------------------------------------------------------------------------
# Parameter shapes and random initialisation (tests, benchmarks, dry runs)
# ----------------------------------------------------------------------------------------------
def param_shapes(cfg: ModelConfig) -> Params:
    """The parameter tree of ``cfg`` as ``jax.ShapeDtypeStruct`` leaves (no allocation)."""
    dt = as_dtype(cfg.param_dtype)
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    layers = {
        "attn_norm": s(L, D), "q_proj": s(L, D, cfg.q_dim), "k_proj": s(L, D, cfg.kv_dim),
        "v_proj": s(L, D, cfg.kv_dim), "o_proj": s(L, cfg.q_dim, D), "mlp_norm": s(L, D),
        "gate_proj": s(L, D, F), "up_proj": s(L, D, F), "down_proj": s(L, F, D),
    }
    if cfg.qkv_bias:
        layers.update(q_bias=s(L, cfg.q_dim), k_bias=s(L, cfg.kv_dim), v_bias=s(L, cfg.kv_dim))
    if cfg.qk_norm:
        layers.update(q_norm=s(L, cfg.head_dim), k_norm=s(L, cfg.head_dim))
    tree = {"embed": s(cfg.vocab_size, D), "layers": layers, "final_norm": s(D)}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = s(D, cfg.vocab_size)
    return tree


def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02) -> Params:
    """Random parameters: N(0, std) kernels/embeddings/biases, norm weights 1 + N(0, std)."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, sd), key in zip(leaves, keys):
        name = str(path[-1].key)
        x = std * jax.random.normal(key, sd.shape, jnp.float32)
        if name.endswith("norm"):
            x = 1.0 + x
        out.append(x.astype(sd.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------
# Training forward with a shared prompt prefix (GRPO: G completions per prompt)
# ----------------------------------------------------------------------------------------------
def shared_prefix_hidden_states(
    cfg: ModelConfig,
    params: Params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Final-norm hidden states of G completions per prompt, running each prompt through the model once.

    prompt_ids/prompt_mask [Bp, P] (left-padded, one row per distinct prompt); completion_ids/mask [Bp*G, C]
    (group-major: the G completions of prompt 0 first). Returns (prompt hidden at its last position
    [Bp, D], completion hidden [Bp*G, C, D]); equal to ``hidden_states`` over the concatenated rows, with
    the prompt's keys and values computed (and differentiated) once instead of G times.
    """
    bp, p = prompt_ids.shape
    b, c = completion_ids.shape
    g = b // bp
    if g * bp != b:
        raise ValueError(f"{b} completion rows are not a multiple of {bp} prompts")
    pvalid = prompt_mask.astype(bool)
    ppos = positions_from_mask(prompt_mask)
    pmask = jnp.tril(jnp.ones((p, p), bool))[None] & pvalid[:, None, :]

    def prompt_layer(h, lp):
        def attend(q, k, v):
            kv = cache_layout(k, v)
            return attention(q, *kv, pmask), kv

        return _block(cfg, lp, h, ppos, attend)

    cvalid = completion_mask.astype(bool)
    plen = jnp.repeat(jnp.sum(prompt_mask.astype(jnp.int32), axis=-1), g)
    cpos = plen[:, None] + jnp.maximum(jnp.cumsum(completion_mask.astype(jnp.int32), axis=-1) - 1, 0)
    cmask = jnp.tril(jnp.ones((c, c), bool))[None] & cvalid[:, None, :]  # [B, C, C]

    def completion_layer(h, xs):
        lp, kp, vp = xs
        attend = lambda q, k, v: (attention(q, *cache_layout(k, v), cmask, (kp, vp, pvalid)), None)  # noqa: E731
        h, _ = _block(cfg, lp, h, cpos, attend)
        return h, None

    if cfg.remat:
        policy = jax.checkpoint_policies.nothing_saveable
        prompt_layer = jax.checkpoint(prompt_layer, policy=policy)
        completion_layer = jax.checkpoint(completion_layer, policy=policy)
    hp, (kp, vp) = jax.lax.scan(prompt_layer, embed(cfg, params, prompt_ids), params["layers"])
    hc, _ = jax.lax.scan(completion_layer, embed(cfg, params, completion_ids), (params["layers"], kp, vp))
    final = params["final_norm"]
    return rms_norm(hp[:, -1], final, cfg.rms_norm_eps), rms_norm(hc, final, cfg.rms_norm_eps)
