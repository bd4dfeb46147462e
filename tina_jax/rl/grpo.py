"""``grpo_step``: one pure, jit-able, shardable GRPO/PPO optimizer update.

    state = init_state(model.config, model.params, tx, rng, adapter=adapter)
    step = make_grpo_step(GrpoConfig(loss=LossConfig(...), group_size=G), mesh=mesh)
    state, metrics = step(state, batch)

``state`` (a ``TrainState`` pytree) holds the trainable pytree (adapter values, or all parameters for
full fine-tuning), the frozen pytree (base parameters, adapter constants, and for full fine-tuning
with a KL term a reference copy), the optax state, the step and the rng. Static things (model config,
adapter spec, optimizer) are pytree metadata, so ``jax.jit(grpo_step, static_argnums=2)`` just works.

``batch`` is a dict of arrays, rows = completions (group-major: the G completions of prompt 0 first):

    prompt_ids        int32[B, P]  left-padded prompts (a prompt repeated for each of its G rows)
    prompt_mask       int32[B, P]  1 = real prompt token (masks come from lengths, never token ids)
    completion_ids    int32[B, C]  sampled tokens, right-padded after the stop token
    completion_mask   int32[B, C]  1 = completion token that counts (up to and including the stop)
    advantages        f32[B]       or ``rewards`` f32[B] (advantages are then computed in the step)
    sampler_logprobs  f32[B, C]    optional: the sampler's logprobs (TIS, and the logprob-gap metric)
    old_logprobs      f32[B, C]    optional: logprobs of the policy before this rollout's first update;
                                   absent = stop_gradient(current), exact for one update per rollout
    ref_logprobs      f32[B, C]    optional: reference logprobs; absent and beta > 0 = computed here

Micro-batching (``GrpoConfig.micro_batch_size``) accumulates the gradients of loss *sums* and divides
once by the total denominator, so it reproduces the full-batch update exactly (``rl/losses.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tina_jax.models import decoder
from tina_jax.models.config import ModelConfig
from tina_jax.models.linear import materialize
from tina_jax.rl import advantages as adv_lib
from tina_jax.rl import losses as loss_lib
from tina_jax.validation import FieldError, is_int, is_real


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    """Static configuration of one update (hashable)."""

    loss: loss_lib.LossConfig = loss_lib.LossConfig()
    group_size: int | None = None  # G: needed when the batch carries rewards, and for group metrics
    advantage: str = "grpo"  # grpo | drgrpo | rloo (when the batch carries rewards)
    adv_eps: float = 1e-4
    micro_batch_size: int | None = None  # rows per gradient-accumulation chunk; None = whole batch
    # Run each prompt through the model once for its G completions (needs group_size; rows group-major,
    # the G rows of a group share their prompt). Same result, fewer FLOPs; micro-batches hold whole groups.
    share_prompts: bool = False
    logprob_chunk: int = 64  # sequence positions per lm_head chunk
    # Policy, reference and old logprobs are log_softmax(logits / logprob_temperature). verl divides by
    # the sampling temperature (so does TRL >= 0.16); the TRL versions Tina (0.15.2) and Open-RS
    # (2025-02-25) ran score at 1.0 although they sample at 0.7. The run config's grpo.logprob_temperature
    # (``sampling``: ``SamplingConfig.scoring_temperature``) sets it (``tina_jax.config.grpo_config``).
    logprob_temperature: float = 1.0

    def __post_init__(self):
        def need(ok: bool, field: str, message: str):
            if not ok:
                raise FieldError(field, f"{field} {message}, got {getattr(self, field)!r}")

        need(isinstance(self.loss, loss_lib.LossConfig), "loss", "must be a LossConfig")
        need(self.group_size is None or (is_int(self.group_size) and self.group_size >= 2), "group_size",
             "must be >= 2 (GRPO compares the completions of a group)")
        need(self.advantage in adv_lib.ADVANTAGE_MODES, "advantage", f"must be one of {adv_lib.ADVANTAGE_MODES}")
        need(is_real(self.adv_eps) and self.adv_eps >= 0, "adv_eps", "must be >= 0 (a finite number)")
        need(self.micro_batch_size is None or (is_int(self.micro_batch_size) and self.micro_batch_size >= 1),
             "micro_batch_size", "must be >= 1 or None")
        need(is_int(self.logprob_chunk) and self.logprob_chunk >= 1, "logprob_chunk", "must be >= 1")
        need(is_real(self.logprob_temperature) and self.logprob_temperature > 0, "logprob_temperature",
             "must be > 0")
        if self.share_prompts:
            need(self.group_size is not None, "group_size",
                 "is needed by share_prompts (the G completions that share a prompt)")
            need(self.micro_batch_size is None or self.micro_batch_size % self.group_size == 0, "micro_batch_size",
                 f"must hold whole groups with share_prompts: a multiple of group_size ({self.group_size}), or set "
                 "share_prompts=False")


@struct.dataclass
class TrainState:
    step: jax.Array  # int32[]
    trainable: Any
    frozen: Any  # {"base": params, "adapter": adapter constants or None, "reference": params or None}
    opt_state: Any
    rng: jax.Array
    model_config: ModelConfig = struct.field(pytree_node=False)
    adapter_spec: Any = struct.field(pytree_node=False, default=None)  # None: full-parameter training
    tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)


def init_state(model_config: ModelConfig, params: Any, tx: optax.GradientTransformation, rng: jax.Array,
               adapter: Any = None, keep_reference: bool = False) -> TrainState:
    """A TrainState training ``adapter`` on top of frozen ``params`` (or all ``params`` if adapter is None).

    ``keep_reference`` (full fine-tuning with beta > 0) keeps a frozen copy of the initial parameters as
    the KL reference; with an adapter the reference is always the base parameters with the adapter off.
    """
    if adapter is None:
        trainable = params
        frozen = {"base": None, "adapter": None,
                  "reference": jax.tree.map(jnp.copy, params) if keep_reference else None}
        spec = None
    else:
        trainable = adapter.trainable
        frozen = {"base": params, "adapter": adapter.frozen, "reference": None}
        spec = adapter.spec
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                      opt_state=tx.init(trainable), rng=rng, model_config=model_config,
                      adapter_spec=spec, tx=tx)


def policy_params(state: TrainState, trainable: Any = None, dropout_rng: jax.Array | None = None) -> Any:
    """The parameter pytree the policy runs with (adapter applied as containers, not merged)."""
    trainable = state.trainable if trainable is None else trainable
    if state.adapter_spec is None:
        return trainable
    from tina_jax import adapters

    adapter = adapters.Adapter(trainable=trainable, frozen=state.frozen["adapter"], spec=state.adapter_spec)
    return adapters.apply(state.frozen["base"], adapter, dropout_rng=dropout_rng)


def reference_params(state: TrainState) -> Any:
    """The KL reference: base parameters (adapter off), or the kept copy for full fine-tuning."""
    if state.adapter_spec is not None:
        return state.frozen["base"]
    if state.frozen["reference"] is None:
        raise ValueError("beta > 0 with full-parameter training needs init_state(..., keep_reference=True) "
                         "or ref_logprobs in the batch")
    return state.frozen["reference"]


def checkpoint_arrays(state: TrainState) -> dict:
    """What a checkpoint holds (``tina_jax.checkpoint``): everything but the frozen base weights, which are
    rebuilt from the config. The adapter's frozen constants (SVD factors, random projections) are kept: an SVD
    recomputed on another backend may flip signs. The typed rng key is stored as its key data."""
    return {"trainable": state.trainable, "opt_state": state.opt_state, "adapter_frozen": state.frozen["adapter"],
            "rng": jax.random.key_data(state.rng), "step": state.step}


def restore_checkpoint_arrays(state: TrainState, arrays: dict) -> TrainState:
    """``state`` (freshly built from the config) with the checkpointed ``arrays`` of
    :func:`checkpoint_arrays` in place."""
    frozen = dict(state.frozen, adapter=arrays["adapter_frozen"])
    return state.replace(trainable=arrays["trainable"], opt_state=arrays["opt_state"], frozen=frozen,
                         rng=jax.random.wrap_key_data(arrays["rng"]), step=arrays["step"])


def trim_padding(batch: dict, multiple: int = 16) -> dict:
    """Drop prompt columns that are padding in every row (left) and completion columns after the longest
    completion (right), keeping widths multiples of ``multiple`` so few shapes compile. Exact: positions
    come from the masks and padded keys are masked out, so the step's result does not change."""
    import numpy as np

    pm, cm = np.asarray(batch["prompt_mask"]), np.asarray(batch["completion_mask"])
    p, c = pm.shape[1], cm.shape[1]
    keep_p = min(p, -(-int(pm.sum(1).max()) // multiple) * multiple)
    keep_c = min(c, -(-max(1, int(cm.sum(1).max())) // multiple) * multiple)
    out = {}
    for k, v in batch.items():
        if k.startswith("prompt_"):
            v = v[:, p - keep_p:]
        elif v.ndim == 2 and v.shape[1] == c:
            v = v[:, :keep_c]
        out[k] = v
    return out


def sequence_logprobs(cfg: ModelConfig, params: Any, prompt_ids: jax.Array, prompt_mask: jax.Array,
                      completion_ids: jax.Array, completion_mask: jax.Array, chunk: int = 64,
                      temperature: float = 1.0, group_size: int = 1) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy) f32[B, C] of the completion tokens given their prompts.

    Runs the decoder over prompt+completion once; the lm_head and log-softmax run over completion
    positions only, ``chunk`` positions at a time, so [B, T, V] logits never exist. With
    ``group_size`` G > 1 the rows are G-row groups sharing one prompt (group-major) and each prompt is
    run once (``decoder.shared_prefix_hidden_states``).
    """
    p = prompt_ids.shape[1]
    c = completion_ids.shape[1]
    if group_size > 1:
        h_last, h_c = decoder.shared_prefix_hidden_states(cfg, params, prompt_ids[::group_size],
                                                          prompt_mask[::group_size], completion_ids,
                                                          completion_mask)
        h = jnp.concatenate([jnp.repeat(h_last, group_size, axis=0)[:, None], h_c[:, :-1]], axis=1)
    else:
        ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
        mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
        h = decoder.hidden_states(cfg, params, ids, mask)[:, p - 1:p + c - 1]
    w = materialize(decoder.lm_head(cfg, params))
    return loss_lib.chunked_logprobs(h, w.astype(h.dtype), completion_ids, chunk, temperature)


def _advantages(batch: dict, config: GrpoConfig) -> jax.Array:
    if "advantages" in batch:
        return batch["advantages"].astype(jnp.float32)
    if "rewards" not in batch:
        raise ValueError("batch needs 'advantages' or 'rewards' (f32[B])")
    if config.group_size is None:
        raise ValueError("batch carries 'rewards': set GrpoConfig.group_size to compute advantages")
    return adv_lib.compute_advantages(batch["rewards"], config.group_size, config.advantage, config.adv_eps)


_ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
             "sampler_logprobs", "old_logprobs", "ref_logprobs")


def _check_batch(batch: dict) -> None:
    for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        if k not in batch:
            raise ValueError(f"batch is missing {k!r}; see tina_jax.rl.grpo for the batch layout")
    b, c = batch["completion_ids"].shape
    for k in _ROW_KEYS + ("rewards",):
        if k in batch and batch[k].shape[0] != b:
            raise ValueError(f"batch[{k!r}] has {batch[k].shape[0]} rows, completion_ids has {b}")
    for k in ("completion_mask", "sampler_logprobs", "old_logprobs", "ref_logprobs"):
        if k in batch and batch[k].shape != (b, c):
            raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}, expected {(b, c)}")


def grpo_step(state: TrainState, batch: dict, config: GrpoConfig = GrpoConfig()) -> tuple[TrainState, dict]:
    """One GRPO optimizer update. Pure: the same (state, batch) always gives the same result."""
    _check_batch(batch)
    cfg = state.model_config
    lcfg = config.loss
    b = batch["completion_ids"].shape[0]
    mbs = config.micro_batch_size or b
    if b % mbs:
        raise ValueError(f"micro_batch_size {mbs} does not divide the batch of {b} completions")
    n_micro = b // mbs
    advantages = _advantages(batch, config)
    rows = {k: batch[k] for k in _ROW_KEYS if k in batch}
    rows["advantages"] = advantages
    if lcfg.aggregation == "microbatch_token_mean":  # normalisers from the whole batch: exact for any split
        rows["block_tokens"] = loss_lib.block_token_counts(batch["completion_mask"], lcfg.microbatch_rows)
    # Micro-batch k = rows k, k + n, k + 2n, ... (or whole groups k, k + n, ... when prompts are shared):
    # the leading axis stays evenly sharded over devices.
    gs = config.group_size if config.share_prompts else 1
    if b % gs or mbs % gs:
        raise ValueError(f"share_prompts: batch {b} and micro-batch {mbs} must hold whole groups of {gs}")

    def split(x):
        x = x.reshape((mbs // gs, n_micro, gs) + x.shape[1:])
        return jnp.moveaxis(x, 1, 0).reshape((n_micro, mbs) + x.shape[3:])

    micro = jax.tree.map(split, rows)
    rng, dropout_root = jax.random.split(state.rng)
    need_ref = lcfg.beta > 0 and "ref_logprobs" not in batch
    ref_params = reference_params(state) if need_ref else None

    def micro_loss(trainable, mb, key):
        params = policy_params(state, trainable, dropout_rng=key)
        logp, ent = sequence_logprobs(cfg, params, mb["prompt_ids"], mb["prompt_mask"], mb["completion_ids"],
                                      mb["completion_mask"], config.logprob_chunk, config.logprob_temperature, gs)
        if need_ref:
            ref, _ = sequence_logprobs(cfg, ref_params, mb["prompt_ids"], mb["prompt_mask"], mb["completion_ids"],
                                       mb["completion_mask"], config.logprob_chunk, config.logprob_temperature, gs)
            ref = jax.lax.stop_gradient(ref)
        else:
            ref = mb.get("ref_logprobs")
        old = mb.get("old_logprobs")
        s, d, msums = loss_lib.policy_loss(logp, old, mb["advantages"], mb["completion_mask"], lcfg,
                                           ref_logp=ref if lcfg.beta > 0 else None,
                                           sampler_logp=mb.get("sampler_logprobs"),
                                           block_tokens=mb.get("block_tokens"))
        valid = mb["completion_mask"] != 0
        msums["entropy"] = jnp.sum(jnp.where(valid, jax.lax.stop_gradient(ent), 0.0))
        if "sampler_logprobs" in mb:
            gap = jax.lax.stop_gradient(logp) - mb["sampler_logprobs"]
            msums["sampler_logprob_gap"] = jnp.sum(jnp.where(valid, jnp.abs(gap), 0.0))
        if ref is not None and lcfg.beta == 0:  # KL monitored, not optimised
            msums["kl"] = jnp.sum(jnp.where(valid, loss_lib.kl_per_token(jax.lax.stop_gradient(logp), ref,
                                                                        lcfg.kl_estimator), 0.0))
        return s, (d, msums)

    trainable, opt_state, grads, loss, m_sum = accumulated_update(state, micro_loss, micro, n_micro, dropout_root)

    means = loss_lib.finalize_metrics(m_sum)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "entropy": means["entropy"],
        "clip_frac_low": means["clip_low"],
        "clip_frac_high": means["clip_high"],
        "clip_frac_dual": means["clip_dual"],
        "clip_fraction": means["clip_low"] + means["clip_high"] + means["clip_dual"],
        "ratio_dev": means["ratio_dev"],
        "completion_tokens": m_sum["tokens"],
        "advantage_abs_mean": jnp.mean(jnp.abs(advantages)),
    }
    for k in ("kl", "sampler_logprob_gap", "tis_weight", "tis_capped"):
        if k in means:
            metrics[k] = means[k]
    if config.group_size is not None and "rewards" in batch:  # a caller passing advantages has the rewards
        metrics["zero_adv_group_frac"] = adv_lib.zero_advantage_group_fraction(batch["rewards"], config.group_size)
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=rng)
    return new_state, metrics


def accumulated_update(state: TrainState, loss_fn, micro: Any, n_micro: int, dropout_root: jax.Array):
    """The optimizer update of a batch split into ``n_micro`` micro-batches (the leading axis of ``micro``),
    shared by ``grpo_step`` and ``sft_step``. ``loss_fn(trainable, mb, key) -> (loss sum, (denominator,
    {name: metric sum}))`` runs on micro-batch k with ``key = fold_in(dropout_root, k)``; the gradients of the
    sums are accumulated and divided once by the total denominator, so the update equals the full batch's.

    Returns ``(trainable, opt_state, grads, loss, metric sums)``: the updated trainable pytree and optimizer
    state, the applied mean gradient, the mean loss (sum / denominator), and each metric summed over the batch.
    """

    def body(carry, xs):
        g_acc, s_acc, d_acc, m_acc = carry
        mb, k = xs
        (s, (d, msums)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable, mb,
                                                                       jax.random.fold_in(dropout_root, k))
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        m_acc = jax.tree.map(jnp.add, m_acc, msums)
        return (g_acc, s_acc + s, d_acc + d, m_acc), None

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    m0 = jax.eval_shape(lambda: loss_fn(state.trainable, jax.tree.map(lambda x: x[0], micro), dropout_root)[1][1])
    m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m0)
    (g_sum, s_sum, d_sum, m_sum), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), m0),
        (micro, jnp.arange(n_micro)))
    denom = jnp.maximum(d_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, g_sum)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    return trainable, opt_state, grads, s_sum / denom, m_sum


def make_grpo_step(config: GrpoConfig, mesh: jax.sharding.Mesh | None = None, state: TrainState | None = None,
                   donate: bool = True):
    """``grpo_step`` jitted with ``config`` closed over; with a mesh, with in/out shardings.

    With ``mesh``, pass an example ``state`` (arrays or ShapeDtypeStructs): its parameters and optimizer
    state are sharded by name (``tina_jax.sharding``), batch rows over data x fsdp, metrics replicated.
    """
    return jit_step(lambda s, b: grpo_step(s, b, config), config.micro_batch_size, mesh, state, donate)


def jit_step(fn, micro_batch_size: int | None, mesh: jax.sharding.Mesh | None = None,
             state: TrainState | None = None, donate: bool = True):
    """Jit a ``(state, batch) -> (state, metrics)`` update (``grpo_step``, ``sft_step``); with ``mesh``, the
    state sharded by name, batch rows over data x fsdp (one jit per batch shape), metrics replicated."""
    if mesh is None:
        return jax.jit(fn, donate_argnums=(0,) if donate else ())
    from tina_jax import sharding as shd

    if state is None:
        raise ValueError("a step with mesh=... needs an example state to derive its shardings")
    state_sh = shd.tree_shardings(state, mesh)
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def batch_sh(batch):
        for k, v in batch.items():
            shd.check_batch_divides(v.shape[0], mesh, f"batch[{k!r}]")
            mbs = micro_batch_size or v.shape[0]
            if mbs % n:
                raise ValueError(f"micro_batch_size {mbs} must be divisible by data x fsdp = {n}")
        return {k: shd.batch_sharding(mesh, v.ndim) for k, v in batch.items()}

    cache: dict = {}

    def step(s, b):
        key = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in b.items()))
        if key not in cache:
            cache[key] = jax.jit(fn, in_shardings=(state_sh, batch_sh(b)),
                                 out_shardings=(state_sh, shd.replicated(mesh)),
                                 donate_argnums=(0,) if donate else ())
        return cache[key](s, b)

    return step


def shard_state(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Place every array of ``state`` with its sharding on ``mesh``."""
    from tina_jax import sharding as shd

    return jax.device_put(state, shd.tree_shardings(state, mesh))


def make_logprob_fn(config: GrpoConfig, reference: bool = False):
    """jit-ed ``(state, batch) -> f32[B, C]`` logprobs of the policy (or the reference), for old/ref logprobs
    when one rollout feeds several updates (``num_iterations > 1`` or several mini-batches)."""

    def fn(state, batch):
        params = reference_params(state) if reference else policy_params(state)
        logp, _ = sequence_logprobs(state.model_config, params, batch["prompt_ids"], batch["prompt_mask"],
                                    batch["completion_ids"], batch["completion_mask"], config.logprob_chunk,
                                    config.logprob_temperature, config.group_size if config.share_prompts else 1)
        return logp

    return jax.jit(fn)
