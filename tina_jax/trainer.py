"""The training loop: rollout -> rewards -> advantages -> grpo_step(s) -> eval -> checkpoint.

    summary = train(load_config("configs/smollm2_arith_cpu.yaml"))

Everything here is orchestration; the concepts live in their modules (models, adapters, sampling,
rl, rewards, data, checkpoint, runlog). A run directory holds ``config.yaml`` (the resolved config),
``data_report.json``, ``metrics.jsonl``, ``tb/``, ``samples.log``, ``checkpoints/`` and ``progress.png``.

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

from tina_jax import config as config_lib
from tina_jax import distributed, optim, sharding
from tina_jax.config import RunConfig
from tina_jax.rl import advantages as adv_lib
from tina_jax.rl.grpo import GrpoConfig, TrainState, init_state, make_grpo_step, make_logprob_fn, policy_params
from tina_jax.rl.losses import LossConfig

log = logging.getLogger("tina_jax.trainer")

# Rewards whose value says "correct" (for accuracy metrics), with the threshold that means correct.
_CORRECTNESS = {"accuracy": 1.0, "gsm8k_strict": 1.0, "kk": 2.0}


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, empty data, ...); the message says why and what to try."""


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def load_split(cfg: RunConfig, source: str, split: str | None, n: int | None):
    """Raw records of one split (synthetic sources draw train and eval disjointly with data.seed)."""
    from tina_jax.data import pipeline

    d = cfg.data
    kw: dict[str, Any] = {}
    if source.startswith("synthetic:"):
        kw = {"n": n, "seed": d.seed}
        if split in (None, "train"):
            kw["n_eval"] = d.n_eval if d.eval == source else 0
        else:
            kw["n_train"] = d.n_train or 0
    records = pipeline.load_records(source, split, **kw)
    if n is not None and not source.startswith("synthetic:"):
        records = records.select(range(min(n, len(records)))) if hasattr(records, "select") else records[:n]
    return records


def _prompt_options(cfg: RunConfig) -> dict:
    d = cfg.data
    return dict(recipe=d.prompt_recipe, field_map=d.field_map or None, required_fields=d.required_fields,
                max_prompt_length=d.max_prompt_length, overlong=d.overlong, keep_fields=d.keep_fields)


def build_eval_data(cfg: RunConfig, tokenizer) -> tuple[list, dict | None]:
    """(held-out examples of data.eval, report), prompts rendered as for training rollouts."""
    from tina_jax.data import pipeline

    d = cfg.data
    if not d.eval:
        return [], None
    eval_ex, eval_rep = pipeline.prepare_examples(load_split(cfg, d.eval, d.eval_split, d.n_eval), tokenizer,
                                                  **_prompt_options(cfg))
    return eval_ex[:d.n_eval], eval_rep


def build_data(cfg: RunConfig, tokenizer) -> tuple[list, list, dict]:
    """(train examples, eval examples, report) with prompts rendered by the tokenizer's chat template."""
    from tina_jax.data import pipeline

    d = cfg.data
    n_train = d.n_train if d.n_train is not None else (5000 if d.train.startswith("synthetic:") else None)
    train_ex, train_rep = pipeline.prepare_examples(load_split(cfg, d.train, d.train_split, n_train), tokenizer,
                                                    **_prompt_options(cfg))
    eval_ex, eval_rep = build_eval_data(cfg, tokenizer)
    return train_ex, eval_ex, {"train": train_rep, "eval": eval_rep}


def build_loader(cfg: RunConfig, train_ex: list):
    """The grain batch loader over the training examples (one batch = one rollout's prompts)."""
    from tina_jax.data import pipeline

    # Every process walks the same global order and holds the whole (small) batch of prompts; each scores
    # its own prompt groups (tina_jax.distributed), so N processes train exactly as one does.
    return pipeline.make_loader(train_ex, batch_size=cfg.grpo.prompts_per_step, seed=cfg.data.seed,
                                num_epochs=cfg.data.num_epochs, shuffle=cfg.data.shuffle)


def data_step_limit(cfg: RunConfig, loader) -> int | None:
    """Rollout steps the data allows (batches per epoch x data.num_epochs), None when endless."""
    if cfg.data.num_epochs is None:
        return None
    return loader.batches_per_epoch * cfg.data.num_epochs


def build_rewards(cfg: RunConfig, tokenizer) -> Callable:
    from tina_jax import rewards

    return rewards.build(cfg.rewards, tokenizer, group_size=cfg.rollout.num_generations)


def correctness_fn(cfg: RunConfig) -> tuple[str, Callable]:
    """(reward name, fn(completions, **fields) -> list[bool]) used for accuracy metrics and eval."""
    from tina_jax import rewards

    for spec in cfg.rewards:
        if spec.name in _CORRECTNESS:
            fn = rewards.get_reward(spec.name, **{k: v for k, v in spec.params.items()
                                                  if k not in ("length_unit",)})
            thr = _CORRECTNESS[spec.name]
            return spec.name, lambda c, **f: [bool(v >= thr) for v in fn(c, **f)]
    fn = rewards.get_reward("accuracy")
    return "accuracy", lambda c, **f: [bool(v >= 1.0) for v in fn(c, **f)]


def build_adapter(cfg: RunConfig, model_cfg, params):
    a = cfg.adapter
    if a.kind == "none":
        return None
    from tina_jax import adapters

    hp: dict[str, Any] = dict(r=a.rank, alpha=a.alpha, use_rslora=a.use_rslora)
    if a.kind == "lora":
        hp["dropout"] = a.dropout
    if a.kind == "tinylora":
        hp.update(u=a.u, n_tie=a.n_tie, tie_mode=a.tie_mode, projections=a.projections)
    return adapters.init(a.kind, model_cfg, params, jax.random.key(a.seed), target_modules=a.target_modules, **hp)


def grpo_config(cfg: RunConfig) -> GrpoConfig:
    g, r = cfg.grpo, cfg.rollout
    loss = LossConfig(aggregation=g.aggregation, clip_eps_low=g.clip_eps_low, clip_eps_high=g.clip_eps_high,
                      beta=g.beta, kl_estimator=g.kl_estimator, tis_cap=g.tis_cap, dual_clip=g.dual_clip,
                      max_completion_length=r.max_new_tokens,
                      microbatch_rows=(g.aggregation_rows or r.num_generations)
                      if g.aggregation == "microbatch_token_mean" else None)
    return GrpoConfig(loss=loss, micro_batch_size=g.micro_batch_size, logprob_chunk=g.logprob_chunk,
                      logprob_temperature=config_lib.logprob_temperature(cfg), group_size=r.num_generations,
                      share_prompts=g.share_prompts)


def updates_per_rollout(cfg: RunConfig) -> int:
    """Optimizer updates after each rollout: grpo.num_iterations passes x grpo.mini_batches."""
    return cfg.grpo.num_iterations * cfg.grpo.mini_batches


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


def trim_padding(batch: dict, multiple: int = 16) -> dict:
    """Drop prompt columns that are padding in every row (left) and completion columns after the longest
    completion (right), keeping widths multiples of ``multiple`` so few shapes compile. Exact: positions
    come from the masks and padded keys are masked out, so the step's result does not change."""
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


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Stop:
    signal: int | None = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C / TERM: the user does not want to wait for the step
            raise KeyboardInterrupt(f"second signal {signum}: stopped at once without saving this step; the "
                                    "last checkpoint is kept, rerun the same command to resume from it")
        log.warning("received signal %s: finishing this step, saving a checkpoint, then exiting "
                    "(send it again to stop at once)", signum)
        self.signal = signum


def _checkpoint_arrays(state: TrainState) -> dict:
    """What a checkpoint holds: everything but the frozen base weights. The adapter's frozen constants
    (SVD factors, random projections) are kept too: an SVD recomputed on another backend may flip signs."""
    return {"trainable": state.trainable, "opt_state": state.opt_state, "adapter_frozen": state.frozen["adapter"],
            "rng": jax.random.key_data(state.rng), "step": state.step}


def _restore_state(state: TrainState, arrays: dict) -> TrainState:
    frozen = dict(state.frozen, adapter=arrays["adapter_frozen"])
    return state.replace(trainable=arrays["trainable"], opt_state=arrays["opt_state"], frozen=frozen,
                         rng=jax.random.wrap_key_data(arrays["rng"]), step=arrays["step"])


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
    cfg = config_lib.load_config(run_dir / "config.yaml")
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
        adapter = build_adapter(cfg, model.config, model.params)
        state = init_state(model.config, model.params, optim.build_optimizer(cfg.optim, cfg.train.max_steps),
                           jax.random.key(cfg.train.seed), adapter=adapter)
        arrays, _ = ckpt.restore(step, like=_checkpoint_arrays(state))
    finally:
        ckpt.close()
    state = _restore_state(state, arrays)
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


def train(cfg: RunConfig, resume: bool = True, console: Callable[[str], None] = print,
          overwrite: bool = False) -> dict:
    """Run (or resume) training as configured (GRPO, or SFT with ``algorithm: sft``); returns the summary.

    The run directory is claimed first (``tina_jax.run_dir``): a second live trainer, a fresh start over
    another run's checkpoints (unless ``overwrite``) and a resume under a changed config are refused."""
    from tina_jax.run_dir import open_run_dir

    guard = open_run_dir(cfg, resume=resume, overwrite=overwrite, primary=distributed.is_primary())
    try:
        if cfg.algorithm == "sft":
            from tina_jax.sft_trainer import train_sft

            return train_sft(cfg, resume=resume, console=console)
        return _train_grpo(cfg, resume, console)
    finally:
        guard.release()


def _train_grpo(cfg: RunConfig, resume: bool, console: Callable[[str], None]) -> dict:
    from tina_jax import checkpoint, runlog, sampling as smp
    from tina_jax.models import load_model

    t_start = time.time()
    run_dir = Path(cfg.train.run_dir)
    primary = distributed.is_primary()  # only process 0 writes logs, plots and samples
    if not primary:
        console = lambda *a, **k: None  # noqa: E731

    mesh = sharding.make_mesh(cfg.mesh.shape)
    rows = cfg.grpo.prompts_per_step * cfg.rollout.num_generations
    sharding.check_batch_divides(rows // cfg.grpo.mini_batches, mesh, "rollout mini-batch (completions)")
    multi = mesh.size > 1 or jax.process_count() > 1

    model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype,
                       mesh=mesh if multi else None, remat=cfg.model.remat)
    model = apply_init_from(cfg, model, console)
    mcfg, tok = model.config, model.tokenizer
    check_context(cfg, mcfg)
    if tok is None:
        raise TrainingError(f"model {cfg.model.source} has no tokenizer; tina_jax needs one to render prompts")
    console(f"model {cfg.model.source}: {sum(x.size for x in jax.tree.leaves(model.params)) / 1e6:.1f}M "
            f"parameters ({mcfg.family}, {mcfg.param_dtype})")

    train_ex, eval_ex, report = build_data(cfg, tok)
    if primary:
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    console(f"data: {report['train']['kept']}/{report['train']['total']} train examples kept"
            + (f", {len(eval_ex)} eval" if eval_ex else ""))
    reward_fn = build_rewards(cfg, tok)
    correct_name, is_correct = correctness_fn(cfg)

    adapter = build_adapter(cfg, mcfg, model.params)
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps, updates_per_rollout(cfg))
    state = init_state(mcfg, model.params, tx, jax.random.key(cfg.train.seed), adapter=adapter,
                       keep_reference=adapter is None and cfg.grpo.beta > 0)
    if adapter is not None:
        from tina_jax import adapters

        console(adapters.summary(adapter))
    if multi:
        state = distributed.put(state, sharding.tree_shardings(state, mesh))
    gcfg = grpo_config(cfg)
    step_fn = make_grpo_step(gcfg, mesh=mesh if multi else None, state=state)
    old_logprob_fn = make_logprob_fn(gcfg)
    k_updates = updates_per_rollout(cfg)
    schedule = optim.update_schedule(cfg.optim, cfg.train.max_steps, k_updates)  # update count -> rate

    loader = build_loader(cfg, train_ex)
    data_steps = data_step_limit(cfg, loader)
    last_step = min(cfg.train.max_steps, data_steps) if data_steps is not None else cfg.train.max_steps
    if last_step < cfg.train.max_steps:
        console(f"data: {data_steps} steps of {cfg.grpo.prompts_per_step} prompts "
                f"({loader.batches_per_epoch} per epoch x {cfg.data.num_epochs} epochs) < train.max_steps "
                f"{cfg.train.max_steps}: the run ends at step {data_steps}")
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last,
                                   best_metric=f"eval/greedy_accuracy")
    writer = runlog.MetricsWriter(run_dir, tensorboard=cfg.train.tensorboard) if primary else distributed.NullWriter()
    start = 0
    found = ckpt.restore_latest_intact(_checkpoint_arrays(state), console) if resume else None
    if found is not None:
        _, arrays, meta = found
        state = _restore_state(state, arrays)
        loader.set_state(meta["loader"])
        start = int(meta["step"])
        writer.truncate_after(start)
        console(f"resumed from {run_dir / 'checkpoints'} at step {start}")

    stop_ids = smp.default_stop_token_ids(mcfg, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    r = cfg.rollout
    sampling = smp.SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                  top_k=r.top_k, num_samples=r.num_generations, stop_token_ids=stop_ids,
                                  pad_token_id=pad_id, max_prompt_length=cfg.data.max_prompt_length,
                                  adapter_decoding=r.adapter_decoding, merge_dtype=r.merge_dtype)
    sample_root = jax.random.key(cfg.train.seed + 1)
    eval_root = jax.random.key(cfg.train.seed + 2)

    def run_eval(step: int) -> dict:
        t0 = time.time()
        m = evaluate(model, policy_params(state), eval_ex, cfg, sampling, is_correct, eval_root,
                     mesh if multi else None)
        m["time/eval_s"] = time.time() - t0
        console(f"step {step}: held-out greedy accuracy {m['eval/greedy_accuracy']:.3f}"
                + (f", sampled {m['eval/sampled_accuracy']:.3f}" if "eval/sampled_accuracy" in m else "")
                + f" ({len(eval_ex)} problems, {m['time/eval_s']:.0f}s)")
        return m

    def run_bench_eval(step: int) -> dict:
        """The eval section's benchmarks on the current weights (``tina_jax.evaluation``)."""
        return bench_eval(cfg, model, policy_params(state), run_dir, step, console)

    stopper = _Stop()
    old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = runlog.ProgressBar(total=last_step, initial=start, log_every=cfg.train.log_every,
                             **({} if primary else {"file": distributed.NullWriter(), "interactive": False}))
    t = cfg.train
    last_metrics: dict = {}
    try:
        if start == 0 and t.eval_every and eval_ex:
            writer.write(0, run_eval(0))
        step = start
        while step < last_step:
            t0 = time.time()
            try:
                examples = next(loader)
            except StopIteration:  # fewer batches than counted (should not happen): end cleanly all the same
                last_step = step
                if step > start:
                    ckpt.save(step, _checkpoint_arrays(state), {"loader": loader.get_state(), "step": step},
                              metrics={k: v for k, v in last_metrics.items() if k.startswith("eval/")} or None)
                break
            params = policy_params(state)
            gen = rollout(model, params, examples, sampling, jax.random.fold_in(sample_root, step),
                          mesh if multi else None)
            batch, texts = gen.batch(), gen.texts
            lens, truncated = np.asarray(gen.lengths), np.asarray(gen.truncated)
            t_sample = time.time() - t0
            fields = _field_lists(examples, r.num_generations)
            rewards, per_reward = distributed.score_split(  # each process scores its own prompt groups
                lambda texts, completion_lengths, **f: reward_fn(list(texts), completion_lengths=list(completion_lengths), **f),
                len(examples), r.num_generations, texts=texts, completion_lengths=[int(x) for x in lens], **fields)
            rewards = np.asarray(rewards, np.float32)
            t_reward = time.time() - t0 - t_sample
            batch["advantages"] = adv_lib.compute_advantages(jnp.asarray(rewards), r.num_generations,
                                                             cfg.grpo.advantage, cfg.grpo.adv_eps)
            batch = trim_padding(batch)
            place = ((lambda b: {k: distributed.place(np.asarray(v), sharding.batch_sharding(mesh, np.ndim(v)))
                                 for k, v in b.items()}) if multi else (lambda b: b))
            if cfg.grpo.num_iterations > 1 or cfg.grpo.mini_batches > 1:
                batch["old_logprobs"] = distributed.to_host(old_logprob_fn(state, place(batch)))
            n_mb = cfg.grpo.mini_batches
            mb_rows = rows // n_mb
            first_update = int(state.step)
            ms = []
            for _ in range(cfg.grpo.num_iterations):
                for k in range(n_mb):
                    mb = {key: v[k * mb_rows:(k + 1) * mb_rows] for key, v in batch.items()}
                    state, m = step_fn(state, place(mb))
                    ms.append(m)
            m = {k: float(np.mean([float(x[k]) for x in ms])) for k in ms[0]}
            if not (math.isfinite(m["loss"]) and math.isfinite(m.get("grad_norm", 0.0))):
                # raised before the save below: a non-finite update never reaches a checkpoint
                raise TrainingError(
                    f"loss is {m['loss']} at step {step + 1} (grad norm {m['grad_norm']}); nothing of this step was "
                    f"saved (the last checkpoint is intact); lower optim.lr, check the rewards (mean "
                    f"{rewards.mean():.3f}), or set optim.max_grad_norm")
            step += 1
            dt = time.time() - t0
            tokens = int(lens.sum())
            metrics = {
                "reward/mean": float(np.nanmean(rewards)), "reward/std": float(np.nanstd(rewards)),
                "reward/group_std_mean": float(adv_lib.group_std_mean(jnp.asarray(rewards), r.num_generations)),
                "reward/zero_adv_group_frac": float(adv_lib.zero_advantage_group_fraction(
                    jnp.asarray(rewards), r.num_generations)),
                **{f"reward/{k}": float(np.nanmean(np.asarray(v, np.float32))) for k, v in per_reward.items()},
                "completion/mean_length": float(lens.mean()), "completion/truncated_frac": float(truncated.mean()),
                **m, "lr": float(np.mean([schedule(first_update + j) for j in range(k_updates)])),
                "time/step_s": dt, "time/sample_s": t_sample, "time/reward_s": t_reward,
                "time/train_s": dt - t_sample - t_reward, "throughput/tokens_per_s": tokens / dt,
                "time/elapsed_s": time.time() - t_start,
            }
            if correct_name in per_reward:
                metrics["reward/accuracy"] = float(np.mean(distributed.score_split(
                    lambda texts, **f: is_correct(list(texts), **f), len(examples), r.num_generations,
                    texts=texts, **fields)))
            # End-of-run hook: step == last_step is the last step of the run (train.max_steps, or the end of
            # the data); the final held-out evaluation runs there, and its metrics go into the final checkpoint.
            if t.eval_every and eval_ex and (step % t.eval_every == 0 or step == last_step):
                metrics.update(run_eval(step))
            if cfg.eval.benchmarks and cfg.eval.every and step % cfg.eval.every == 0:
                metrics.update(run_bench_eval(step))
            writer.write(step, metrics)
            bar.update(step, metrics)
            last_metrics = metrics
            if primary and t.sample_every and step % t.sample_every == 0:
                with open(run_dir / "samples.log", "a") as f:
                    f.write(runlog.format_samples(step, [examples[i // r.num_generations]["prompt_text"]
                                                         for i in range(len(texts))], texts, rewards.tolist()))
            out_of_time = t.time_limit_minutes is not None and (time.time() - t_start) > 60 * t.time_limit_minutes
            halt = distributed.any_process(stopper.signal is not None or out_of_time)  # all processes stop together
            if step % t.save_every == 0 or step == last_step or halt:
                ckpt.save(step, _checkpoint_arrays(state), {"loader": loader.get_state(), "step": step},
                          metrics={k: v for k, v in metrics.items() if k.startswith("eval/")} or None)
            if halt:
                console(f"stopping at step {step} ({'signal ' + str(stopper.signal) if stopper.signal else 'time limit'});"
                        f" checkpoint saved, rerun the same command to resume")
                break
        # The final weights on the eval section's benchmarks (cached samples make a repeat cheap).
        if (cfg.eval.benchmarks and cfg.eval.at_end and not stopper.signal and step >= last_step
                and not (cfg.eval.every and step > start and step % cfg.eval.every == 0)):
            final = run_bench_eval(step)
            writer.write(step, final)
            last_metrics = {**last_metrics, **final}
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    return finish_run(cfg, run_dir, step, last_step, last_metrics, t_start, stopper.signal, primary, console)


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
        summary["plot"] = str(runlog.plot_run(run_dir / "metrics.jsonl", run_dir / "progress.png"))
    summary["cost"] = runlog.cost_line(elapsed, jax.device_count(), jax.devices()[0].platform,
                                       t.cost_per_device_hour)
    if primary:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console(summary["cost"])
    if signal_seen:
        raise KeyboardInterrupt(f"stopped by signal {signal_seen} after saving step {step}")
    return summary


# ------------------------------------------------------------------------------------------------
# Dry run: everything that does not need the weights
# ------------------------------------------------------------------------------------------------
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


def _remote_source(source: str) -> bool:
    """True for a hub dataset id (skipped offline by the dry run); False for synthetic tasks and anything that
    names a local file (an existing path, a data-file suffix, or an absolute/relative path)."""
    if source.startswith("synthetic:") or Path(source).exists():
        return False
    if Path(source).suffix in (".jsonl", ".json", ".parquet", ".csv", ".arrow"):
        return False
    return not source.startswith(("/", "./", "../", "~"))


def dry_run(cfg: RunConfig, console: Callable[[str], None] = print, memory_plan: bool = True) -> dict:
    """Validate a recipe without weights: config, model config, tokenizer and data where reachable,
    prompt rendering, and the shapes of the whole GRPO step via ``jax.eval_shape``; prints memory estimates."""
    if cfg.algorithm == "sft":
        from tina_jax.sft_trainer import dry_run_sft

        return dry_run_sft(cfg, console)
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
    rows = cfg.grpo.prompts_per_step * cfg.rollout.num_generations
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
    rows = g.prompts_per_step * r.num_generations
    mb_rows = rows // g.mini_batches
    p_len = cfg.data.max_prompt_length
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps, updates_per_rollout(cfg))
    shapes = decoder.param_shapes(mcfg)

    def make_state(params):
        adapter = build_adapter(cfg, mcfg, params)
        return init_state(mcfg, params, tx, jax.random.key(0), adapter=adapter,
                          keep_reference=adapter is None and g.beta > 0)

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
