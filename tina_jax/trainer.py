"""The training loop, for GRPO and SFT (``algorithm: sft``): it only orchestrates.

    summary = train(load_config("configs/smollm2_arith_cpu.yaml"))

The shape of a run (levanter style)::

    run = setup(cfg, resume)                  # model, data, rewards, adapter, state, loader, restore
    for i in range(run.start, run.last_step):
        state, metrics = step(run, state, i)  # GRPO: rollout -> rewards -> advantages -> update(s)
                                              # SFT:  batch -> update
        metrics |= hooks due at i + 1         # every N steps and at the last: held-out eval, benchmarks
        log (metrics.jsonl, TensorBoard, progress bar); write samples every N; save every N, at the end,
        and on a signal or the time limit

Each concept lives in its module and this file only calls it: the data policy (``tina_jax.data.run_data``),
what "correct" means (each reward, ``tina_jax.rewards``), what a checkpoint holds and padding trimming
(next to ``TrainState``, ``tina_jax.rl.grpo``), the dry run and memory estimate (``tina_jax.dry_run``),
the run directory's guard (``tina_jax.run_dir``), logs and the progress bar (``tina_jax.runlog``). Console
messages go through one channel (:class:`Console`): while the progress bar is open they print above it.

A run directory holds ``config.yaml`` (the resolved config), ``data_report.json``, ``metrics.jsonl``,
``tb/``, ``samples.log`` (GRPO), ``checkpoints/``, ``eval/`` (benchmarks), ``summary.json`` and
``progress.png``.

Resuming is exact: the sampler key of step s is ``fold_in(key(seed), s)``, the grain iterator state,
the trainable parameters, the optimizer state and the step rng are checkpointed, and the frozen
pieces (base weights, adapter constants) are rebuilt deterministically from the config.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tina_jax import adapters
from tina_jax import config as config_lib
from tina_jax import distributed, optim, runtime, sharding
from tina_jax.config import RunConfig
from tina_jax.data.run_data import (build_data, build_eval_data, build_loader, build_sft_data, data_step_limit,
                                    load_split)
from tina_jax.rl import advantages as adv_lib
from tina_jax.rl.grpo import (TrainState, checkpoint_arrays, init_state, make_grpo_step,
                              make_logprob_fn, policy_params, restore_checkpoint_arrays, trim_padding)

log = logging.getLogger("tina_jax.trainer")

# Kept importable from here (bench scripts and notebooks use them): their homes are named above.
_checkpoint_arrays, _restore_state = checkpoint_arrays, restore_checkpoint_arrays
__all__ = ["train", "setup", "step", "Run", "Hook", "Console", "evaluate", "dry_run", "load_run_policy",
           "apply_init_from", "check_context", "correctness_fn", "TrainingError", "build_data", "build_eval_data",
           "build_sft_data", "build_loader", "data_step_limit", "load_split", "trim_padding"]


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, empty data, ...); the message says why and what to try."""


# ------------------------------------------------------------------------------------------------
# The run config translated into the library's objects
# ------------------------------------------------------------------------------------------------
def build_rewards(cfg: RunConfig, tokenizer) -> Callable:
    """The combined reward of the ``rewards`` section; ``fn.correctness`` names the reward that says what is
    correct (``tina_jax.rewards``)."""
    from tina_jax import rewards

    return rewards.build(cfg.rewards, tokenizer, group_size=cfg.rollout.num_samples)


def correctness_fn(cfg: RunConfig) -> tuple[str, Callable]:
    """(reward name, fn(completions, **fields) -> list[bool]) used for held-out accuracy: the first reward of
    the ``rewards`` section that says what is correct (accuracy with its defaults if none does), judged as that
    reward judges it (``tina_jax.rewards.correctness_check``)."""
    from tina_jax import rewards

    return rewards.correctness_check(cfg.rewards)




def _field_lists(examples: list[dict], repeat: int, skip=("prompt_ids", "prompt_text")) -> dict[str, list]:
    keys = [k for k in examples[0] if k not in skip]
    return {k: [ex.get(k) for ex in examples for _ in range(repeat)] for k in keys}

# ------------------------------------------------------------------------------------------------
# Rollout and evaluation
# ------------------------------------------------------------------------------------------------
def rollout(model, params, examples: list[dict], sampling, rng, mesh=None):
    """G completions for each example's prompt ids (``tina_jax.sampling.generate``): a ``Generation``."""
    from tina_jax.sampling import generate

    return generate(model, [ex["prompt_ids"] for ex in examples], sampling, rng, params=params, mesh=mesh)

def evaluate(model, params, examples: list[dict], cfg: RunConfig, sampling_base, is_correct,
             rng, mesh=None) -> dict[str, float]:
    """Greedy accuracy (and sampled accuracy when train.eval_samples > 0) on held-out examples."""
    t = cfg.train
    out: dict[str, float] = {}
    max_new = t.eval_max_new_tokens or cfg.rollout.max_new_tokens
    modes = [("greedy", sampling_base.replace(temperature=0.0, top_p=1.0, top_k=0, num_samples=1,
                                              max_new_tokens=max_new))]
    if t.eval_samples > 0:
        modes.append(("sampled", sampling_base.replace(temperature=t.eval_temperature, num_samples=t.eval_samples,
                                                       max_new_tokens=max_new)))
    for name, s in modes:
        correct, lengths = [], []
        bs = max(1, t.eval_batch_size // s.num_samples)
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            gen = rollout(model, params, chunk, s, jax.random.fold_in(rng, i), mesh)
            correct += distributed.score_split(lambda texts, **f: is_correct(list(texts), **f), len(chunk),
                                               s.num_samples, texts=gen.texts,
                                               **_field_lists(chunk, s.num_samples)).tolist()
            lengths += np.asarray(gen.lengths).tolist()
        out[f"eval/{name}_accuracy"] = float(np.mean(correct))
        out[f"eval/{name}_mean_length"] = float(np.mean(lengths))
    return out

def load_run_policy(run_dir: str | Path, checkpoint: str | int = "best",
                    console: Callable[[str], None] = print) -> tuple[Any, Any, dict]:
    """``(model, params, info)`` of a training run's checkpoint: the base model its ``config.yaml`` names,
    with the checkpoint's trainable weights (an adapter applied as containers, or the full weights).

    ``checkpoint``: ``"best"`` (by held-out greedy accuracy; the latest when no save has a score),
    ``"last"`` or a step number.
    """
    from tina_jax import checkpoint as ckpt_lib
    from tina_jax.models import load_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TrainingError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = config_lib.load_config(run_dir / "config.yaml", upgrade=True)  # also one saved before the key renames
    ckpt = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last,
                                 best_metric="eval/greedy_accuracy")
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise TrainingError(f"{run_dir / 'checkpoints'} holds no checkpoint")
        if checkpoint == "last":
            step = ckpt.latest_step()
        elif checkpoint == "best":
            step = ckpt.best_step()
            if step is None:
                step = ckpt.latest_step()
                console(f"{run_dir}: no checkpoint has a held-out score; using the last (step {step})")
        else:
            step = int(checkpoint)
            if step not in steps:
                raise TrainingError(f"{run_dir}: no checkpoint at step {step}; saved steps: {steps}")
        model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype)
        model = apply_init_from(cfg, model, console)
        adapter = adapters.build(cfg.adapter, model.config, model.params)
        state = init_state(model.config, model.params, optim.build_optimizer(cfg.optim, cfg.train.max_steps),
                           jax.random.key(cfg.train.seed), adapter=adapter)
        arrays, _ = ckpt.restore(step, like=checkpoint_arrays(state))
    finally:
        ckpt.close()
    state = restore_checkpoint_arrays(state, arrays)
    info = {"source": cfg.model.source, "run": str(run_dir), "checkpoint": int(step), "adapter": cfg.adapter.kind}
    return model, policy_params(state), info


def apply_init_from(cfg: RunConfig, model, console: Callable[[str], None] = print):
    """``model`` with the weights of the run named by ``init_from.run`` (its checkpoint's full weights, or its
    base with its adapter merged): stage 2 of a two-stage pipeline starts where stage 1 ended. The new run's
    adapter, if any, is built fresh on top of these weights."""
    if cfg.init_from.run is None:
        return model
    from tina_jax.models.linear import materialize_tree

    ck = cfg.init_from.checkpoint
    src_model, params, info = load_run_policy(cfg.init_from.run, int(ck) if ck.isdigit() else ck, console)
    params = materialize_tree(params)
    def shapes(tree):
        return jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: tuple(x.shape), tree),
                                                    is_leaf=lambda x: isinstance(x, tuple))[0]

    if shapes(params) != shapes(model.params):
        raise TrainingError(f"init_from.run {cfg.init_from.run} trained {info['source']}, whose parameters do not "
                            f"match model.source {cfg.model.source}; use the same base model in both stages")
    params = jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), params, model.params)
    console(f"init_from: weights of {info['run']} at step {info['checkpoint']} ({info['adapter']} merged)")
    return dataclasses.replace(model, params=params)


def check_context(cfg: RunConfig, mcfg) -> None:
    """Prompts plus completions must fit the model's context (the model config is known only once loaded)."""
    need = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    if need > mcfg.max_position_embeddings:
        raise TrainingError(
            f"data.max_prompt_length ({cfg.data.max_prompt_length}) + rollout.max_new_tokens "
            f"({cfg.rollout.max_new_tokens}) = {need} exceeds the model's context of {mcfg.max_position_embeddings} "
            f"tokens ({cfg.model.source}); lower one of them")


def bench_eval(cfg: RunConfig, model, params, run_dir: Path, step: int, console: Callable[[str], None]) -> dict:
    """The eval section's benchmarks on ``params`` (``tina_jax.evaluation``), as flat metrics."""
    from tina_jax import evaluation

    e, t0 = cfg.eval, time.time()
    mesh = None  # several processes: generate over the params' mesh (tina_jax.distributed)
    if jax.process_count() > 1:
        mesh = next(x.sharding.mesh for x in jax.tree.leaves(params) if isinstance(x, jax.Array))
    res = evaluation.evaluate(
        model, list(e.benchmarks), e.protocol, params=params, samples=e.samples, seeds=e.seeds,
        limit=e.limit, max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
        out_dir=run_dir / "eval" / f"step_{step}", seed=cfg.train.seed, progress=False, console=console,
        model_info={"source": cfg.model.source, "run": str(run_dir), "step": step, "name": f"{run_dir.name}@{step}"},
        mesh=mesh)
    m = evaluation.flat_metrics(res)
    m["time/bench_eval_s"] = time.time() - t0
    key = f"avg@{res['settings']['samples']}"
    console(f"step {step}: {e.protocol} " + ", ".join(
        f"{b} {v['metrics'][key]['mean']:.3f}" for b, v in res["benchmarks"].items())
        + f" ({key}; {m['time/bench_eval_s']:.0f}s, {run_dir / 'eval' / f'step_{step}'})")
    return m

# ------------------------------------------------------------------------------------------------
# setup: everything a run needs, built once
# ------------------------------------------------------------------------------------------------
class Console:
    """The run's one output channel. While the progress bar is open, a line for the default console
    (``print``) is written through the bar (above it, never through it); a caller's own console gets every
    line as it is. Non-primary processes say nothing."""

    def __init__(self, sink: Callable[[str], None] = print, enabled: bool = True):
        self.sink, self.enabled, self.bar = sink, enabled, None

    def __call__(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and self.sink is print:
            self.bar.write(text)
        else:
            self.sink(text)


@dataclasses.dataclass(frozen=True)
class Hook:
    """An action after a step: due every ``every`` steps (0: never) and, if ``at_end``, at the run's last
    step. ``fn(run, state, step)`` returns metrics to log with the step (or None)."""

    name: str
    every: int
    fn: Callable[["Run", TrainState, int], dict | None]
    at_end: bool = False

    def due(self, step: int, last_step: int) -> bool:
        return bool(self.every and step % self.every == 0) or (self.at_end and step == last_step)


@dataclasses.dataclass
class Run:
    """What :func:`step` and the hooks need, built once by :func:`setup`. ``state`` is the initial (or
    restored) train state; the loop carries the current one."""

    cfg: RunConfig
    run_dir: Path
    primary: bool  # only process 0 writes logs, plots and samples
    console: Console
    mesh: Any
    multi: bool  # several devices or processes: arrays are placed on the mesh
    model: Any
    train_ex: list
    eval_ex: list
    loader: Any
    ckpt: Any
    writer: Any
    state: TrainState
    start: int  # steps already done (resume)
    last_step: int  # train.max_steps, or fewer when the data ends first
    update: Callable  # the jitted (state, batch) -> (state, metrics) update
    schedule: Callable  # optimizer update count -> learning rate
    sampling: Any
    is_correct: Callable
    t_start: float
    metric_hooks: list[Hook] = dataclasses.field(default_factory=list)  # their metrics join the step's row
    action_hooks: list[Hook] = dataclasses.field(default_factory=list)  # after the row is written
    sample_root: Any = None
    eval_root: Any = None
    reward_fn: Callable | None = None  # GRPO
    old_logprob_fn: Callable | None = None  # GRPO, several updates per rollout
    pad_id: int = 0
    row_multiple: int = 1  # SFT: batch rows padded to a multiple of this
    samples: tuple | None = None  # (prompts, completions, rewards) of the latest rollout, for samples.log

    @property
    def step_mesh(self):
        return self.mesh if self.multi else None

    def place(self, batch: dict) -> dict:
        """Host arrays as global arrays sharded over the mesh's batch axes (as they are on one device)."""
        if not self.multi:
            return batch
        return {k: distributed.place(np.asarray(v), sharding.batch_sharding(self.mesh, np.ndim(v)))
                for k, v in batch.items()}


def setup(cfg: RunConfig, resume: bool = True, console: Callable[[str], None] = print) -> Run:
    """Load the model (and ``init_from``), prepare the data, build rewards, adapter, train state, jitted
    update, loader, checkpointer and metrics writer, and restore the newest intact checkpoint when resuming.
    The run directory must already be claimed (:func:`train` does it through ``tina_jax.run_dir``)."""
    from tina_jax import checkpoint, runlog
    from tina_jax.models import load_model

    t_start = time.time()
    runtime.enable_compilation_cache(cfg.train.compilation_cache)
    sft = cfg.algorithm == "sft"
    run_dir = Path(cfg.train.run_dir)
    primary = distributed.is_primary()
    say = Console(console, enabled=primary)

    mesh = sharding.make_mesh(cfg.mesh.shape)
    if not sft:
        rows = cfg.grpo.prompts_per_step * cfg.rollout.num_samples
        sharding.check_batch_divides(rows // cfg.grpo.mini_batches, mesh, "rollout mini-batch (completions)")
    multi = mesh.size > 1 or jax.process_count() > 1

    model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype,
                       mesh=mesh if multi else None, remat=cfg.model.remat)
    model = apply_init_from(cfg, model, say)
    mcfg, tok = model.config, model.tokenizer
    if not sft:
        check_context(cfg, mcfg)
    if tok is None:
        raise TrainingError(f"model {cfg.model.source} has no tokenizer; tina_jax needs one to render "
                            f"{'data' if sft else 'prompts'}")
    say(f"model {cfg.model.source}: {sum(x.size for x in jax.tree.leaves(model.params)) / 1e6:.1f}M "
        f"parameters ({mcfg.family}, {mcfg.param_dtype})")

    if sft:
        train_ex, train_rep = build_sft_data(cfg, tok)
        eval_ex, eval_rep = build_eval_data(cfg, tok)
        report = {"train": train_rep, "eval": eval_rep}
    else:
        train_ex, eval_ex, report = build_data(cfg, tok)
    if primary:
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    if sft:
        from tina_jax.sft_trainer import data_line

        say(data_line(cfg, report["train"], len(eval_ex)))
    else:
        say(f"data: {report['train']['kept']}/{report['train']['total']} train examples kept"
            + (f", {len(eval_ex)} eval" if eval_ex else ""))
    reward_fn = None if sft else build_rewards(cfg, tok)
    _, is_correct = correctness_fn(cfg)

    adapter = adapters.build(cfg.adapter, mcfg, model.params)
    k_updates = 1 if sft else config_lib.updates_per_rollout(cfg)
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps, k_updates)
    state = init_state(mcfg, model.params, tx, jax.random.key(cfg.train.seed), adapter=adapter,
                       keep_reference=not sft and adapter is None and cfg.grpo.loss.beta > 0)
    if adapter is not None:
        say(adapters.summary(adapter))
    if multi:
        state = distributed.put(state, sharding.tree_shardings(state, mesh))
    old_logprob_fn = None
    if sft:
        from tina_jax.rl.sft import make_sft_step

        update = make_sft_step(config_lib.sft_config(cfg),
                               mesh=mesh if multi else None, state=state)
    else:
        gcfg = config_lib.grpo_config(cfg)
        update = make_grpo_step(gcfg, mesh=mesh if multi else None, state=state)
        old_logprob_fn = make_logprob_fn(gcfg)
    schedule = optim.update_schedule(cfg.optim, cfg.train.max_steps, k_updates)  # update count -> rate

    loader = build_loader(cfg, train_ex)
    data_steps = data_step_limit(cfg, loader)
    last_step = min(cfg.train.max_steps, data_steps) if data_steps is not None else cfg.train.max_steps
    if last_step < cfg.train.max_steps:
        what = f"{cfg.sft.batch_size} sequences" if sft else f"{cfg.grpo.prompts_per_step} prompts"
        say(f"data: {data_steps} steps of {what} ({loader.batches_per_epoch} per epoch x {cfg.data.num_epochs} "
            f"epochs) < train.max_steps {cfg.train.max_steps}: the run ends at step {data_steps}")
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last,
                                   best_metric="eval/greedy_accuracy")
    writer = runlog.MetricsWriter(run_dir, tensorboard=cfg.train.tensorboard) if primary else distributed.NullWriter()
    start = 0
    found = ckpt.restore_latest_intact(checkpoint_arrays(state), say) if resume else None
    if found is not None:
        _, arrays, meta = found
        state = restore_checkpoint_arrays(state, arrays)
        loader.set_state(meta["loader"])
        start = int(meta["step"])
        writer.truncate_after(start)
        say(f"resumed from {run_dir / 'checkpoints'} at step {start}")

    run = Run(cfg=cfg, run_dir=run_dir, primary=primary, console=say, mesh=mesh, multi=multi, model=model,
              train_ex=train_ex, eval_ex=eval_ex, loader=loader, ckpt=ckpt, writer=writer, state=state, start=start,
              last_step=last_step, update=update, schedule=schedule, sampling=config_lib.sampling_config(cfg),
              is_correct=is_correct, t_start=t_start, sample_root=jax.random.key(cfg.train.seed + 1),
              eval_root=jax.random.key(cfg.train.seed + 2), reward_fn=reward_fn, old_logprob_fn=old_logprob_fn,
              pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
              row_multiple=cfg.sft.micro_batch_size or mesh.shape["data"] * mesh.shape["fsdp"])
    run.metric_hooks, run.action_hooks = default_hooks(run)
    runtime.release_free_memory()  # the load's transient copies, before the first compilation
    return run


# ------------------------------------------------------------------------------------------------
# step: one training step
# ------------------------------------------------------------------------------------------------
def step(run: Run, state: TrainState, i: int) -> tuple[TrainState, dict]:
    """Training step ``i + 1`` from ``state`` (``i`` steps done): the next batch of the loader, then a GRPO
    rollout and its updates, or an SFT update. Returns the new state and the step's metrics; raises
    StopIteration when the data has run out and TrainingError on a non-finite loss (nothing saved)."""
    if run.cfg.algorithm == "sft":
        from tina_jax.sft_trainer import sft_train_step

        return sft_train_step(run, state, i)
    return grpo_train_step(run, state, i)


def grpo_train_step(run: Run, state: TrainState, i: int) -> tuple[TrainState, dict]:
    """Rollout (G completions per prompt) -> rewards -> group advantages -> grpo.num_iterations passes over
    grpo.mini_batches mini-batches of updates."""
    cfg, r = run.cfg, run.cfg.rollout
    t0 = time.time()
    examples = next(run.loader)
    params = policy_params(state)
    gen = rollout(run.model, params, examples, run.sampling, jax.random.fold_in(run.sample_root, i), run.step_mesh)
    batch, texts = gen.batch(), gen.texts
    lens, truncated = np.asarray(gen.lengths), np.asarray(gen.truncated)
    t_sample = time.time() - t0
    fields = _field_lists(examples, r.num_samples)
    rewards, per_reward = distributed.score_split(  # each process scores its own prompt groups
        lambda texts, completion_lengths, **f: run.reward_fn(list(texts), completion_lengths=list(completion_lengths), **f),
        len(examples), r.num_samples, texts=texts, completion_lengths=[int(x) for x in lens], **fields)
    rewards = np.asarray(rewards, np.float32)
    t_reward = time.time() - t0 - t_sample
    batch["advantages"] = adv_lib.compute_advantages(jnp.asarray(rewards), r.num_samples,
                                                     cfg.grpo.advantage, cfg.grpo.adv_eps)
    batch = trim_padding(batch)
    first_update = int(state.step)
    state, ms = rollout_updates(state, batch, cfg.grpo.mini_batches, cfg.grpo.num_iterations, run.update,
                                run.old_logprob_fn, run.place)
    m = {k: float(np.mean([float(x[k]) for x in ms])) for k in ms[0]}
    if not (math.isfinite(m["loss"]) and math.isfinite(m.get("grad_norm", 0.0))):
        # raised before the loop saves: a non-finite update never reaches a checkpoint
        raise TrainingError(
            f"loss is {m['loss']} at step {i + 1} (grad norm {m['grad_norm']}); nothing of this step was "
            f"saved (the last checkpoint is intact); lower optim.lr, check the rewards (mean "
            f"{rewards.mean():.3f}), or set optim.max_grad_norm")
    dt = time.time() - t0
    k_updates = len(ms)
    metrics = {
        "reward/mean": float(np.nanmean(rewards)), "reward/std": float(np.nanstd(rewards)),
        "reward/group_std_mean": float(adv_lib.group_std_mean(jnp.asarray(rewards), r.num_samples)),
        "reward/zero_adv_group_frac": float(adv_lib.zero_advantage_group_fraction(
            jnp.asarray(rewards), r.num_samples)),
        **{f"reward/{k}": float(np.nanmean(np.asarray(v, np.float32))) for k, v in per_reward.items()},
        "completion/mean_length": float(lens.mean()), "completion/truncated_frac": float(truncated.mean()),
        **m, "lr": float(np.mean([run.schedule(first_update + j) for j in range(k_updates)])),
        "time/step_s": dt, "time/sample_s": t_sample, "time/reward_s": t_reward,
        "time/train_s": dt - t_sample - t_reward, "throughput/tokens_per_s": int(lens.sum()) / dt,
        "time/elapsed_s": time.time() - run.t_start,
    }
    if run.reward_fn.correctness is not None:  # the reward already judged each completion: read it
        name, at = run.reward_fn.correctness
        metrics["reward/accuracy"] = float(np.mean(np.asarray(per_reward[name]) >= at))
    run.samples = ([examples[j // r.num_samples]["prompt_text"] for j in range(len(texts))], texts,
                   rewards.tolist())
    return state, metrics


def rollout_updates(state: TrainState, batch: dict, mini_batches: int, num_iterations: int, update: Callable,
                    old_logprob_fn: Callable, place: Callable = lambda b: b) -> tuple[TrainState, list]:
    """The optimizer updates of one rollout: ``num_iterations`` passes over ``mini_batches`` mini-batches (rows
    in order), one ``update(state, mini-batch)`` each; returns the state and each update's metrics.

    Old logprobs (the rollout policy's) are scored by ``old_logprob_fn`` before the first update, for every
    mini-batch an update sees after the policy has moved. With one pass the first mini-batch is updated before
    any change, so its old logprobs are the current ones: it carries none and ``grpo_step`` takes
    stop_gradient(current) (ratio exactly 1, as TRL), and only the later mini-batches are scored -- half the
    pass with two mini-batches, none with one."""
    rows = batch["completion_ids"].shape[0]
    mb_rows = rows // mini_batches
    old_from = mb_rows if num_iterations == 1 else 0
    old = None
    if old_from < rows:
        old = distributed.to_host(old_logprob_fn(state, place({k: v[old_from:] for k, v in batch.items()})))
    ms = []
    for _ in range(num_iterations):
        for k in range(mini_batches):
            mb = {key: v[k * mb_rows:(k + 1) * mb_rows] for key, v in batch.items()}
            if old is not None and k * mb_rows >= old_from:
                mb["old_logprobs"] = old[k * mb_rows - old_from:(k + 1) * mb_rows - old_from]
            state, m = update(state, place(mb))
            ms.append(m)
    return state, ms


# ------------------------------------------------------------------------------------------------
# Hooks: actions every N steps
# ------------------------------------------------------------------------------------------------
def eval_hook(run: Run, state: TrainState, step: int) -> dict:
    """Held-out accuracy on data.eval (greedy, and sampled with train.eval_samples > 0)."""
    t0 = time.time()
    m = evaluate(run.model, policy_params(state), run.eval_ex, run.cfg, run.sampling, run.is_correct,
                 run.eval_root, run.step_mesh)
    m["time/eval_s"] = time.time() - t0
    run.console(f"step {step}: held-out greedy accuracy {m['eval/greedy_accuracy']:.3f}"
                + (f", sampled {m['eval/sampled_accuracy']:.3f}" if "eval/sampled_accuracy" in m else "")
                + f" ({len(run.eval_ex)} problems, {m['time/eval_s']:.0f}s)")
    return m


def bench_hook(run: Run, state: TrainState, step: int) -> dict:
    """The eval section's benchmarks on the current weights (``tina_jax.evaluation``)."""
    return bench_eval(run.cfg, run.model, policy_params(state), run.run_dir, step, run.console)


def samples_hook(run: Run, state: TrainState, step: int) -> None:
    """Append the first completions of the step's rollout to samples.log."""
    from tina_jax import runlog

    if run.primary and run.samples is not None:
        with open(run.run_dir / "samples.log", "a") as f:
            f.write(runlog.format_samples(step, *run.samples))


def default_hooks(run: Run) -> tuple[list[Hook], list[Hook]]:
    """(metric hooks, action hooks) of a run: held-out eval every train.eval_every steps and at the end;
    benchmarks every eval.every steps and at the end (eval.at_end); samples every train.sample_every (GRPO)."""
    cfg, t = run.cfg, run.cfg.train
    metric = []
    if t.eval_every and run.eval_ex:
        metric.append(Hook("eval", t.eval_every, eval_hook, at_end=True))
    if cfg.eval.benchmarks:
        metric.append(Hook("benchmarks", cfg.eval.every or 0, bench_hook, at_end=cfg.eval.at_end))
    action = []
    if cfg.algorithm != "sft" and t.sample_every:
        action.append(Hook("samples", t.sample_every, samples_hook))
    return metric, action


def save(run: Run, state: TrainState, step: int, metrics: dict) -> None:
    """Checkpoint ``step``: the state's arrays, the loader position, and the step's eval metrics (which rank
    the best checkpoint)."""
    run.ckpt.save(step, checkpoint_arrays(state), {"loader": run.loader.get_state(), "step": step},
                  metrics={k: v for k, v in metrics.items() if k.startswith("eval/")} or None)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Stop:
    signal: int | None = None
    console: Callable[[str], None] | None = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C / TERM: the user does not want to wait for the step
            raise KeyboardInterrupt(f"second signal {signum}: stopped at once without saving this step; the "
                                    "last checkpoint is kept, rerun the same command to resume from it")
        msg = (f"received signal {signum}: finishing this step, saving a checkpoint, then exiting "
               "(send it again to stop at once)")
        if self.console is not None:
            self.console(msg)
        else:
            log.warning(msg)
        self.signal = signum


def train(cfg: RunConfig, resume: bool = True, console: Callable[[str], None] = print,
          overwrite: bool = False) -> dict:
    """Run (or resume) training as configured (GRPO, or SFT with ``algorithm: sft``); returns the summary.

    The run directory is claimed first (``tina_jax.run_dir``): a second live trainer, a fresh start over
    another run's checkpoints (unless ``overwrite``) and a resume under a changed config are refused."""
    from tina_jax.run_dir import open_run_dir

    guard = open_run_dir(cfg, resume=resume, overwrite=overwrite, primary=distributed.is_primary())
    try:
        return loop(setup(cfg, resume, console))
    finally:
        guard.release()


def loop(run: Run) -> dict:
    """Steps ``run.start + 1 .. run.last_step`` with their hooks, logs and checkpoints; then :func:`finish_run`."""
    from tina_jax import runlog

    cfg, t = run.cfg, run.cfg.train
    stopper = _Stop(console=run.console)
    old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = runlog.ProgressBar(total=run.last_step, initial=run.start, log_every=t.log_every,
                             keys=runlog.SFT_POSTFIX if cfg.algorithm == "sft" else runlog.RL_POSTFIX,
                             **({} if run.primary else {"file": distributed.NullWriter(), "interactive": False}))
    run.console.bar = bar
    state, done, last_metrics = run.state, run.start, {}
    try:
        if run.start == 0 and t.eval_every and run.eval_ex:
            run.writer.write(0, eval_hook(run, state, 0))
        while done < run.last_step:
            try:
                state, metrics = step(run, state, done)
                runtime.release_free_memory()  # the step's freed buffers, before the hooks and the next step
            except StopIteration:  # fewer batches than counted (should not happen): end cleanly all the same
                run.last_step = done
                if done > run.start:
                    save(run, state, done, last_metrics)
                break
            done += 1
            for hook in run.metric_hooks:  # the last step's evaluations go into the final checkpoint
                if hook.due(done, run.last_step):
                    metrics.update(hook.fn(run, state, done) or {})
            run.writer.write(done, metrics)
            bar.update(done, metrics)
            last_metrics = metrics
            for hook in run.action_hooks:
                if hook.due(done, run.last_step):
                    hook.fn(run, state, done)
            out_of_time = t.time_limit_minutes is not None and (time.time() - run.t_start) > 60 * t.time_limit_minutes
            halt = distributed.any_process(stopper.signal is not None or out_of_time)  # all processes stop together
            if done % t.save_every == 0 or done == run.last_step or halt:
                save(run, state, done, metrics)
            if halt:
                run.console(f"stopping at step {done} ({'signal ' + str(stopper.signal) if stopper.signal else 'time limit'});"
                            f" checkpoint saved, rerun the same command to resume")
                break
    finally:
        run.ckpt.wait()
        run.ckpt.close()
        run.writer.close()
        run.console.bar = None
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    return finish_run(cfg, run.run_dir, done, run.last_step, last_metrics, run.t_start, stopper.signal, run.primary,
                      run.console)


def finish_run(cfg: RunConfig, run_dir: Path, step: int, last_step: int, last_metrics: dict, t_start: float,
               signal_seen: int | None, primary: bool, console: Callable[[str], None]) -> dict:
    """The end of a GRPO or SFT run: data-exhaustion line, summary.json with the cost line, plot; raises
    KeyboardInterrupt after a signal (the checkpoint is already saved)."""
    from tina_jax import runlog

    t = cfg.train
    elapsed = time.time() - t_start
    exhausted = step >= last_step and last_step < t.max_steps
    if exhausted:
        console(f"data exhausted at step {step} (train.max_steps {t.max_steps}); final checkpoint saved")
    summary = {"steps": step, "elapsed_s": elapsed, "run_dir": str(run_dir), "data_exhausted": exhausted,
               **last_metrics}
    if t.plot and primary:
        panels = runlog.SFT_PANELS if cfg.algorithm == "sft" else runlog.RL_PANELS  # SFT: no reward panel
        summary["plot"] = str(runlog.plot_run(run_dir / "metrics.jsonl", run_dir / "progress.png", panels))
    summary["cost"] = runlog.cost_line(elapsed, jax.device_count(), jax.devices()[0].platform,
                                       t.cost_per_device_hour)
    if primary:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console(summary["cost"])
    if signal_seen:
        raise KeyboardInterrupt(f"stopped by signal {signal_seen} after saving step {step}")
    return summary

def dry_run(cfg: RunConfig, console: Callable[[str], None] = print, memory_plan: bool = True) -> dict:
    """Validate a recipe without the weights (``tina_jax.dry_run``)."""
    from tina_jax.dry_run import dry_run as _dry_run

    return _dry_run(cfg, console, memory_plan)
