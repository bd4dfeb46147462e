"""The supervised loop (``algorithm: sft``): batch -> sft_step -> eval -> checkpoint, with the GRPO loop's
run directory, checkpoints, exact resume, metrics, TensorBoard, progress bar, plot and dry run.

    summary = train(load_config("configs/smollm2_kk_sft_cpu.yaml"))   # trainer.train dispatches here

Data: ``data.train`` records with ``messages``, ``prompt``/``completion`` or the prompt recipe's field +
``completion`` (``tina_jax.data.sft``), rendered with the chat template; held-out accuracy on ``data.eval``
with the rewards' correctness check (as the GRPO loop), and the ``eval`` section's benchmarks.
Resume is exact: the grain loader state, the trainable weights, the optimizer state and the rng are
checkpointed; a step's batch depends on nothing else.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from tina_jax import config as config_lib
from tina_jax import adapters, distributed, optim, sharding
from tina_jax.config import RunConfig
from tina_jax.rl.grpo import init_state, policy_params
from tina_jax.rl.sft import make_sft_step, pack_sequences, sft_step
from tina_jax import trainer as tr

__all__ = ["train_sft", "dry_run_sft", "build_sft_data", "make_batch"]


def build_sft_data(cfg: RunConfig, tokenizer) -> tuple[list[dict], dict]:
    """(tokenized SFT examples of data.train, report)."""
    from tina_jax.data.sft import prepare_sft_examples

    d, s = cfg.data, cfg.sft
    n_train = d.n_train if d.n_train is not None else (5000 if d.train.startswith("synthetic:") else None)
    return prepare_sft_examples(tr.load_split(cfg, d.train, d.train_split, n_train), tokenizer, d.prompt_recipe,
                                d.field_map or None, s.completion_field, s.max_length, s.overlong)


def make_batch(cfg: RunConfig, examples: list[dict], pad_id: int, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """The step's batch: one sequence per row, width the longest rounded up to 64 (few compiled shapes), or
    (sft.pack) first-fit packed into rows of sft.max_length. Rows are padded with empty rows (no tokens, no
    loss: the update is unchanged) to a multiple of ``row_multiple``."""
    s = cfg.sft
    seqs = [(ex["input_ids"], ex["loss_mask"]) for ex in examples]
    if s.pack:
        length = s.max_length
        total = sum(len(t) for t, _ in seqs)
        rows = max(1, -(-total // length))
        while True:
            try:
                pack_sequences(seqs, rows, length, pad_id, pack=True)
                break
            except ValueError:
                rows += 1
    else:
        rows = len(seqs)
        length = min(s.max_length, -(-max(len(t) for t, _ in seqs) // 64) * 64)
    rows = -(-rows // row_multiple) * row_multiple
    return pack_sequences(seqs, rows, length, pad_id, pack=s.pack)


def _row_multiple(cfg: RunConfig, mesh) -> int:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    return cfg.sft.micro_batch_size or n


def train_sft(cfg: RunConfig, resume: bool = True, console: Callable[[str], None] = print) -> dict:
    """Run (or resume) supervised fine-tuning as configured; returns the final summary dict."""
    from tina_jax import checkpoint, runlog
    from tina_jax.data import pipeline
    from tina_jax.models import load_model

    t_start = time.time()
    run_dir = Path(cfg.train.run_dir)  # claimed (locked, checked, config.yaml written) by trainer.train
    primary = distributed.is_primary()  # only process 0 writes logs and plots (tina_jax.distributed)
    if not primary:
        console = lambda *a, **k: None  # noqa: E731
    mesh = sharding.make_mesh(cfg.mesh.shape)
    multi = mesh.size > 1 or jax.process_count() > 1
    model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype,
                       mesh=mesh if multi else None, remat=cfg.model.remat)
    model = tr.apply_init_from(cfg, model, console)
    mcfg, tok = model.config, model.tokenizer
    if tok is None:
        raise tr.TrainingError(f"model {cfg.model.source} has no tokenizer; tina_jax needs one to render data")
    console(f"model {cfg.model.source}: {sum(x.size for x in jax.tree.leaves(model.params)) / 1e6:.1f}M "
            f"parameters ({mcfg.family}, {mcfg.param_dtype})")

    train_ex, train_rep = build_sft_data(cfg, tok)
    eval_ex, eval_rep = tr.build_eval_data(cfg, tok)
    if primary:
        (run_dir / "data_report.json").write_text(json.dumps({"train": train_rep, "eval": eval_rep}, indent=2))
    dropped = train_rep["total"] - train_rep["kept"]
    console(f"data: {train_rep['kept']}/{train_rep['total']} SFT examples kept"
            + (f" ({train_rep['no_target']} without a target, {train_rep['overlong']} over sft.max_length "
               f"{cfg.sft.max_length}: {'truncated' if cfg.sft.overlong == 'truncate' else 'dropped'})"
               if dropped or train_rep["truncated"] else "")
            + f", tokens median {train_rep['tokens']['median']} max {train_rep['tokens']['max']}"
            + (f"; {len(eval_ex)} eval" if eval_ex else ""))
    _, is_correct = tr.correctness_fn(cfg)

    adapter = adapters.build(cfg.adapter, mcfg, model.params)
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps)
    state = init_state(mcfg, model.params, tx, jax.random.key(cfg.train.seed), adapter=adapter)
    if adapter is not None:
        console(adapters.summary(adapter))
    if multi:
        state = distributed.put(state, sharding.tree_shardings(state, mesh))
    step_fn = make_sft_step(config_lib.sft_config(cfg),
                            mesh=mesh if multi else None, state=state)
    schedule = optim.update_schedule(cfg.optim, cfg.train.max_steps, 1)
    d = cfg.data
    # every process walks the same order and places its devices' rows of each batch (as trainer.build_loader)
    loader = pipeline.make_loader(train_ex, batch_size=cfg.sft.batch_size, seed=d.seed, num_epochs=d.num_epochs,
                                  shuffle=d.shuffle)
    data_steps = loader.batches_per_epoch * d.num_epochs if d.num_epochs is not None else None
    last_step = min(cfg.train.max_steps, data_steps) if data_steps is not None else cfg.train.max_steps
    if last_step < cfg.train.max_steps:
        console(f"data: {data_steps} steps of {cfg.sft.batch_size} sequences ({loader.batches_per_epoch} per "
                f"epoch x {d.num_epochs} epochs) < train.max_steps {cfg.train.max_steps}: the run ends at step "
                f"{data_steps}")
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep_last=cfg.train.keep_last,
                                   best_metric="eval/greedy_accuracy")
    writer = runlog.MetricsWriter(run_dir, tensorboard=cfg.train.tensorboard) if primary else distributed.NullWriter()
    start = 0
    found = ckpt.restore_latest_intact(tr._checkpoint_arrays(state), console) if resume else None
    if found is not None:
        _, arrays, meta = found
        state = tr._restore_state(state, arrays)
        loader.set_state(meta["loader"])
        start = int(meta["step"])
        writer.truncate_after(start)
        console(f"resumed from {run_dir / 'checkpoints'} at step {start}")

    sampling = config_lib.sampling_config(cfg, num_samples=1)  # the held-out evaluation's
    eval_root = jax.random.key(cfg.train.seed + 2)
    row_multiple = _row_multiple(cfg, mesh)

    def run_eval(step: int) -> dict:
        t0 = time.time()
        m = tr.evaluate(model, policy_params(state), eval_ex, cfg, sampling, is_correct, eval_root,
                        mesh if multi else None)
        m["time/eval_s"] = time.time() - t0
        console(f"step {step}: held-out greedy accuracy {m['eval/greedy_accuracy']:.3f}"
                + (f", sampled {m['eval/sampled_accuracy']:.3f}" if "eval/sampled_accuracy" in m else "")
                + f" ({len(eval_ex)} problems, {m['time/eval_s']:.0f}s)")
        return m

    stopper = tr._Stop()
    old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = runlog.ProgressBar(total=last_step, initial=start, log_every=cfg.train.log_every,
                             **({} if primary else {"file": distributed.NullWriter(), "interactive": False}))
    t = cfg.train
    last_metrics: dict = {}
    step = start
    try:
        if start == 0 and t.eval_every and eval_ex:
            writer.write(0, run_eval(0))
        while step < last_step:
            t0 = time.time()
            examples = next(loader)
            batch = make_batch(cfg, examples, pad_id, row_multiple)
            update = int(state.step)
            state, m = step_fn(state, {k: distributed.place(np.asarray(v), sharding.batch_sharding(mesh, np.ndim(v)))
                                       for k, v in batch.items()} if multi else batch)
            m = {k: float(v) for k, v in m.items()}
            if not math.isfinite(m["loss"]):
                raise tr.TrainingError(f"loss is {m['loss']} at step {step + 1} (grad norm {m['grad_norm']}); "
                                       "lower optim.lr or set optim.max_grad_norm")
            step += 1
            dt = time.time() - t0
            real = int((batch["segment_ids"] > 0).sum())
            metrics = {**m, "lr": float(schedule(update)), "sft/pad_frac": 1.0 - real / batch["input_ids"].size,
                       "sft/row_tokens": float(batch["input_ids"].shape[1]), "time/step_s": dt,
                       "throughput/tokens_per_s": real / dt, "time/elapsed_s": time.time() - t_start}
            if t.eval_every and eval_ex and (step % t.eval_every == 0 or step == last_step):
                metrics.update(run_eval(step))
            if cfg.eval.benchmarks and ((cfg.eval.every and step % cfg.eval.every == 0)
                                        or (cfg.eval.at_end and step == last_step)):
                metrics.update(tr.bench_eval(cfg, model, policy_params(state), run_dir, step, console))
            writer.write(step, metrics)
            bar.update(step, metrics)
            last_metrics = metrics
            out_of_time = t.time_limit_minutes is not None and (time.time() - t_start) > 60 * t.time_limit_minutes
            halt = distributed.any_process(stopper.signal is not None or out_of_time)  # all stop together
            if step % t.save_every == 0 or step == last_step or halt:
                ckpt.save(step, tr._checkpoint_arrays(state), {"loader": loader.get_state(), "step": step},
                          metrics={k: v for k, v in metrics.items() if k.startswith("eval/")} or None)
            if halt:
                console(f"stopping at step {step} ({'signal ' + str(stopper.signal) if stopper.signal else 'time limit'});"
                        f" checkpoint saved, rerun the same command to resume")
                break
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    return tr.finish_run(cfg, run_dir, step, last_step, last_metrics, t_start, stopper.signal, primary, console)


def dry_run_sft(cfg: RunConfig, console: Callable[[str], None] = print) -> dict:
    """Validate an SFT recipe without weights: model config, tokenizer and data where reachable (rendering,
    lengths, drops), and the shapes of the whole SFT step via ``jax.eval_shape``; prints memory estimates."""
    from tina_jax.models import decoder, load_config

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
            eval_ex, _ = tr.build_eval_data(cfg, tok)
            console(f"eval: {len(eval_ex)} held-out prompts")
        except Exception as e:
            if not tr._remote_source(cfg.data.train) or (cfg.data.eval and not tr._remote_source(cfg.data.eval)):
                raise  # a local file (present, or missing) fails here exactly as the real run would
            report["data"] = f"{cfg.data.train} not reachable offline ({type(e).__name__}): not checked"
            console(f"data: {report['data']}")
    else:
        for source in (cfg.data.train, cfg.data.eval):
            if source and not tr._remote_source(source) and not source.startswith("synthetic:") \
                    and not Path(source).exists():
                raise FileNotFoundError(f"data file {source!r} does not exist")
        report["data"] = "not checked (needs the tokenizer to render the data)"
        console(f"data: {report['data']}")
    tr.build_rewards(cfg, tok)
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
    new_state, metrics = jax.eval_shape(lambda st, b: sft_step(st, b, config_lib.sft_config(cfg)), state, batch)
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
