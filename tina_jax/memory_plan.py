"""Compiled memory plans: per-device bytes of a recipe's rollout and grpo_step programs, without weights.

    plan = memory_plan(cfg, devices=8)     # a RunConfig; lowers and compiles on abstract shapes
    print(format_plan(plan))

Both programs are lowered with ``jax.jit(...).lower`` on ``jax.ShapeDtypeStruct`` arguments carrying the
recipe's shardings over a mesh of ``devices`` devices, compiled by XLA for the local backend, and read with
``compiled.memory_analysis()`` (per device: arguments + outputs - aliased + temporaries). Nothing is
allocated. On CPU the buffer assignment is XLA's CPU one: a close but not exact stand-in for a GPU/TPU
compile (fusion and scheduling differ); ``--dry-run`` prints it beside the hand-made estimate.

To plan for more devices than the machine has, start the process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (``bench/memory_plan.py`` does).

The peak of a training step is taken as ``max(grpo_step, rollout + the state the rollout does not hold)``:
the optimizer state and the frozen base stay resident while sampling. A device "fits" when the peak is
below 90% of its memory (room for the runtime, fragmentation and the host-side buffers).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEVICE_MEMORY", "memory_plan", "format_plan", "fits"]

# Bytes of memory per device (vendor figures, decimal GB as sold; TPU HBM per chip).
DEVICE_MEMORY = {"H100 80GB": 80e9, "H200 141GB": 141e9, "L40S 48GB": 48e9, "A40 48GB": 48e9,
                 "TPU v5e 16GB": 16e9, "TPU v4 32GB": 32e9, "TPU v5p 95GB": 95e9}
HEADROOM = 0.9


def _program_bytes(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _per_device_bytes(tree: Any, shardings: Any) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(x.shape) if hasattr(s, "shard_shape") else x.shape
        itemsize = 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.dtype(x.dtype).itemsize
        total += int(np.prod(shard)) * itemsize
    return total


def memory_plan(cfg, devices: int | None = None, mcfg=None) -> dict:
    """Per-device memory of the compiled rollout and grpo_step of run config ``cfg`` on ``devices``
    devices (default: all local ones) with the recipe's mesh shape; see the module docstring."""
    from tina_jax import adapters, optim, sharding as shd
    from tina_jax.config import grpo_config, sampling_config
    from tina_jax.models import decoder, load_config
    from tina_jax.rl.grpo import grpo_step, init_state, policy_params
    from tina_jax.sampling import sample_tokens

    if mcfg is None:
        mcfg = load_config(cfg.model.source, param_dtype=cfg.model.dtype or "bfloat16",
                           compute_dtype=cfg.model.compute_dtype or cfg.model.dtype or "bfloat16",
                           remat=cfg.model.remat)
    avail = jax.devices()
    n = devices or len(avail)
    if n > len(avail):
        raise ValueError(f"a plan for {n} devices needs {n} local devices, this process has {len(avail)}; start it "
                         f"with XLA_FLAGS=--xla_force_host_platform_device_count={n} (CPU)")
    mesh = shd.make_mesh(cfg.mesh.shape, devices=avail[:n])
    r, g = cfg.rollout, cfg.grpo
    rows = g.prompts_per_step * r.num_samples
    mb_rows = rows // g.mini_batches
    p_len, n_new = cfg.data.max_prompt_length, r.max_new_tokens
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps)

    def make_state(params):
        return init_state(mcfg, params, tx, jax.random.key(0), adapter=adapters.build(cfg.adapter, mcfg, params),
                          keep_reference=cfg.adapter.kind == "none" and g.loss.beta > 0)

    state = jax.eval_shape(make_state, decoder.param_shapes(mcfg))
    state_sh = shd.tree_shardings(state, mesh)
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32, sharding=shd.batch_sharding(mesh, len(s)))  # noqa: E731
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=shd.batch_sharding(mesh, len(s)))  # noqa: E731
    batch = {"prompt_ids": i32(mb_rows, p_len), "prompt_mask": i32(mb_rows, p_len),
             "completion_ids": i32(mb_rows, n_new), "completion_mask": i32(mb_rows, n_new),
             "advantages": f32(mb_rows), "sampler_logprobs": f32(mb_rows, n_new)}
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    for what, size in (("rollout mini-batch", mb_rows), ("grpo.micro_batch_size", g.micro_batch_size or mb_rows)):
        if size % n_batch:  # the same refusal as make_grpo_step: no plan for a run that cannot start
            raise ValueError(f"{what} {size} is not divisible by data x fsdp = {n_batch} devices; on {n} devices "
                             f"set grpo.micro_batch_size to a multiple of {n_batch}")
    gcfg = grpo_config(cfg)
    step = jax.jit(lambda s, b: grpo_step(s, b, gcfg), out_shardings=(state_sh, shd.replicated(mesh)),
                   donate_argnums=(0,))
    train_bytes = _program_bytes(step.lower(_abstract(state, state_sh), batch).compile())

    params = jax.eval_shape(policy_params, state)
    params_sh = shd.tree_shardings(params, mesh)
    sampling = sampling_config(cfg, temperature=r.temperature or 1.0, adapter_decoding="merged",
                               stop_token_ids=tuple(mcfg.eos_token_ids) or (0,), compact_rows=n == 1)  # as generate() on a mesh
    prompts = g.prompts_per_step
    pi = jax.ShapeDtypeStruct((prompts, p_len), jnp.int32,
                              sharding=shd.batch_sharding(mesh, 2) if prompts % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0
                              else shd.replicated(mesh))
    key = jax.eval_shape(lambda: jax.random.key(0))
    roll = sample_tokens.lower(config=mcfg, params=_abstract(params, params_sh), prompt_ids=pi, prompt_mask=pi,
                               rng=key, sampling=sampling)
    rollout_bytes = _program_bytes(roll.compile())

    state_dev = _per_device_bytes(state, state_sh)
    params_dev = _per_device_bytes(params, params_sh)
    peak = max(train_bytes["total"], rollout_bytes["total"] + max(0, state_dev - params_dev))
    return {"recipe": cfg.train.run_dir, "model": cfg.model.source, "devices": n, "mesh": dict(mesh.shape),
            "backend": jax.default_backend(), "rows": rows, "micro_batch": g.micro_batch_size,
            "prompt_len": p_len, "new_tokens": n_new, "remat": cfg.model.remat,
            "state_bytes_per_device": state_dev, "rollout": rollout_bytes, "grpo_step": train_bytes,
            "peak_bytes_per_device": int(peak),
            "fits": {name: bool(peak <= HEADROOM * mem) for name, mem in DEVICE_MEMORY.items()}}


def fits(plan: dict) -> list[str]:
    return [k for k, v in plan["fits"].items() if v]


def format_plan(plan: dict) -> str:
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    ok = fits(plan)
    return (f"compiled memory plan ({plan['backend']} compile, {plan['devices']} device(s), mesh {plan['mesh']}): "
            f"rollout {gb(plan['rollout']['total'])}, grpo_step {gb(plan['grpo_step']['total'])} "
            f"(temporaries {gb(plan['grpo_step']['temp'])}), resident state {gb(plan['state_bytes_per_device'])}; "
            f"peak {gb(plan['peak_bytes_per_device'])} per device -> fits: {', '.join(ok) if ok else 'none listed'}")
