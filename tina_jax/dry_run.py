"""The dry run: everything about a recipe that can be checked without the weights, and a memory estimate.

    report = dry_run(load_config("configs/tina_open_rs2.yaml"))     # or: launch/train.py ... --dry-run

It checks the config, the model config (context length), the mesh against the devices present, the
tokenizer and data where reachable (prompt rendering, drops, how many steps the data allows), the rewards,
the eval section's benchmarks, and traces the whole GRPO (or SFT) step with ``jax.eval_shape``. It fails
exactly where the real run would; only genuinely remote sources are skipped offline. The memory estimate is
a rough formula per buffer; ``tina_jax.memory_plan`` adds XLA's own figures for the compiled programs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tina_jax import optim, sharding
from tina_jax.config import RunConfig
from tina_jax.data.run_data import build_data, build_eval_data, build_loader, build_sft_data, data_step_limit
from tina_jax.data.run_data import remote_source as _remote_source
from tina_jax.rl.grpo import init_state

__all__ = ["dry_run", "dry_run_sft"]


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _report_data_steps(cfg: RunConfig, loader, console) -> int | None:
    steps = data_step_limit(cfg, loader)
    t = cfg.train
    if steps is None:
        console(f"data allows endless steps (data.num_epochs null; {loader.batches_per_epoch} per epoch); "
                f"train.max_steps {t.max_steps}")
    else:
        end = (f"the run ends at step {steps} (data exhausted)" if steps < t.max_steps
               else f"train.max_steps {t.max_steps} uses {t.max_steps / loader.batches_per_epoch:.2f} epochs")
        console(f"data allows {steps} steps ({loader.batches_per_epoch} batches of {cfg.grpo.prompts_per_step} "
                f"prompts per epoch x {cfg.data.num_epochs} epochs); {end}")
    return steps


def dry_run(cfg: RunConfig, console: Callable[[str], None] = print, memory_plan: bool = True) -> dict:
    """Validate a recipe without weights: config, model config, tokenizer and data where reachable,
    prompt rendering, and the shapes of the whole GRPO step via ``jax.eval_shape``; prints memory estimates."""
    if cfg.algorithm == "sft":
        return dry_run_sft(cfg, console)
    from tina_jax import adapters
    from tina_jax.config import grpo_config, updates_per_rollout
    from tina_jax.trainer import build_rewards, check_context
    from tina_jax.models import decoder, load_config
    from tina_jax.rl.grpo import grpo_step

    report: dict[str, Any] = {"config": "ok"}
    mcfg = load_config(cfg.model.source, param_dtype=cfg.model.dtype or "bfloat16",
                       compute_dtype=cfg.model.compute_dtype or cfg.model.dtype or "bfloat16", remat=cfg.model.remat)
    check_context(cfg, mcfg)
    try:
        mesh = sharding.make_mesh(cfg.mesh.shape)  # fails here as in the real run: too few devices, ...
    except ValueError as e:
        n = int(np.prod([m for m in cfg.mesh.shape if m > 0]))
        raise ValueError(f"{e} (to dry-run a larger mesh on a CPU, start the process with "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n})") from None
    rows = cfg.grpo.prompts_per_step * cfg.rollout.num_samples
    sharding.check_batch_divides(rows // cfg.grpo.mini_batches, mesh, "rollout mini-batch (completions)")
    console(f"model config: {mcfg.family}, {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, "
            f"vocab {mcfg.vocab_size}, {mcfg.param_dtype}")

    tok = None
    try:
        from tina_jax.models.loading import REGISTRY, load_tokenizer, resolve_source

        entry = REGISTRY.get(cfg.model.source)
        if entry is None or entry.package is not None or Path(cfg.model.source).exists():
            tok = load_tokenizer(resolve_source(cfg.model.source))
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(entry.hub_id)
    except Exception as e:  # offline: the hub is unreachable
        report["tokenizer"] = f"not available offline ({type(e).__name__}); prompt rendering not checked"
        console(f"tokenizer: {report['tokenizer']}")
    if tok is not None:
        try:
            train_ex, eval_ex, data_rep = build_data(cfg, tok)
            report["data"] = data_rep
            lens = [len(e["prompt_ids"]) for e in train_ex]
            console(f"data: {data_rep['train']['kept']}/{data_rep['train']['total']} train examples kept, "
                    f"prompt tokens median {int(np.median(lens))} max {max(lens)}; {len(eval_ex)} eval")
            console("first prompt:\n" + train_ex[0]["prompt_text"][:800])
            report["data_steps"] = _report_data_steps(cfg, build_loader(cfg, train_ex), console)
        except Exception as e:
            if not _remote_source(cfg.data.train) or (cfg.data.eval and not _remote_source(cfg.data.eval)
                                                      and not Path(cfg.data.eval).exists()):
                raise  # a local file (present, or missing) fails here exactly as the real run would
            report["data"] = f"{cfg.data.train} not reachable offline ({type(e).__name__}): not checked"
            console(f"data: {report['data']}")
    else:
        report["data"] = "not checked (needs the tokenizer to render prompts)"
        console(f"data: {report['data']}")
        if Path(cfg.data.train).exists() and cfg.data.num_epochs is not None:
            from tina_jax.data import pipeline

            n = len(pipeline.load_records(cfg.data.train, cfg.data.train_split))
            steps = n // cfg.grpo.prompts_per_step * cfg.data.num_epochs
            report["data_steps_upper_bound"] = steps
            console(f"data allows at most {steps} steps ({n} records // {cfg.grpo.prompts_per_step} prompts x "
                    f"{cfg.data.num_epochs} epochs, before dropping overlong prompts); train.max_steps "
                    f"{cfg.train.max_steps}" + (": fewer, the run would end with the data" if steps < cfg.train.max_steps
                                                else ""))
    build_rewards(cfg, tok)  # reward names and parameters resolve
    if cfg.eval.benchmarks:  # benchmark files present; prompts render and fit the context
        from tina_jax import evaluation

        e = cfg.eval
        proto = evaluation.get_protocol(e.protocol).replace(max_new_tokens=e.max_new_tokens)
        if proto.max_new_tokens >= mcfg.max_position_embeddings:
            raise ValueError(f"eval: max_new_tokens {proto.max_new_tokens} does not fit the model's "
                             f"{mcfg.max_position_embeddings}-token context; set eval.max_new_tokens")
        counts = {b: len(evaluation.load_benchmark(b, limit=e.limit)) for b in e.benchmarks}
        if tok is not None:
            from tina_jax.data.prompts import build_messages, get_recipe, render_prompts

            for b in e.benchmarks:
                p = evaluation.load_benchmark(b, limit=1)[0]
                recipe = get_recipe(proto.recipe_for(evaluation.get_benchmark(b).family))
                render_prompts(tok, [build_messages({recipe.field: p.question}, recipe)])
        report["eval"] = counts
        console(f"eval at the end{f' and every {e.every} steps' if e.every else ''}: {e.protocol} on "
                + ", ".join(f"{b} ({n})" for b, n in counts.items()) + f", {proto.max_new_tokens} new tokens")

    # Shapes of the whole step, no allocation.
    r, g = cfg.rollout, cfg.grpo
    rows = g.prompts_per_step * r.num_samples
    mb_rows = rows // g.mini_batches
    p_len = cfg.data.max_prompt_length
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps, updates_per_rollout(cfg))
    shapes = decoder.param_shapes(mcfg)

    def make_state(params):
        adapter = adapters.build(cfg.adapter, mcfg, params)
        return init_state(mcfg, params, tx, jax.random.key(0), adapter=adapter,
                          keep_reference=adapter is None and g.loss.beta > 0)

    state = jax.eval_shape(make_state, shapes)
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    batch = {"prompt_ids": i32(mb_rows, p_len), "prompt_mask": i32(mb_rows, p_len),
             "completion_ids": i32(mb_rows, r.max_new_tokens), "completion_mask": i32(mb_rows, r.max_new_tokens),
             "advantages": f32(mb_rows), "sampler_logprobs": f32(mb_rows, r.max_new_tokens)}
    new_state, metrics = jax.eval_shape(lambda s, b: grpo_step(s, b, grpo_config(cfg)), state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)

    base = _tree_bytes(shapes)
    trainable = _tree_bytes(state.trainable)
    opt = _tree_bytes(state.opt_state)
    cache_bytes = np.dtype(mcfg.compute_dtype).itemsize
    kv = rows * (p_len + r.max_new_tokens) * mcfg.num_layers * 2 * mcfg.kv_dim * cache_bytes
    micro = g.micro_batch_size or mb_rows
    t_len = p_len + r.max_new_tokens
    act_factor = 4 if cfg.model.remat else 34  # residual stream copies kept per layer (rough)
    acts = micro * t_len * mcfg.hidden_size * mcfg.num_layers * cache_bytes * act_factor
    logits = micro * g.logprob_chunk * mcfg.vocab_size * 4 * 3
    est = {"base_params": base, "trainable": trainable, "optimizer_state": opt, "rollout_kv_cache": kv,
           "train_activations (rough)": acts, "logits_chunk": logits}
    # Per device on the configured mesh (-1 takes this machine's devices): weights and optimizer state as
    # the partition rules lay them out, batch-shaped buffers over data x fsdp.
    mesh_shape = list(cfg.mesh.shape)
    if -1 in mesh_shape:
        rest = int(np.prod([m for m in mesh_shape if m != -1]))
        mesh_shape[mesh_shape.index(-1)] = max(1, jax.device_count() // rest)
    axes = dict(zip(sharding.AXES, mesh_shape))
    n_batch = axes["data"] * axes["fsdp"]
    for what, n in (("rollout mini-batch (completions)", mb_rows), ("grpo.micro_batch_size", micro)):
        if n % n_batch:
            raise ValueError(f"{what} {n} is not divisible by data x fsdp = {n_batch} of mesh {tuple(mesh_shape)}; "
                             "change the batch sizes or the mesh shape")
    per_dev = {"base_params": sharding.per_device_bytes(shapes, axes),
               "trainable": sharding.per_device_bytes(state.trainable, axes),
               "optimizer_state": sharding.per_device_bytes(state.opt_state, axes),
               "rollout_kv_cache": kv // n_batch if rows % n_batch == 0 else kv,
               "train_activations (rough)": acts // n_batch, "logits_chunk": logits // n_batch}
    total, total_dev = sum(est.values()), sum(per_dev.values())
    console(f"trainable parameters: {sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.trainable)):,}")
    console(f"memory estimate: {'whole job':>12s} {'per device':>12s}  (mesh data x fsdp x tensor = "
            f"{' x '.join(map(str, mesh_shape))})")
    for k, v in est.items():
        console(f"  {k:28s} {_gib(v):>12s} {_gib(per_dev[k]):>12s}")
    console(f"  {'total':28s} {_gib(total):>12s} {_gib(total_dev):>12s}")
    report["memory_per_device_bytes"] = per_dev
    report["mesh"] = mesh_shape
    report["memory_bytes"] = est
    report["grpo_step_metrics"] = sorted(metrics)
    if memory_plan:  # XLA's own per-device figures for the compiled programs (tina_jax.memory_plan)
        from tina_jax.memory_plan import format_plan, memory_plan as plan_fn

        plan = plan_fn(cfg, mcfg=mcfg)
        report["memory_plan"] = plan
        console(format_plan(plan) + f" (this process's {plan['devices']} device(s); bench/memory_plan.py plans "
                "other device counts)")
    console("dry run OK: config, shapes and the GRPO step trace without the weights")
    return report


def dry_run_sft(cfg: RunConfig, console: Callable[[str], None] = print) -> dict:
    """Validate an SFT recipe without weights: model config, tokenizer and data where reachable (rendering,
    lengths, drops), and the shapes of the whole SFT step via ``jax.eval_shape``; prints memory estimates."""
    from tina_jax.models import decoder, load_config
    from tina_jax import adapters
    from tina_jax.config import sft_config
    from tina_jax.rl.sft import sft_step
    from tina_jax.trainer import build_rewards

    report: dict[str, Any] = {"config": "ok", "algorithm": "sft"}
    mcfg = load_config(cfg.model.source, param_dtype=cfg.model.dtype or "bfloat16",
                       compute_dtype=cfg.model.compute_dtype or cfg.model.dtype or "bfloat16", remat=cfg.model.remat)
    console(f"model config: {mcfg.family}, {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, "
            f"vocab {mcfg.vocab_size}, {mcfg.param_dtype}")
    tok = None
    try:
        from tina_jax.models.loading import load_tokenizer, resolve_source

        tok = load_tokenizer(resolve_source(cfg.model.source))
    except Exception as e:  # offline: the hub is unreachable
        report["tokenizer"] = f"not available offline ({type(e).__name__}); data rendering not checked"
        console(f"tokenizer: {report['tokenizer']}")
    if tok is not None:
        try:
            ex, rep = build_sft_data(cfg, tok)
            report["data"] = rep
            console(f"data: {rep['kept']}/{rep['total']} SFT examples kept ({rep['no_target']} without a target, "
                    f"{rep['overlong']} over sft.max_length {cfg.sft.max_length}); tokens median "
                    f"{rep['tokens']['median']} max {rep['tokens']['max']}; "
                    f"{sum(ex[0]['loss_mask'])} of the first example's {len(ex[0]['input_ids'])} tokens trained")
            eval_ex, _ = build_eval_data(cfg, tok)
            console(f"eval: {len(eval_ex)} held-out prompts")
        except Exception as e:
            if not _remote_source(cfg.data.train) or (cfg.data.eval and not _remote_source(cfg.data.eval)):
                raise  # a local file (present, or missing) fails here exactly as the real run would
            report["data"] = f"{cfg.data.train} not reachable offline ({type(e).__name__}): not checked"
            console(f"data: {report['data']}")
    else:
        for source in (cfg.data.train, cfg.data.eval):
            if source and not _remote_source(source) and not source.startswith("synthetic:") \
                    and not Path(source).exists():
                raise FileNotFoundError(f"data file {source!r} does not exist")
        report["data"] = "not checked (needs the tokenizer to render the data)"
        console(f"data: {report['data']}")
    build_rewards(cfg, tok)
    if cfg.init_from.run is not None:
        console(f"init_from: {cfg.init_from.run} ({cfg.init_from.checkpoint}) is loaded when training starts")
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps)
    shapes = decoder.param_shapes(mcfg)
    state = jax.eval_shape(lambda p: init_state(mcfg, p, tx, jax.random.key(0),
                                                adapter=adapters.build(cfg.adapter, mcfg, p)), shapes)
    s = cfg.sft
    rows = -(-s.batch_size // (s.micro_batch_size or 1)) * (s.micro_batch_size or 1)
    i32 = jax.ShapeDtypeStruct((rows, s.max_length), np.int32)
    batch = {"input_ids": i32, "segment_ids": i32, "loss_mask": i32}
    new_state, metrics = jax.eval_shape(lambda st, b: sft_step(st, b, sft_config(cfg)), state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    nbytes = lambda t: int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(t)))  # noqa
    micro = s.micro_batch_size or rows
    item = np.dtype(mcfg.compute_dtype).itemsize
    est = {"params": nbytes(shapes), "trainable": nbytes(state.trainable), "optimizer_state": nbytes(state.opt_state),
           "activations (rough)": micro * s.max_length * mcfg.hidden_size * mcfg.num_layers * item
           * (4 if cfg.model.remat else 34),
           "logits_chunk": micro * s.logprob_chunk * mcfg.vocab_size * 4 * 3}
    console(f"trainable parameters: {sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.trainable)):,}")
    console("memory estimate (before sharding): " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in est.items()))
    report["memory_bytes"] = est
    report["sft_step_metrics"] = sorted(metrics)
    console("dry run OK: config and the SFT step trace without the weights (data: as reported above)")
    return report
