#!/usr/bin/env python
"""Where one GRPO training step's time goes: W1 (the default recipe) broken into phases.

    python bench/step_breakdown.py                          # configs/smollm2_arith_cpu.yaml, 1 warm-up + 3 timed steps
    python bench/step_breakdown.py --steps 5 --out bench/results/step_breakdown.json
    python bench/step_breakdown.py --config configs/X.yaml key=value ...   # any GRPO recipe, with overrides
    python bench/step_breakdown.py --smoke --model DIR      # tiny shapes on a tiny model (CI)

The step is the trainer's (same construction, same order, same keys, so the per-step rewards are those of
``launch/train.py`` with the same config), cut into phases with ``jax.block_until_ready`` around each:

  data              next(loader): the step's prompts (host)
  policy params     the adapter applied as containers (``policy_params``)
  rollout           ``generate``: prefill + decode on the device, then tokens to host and text decoding;
                    "of which text decode" re-times the tokenizer's ``batch_decode`` of the same rows
  rewards           the reward functions on the texts (host; math-verify for W1)
  advantages+batch  group advantages, ``Generation.batch()`` and ``trim_padding`` (host copies)
  old logprobs      the policy's logprobs before the first update (only with several updates per rollout)
  ref logprobs      a separate reference pass: none in this trainer (beta > 0 computes them inside the update)
  update            every ``grpo_step`` of the rollout (forward + backward + optimizer, fused in one program)
  metrics (host)    metrics to floats, the lr schedule, and the accuracy re-check the trainer logs

The update is further split, on the same mini-batches and without touching the state: ``forward`` = the
policy's logprob pass (``make_logprob_fn``, the loss's forward), ``optimizer`` = ``tx.update`` +
``apply_updates`` on gradient-shaped zeros, ``backward`` = update - forward - optimizer (derived).

The first ``--warmup`` steps compile (reported apart); the median over the ``--steps`` timed steps is the
breakdown. XLA compilations inside timed steps are counted per phase (``/jax/core/compile/backend_compile_duration``):
a steady step that compiles is a new shape (e.g. a trimmed completion width seen for the first time).
Timings on a shared machine are noisy; compare phases from the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

PHASES = ("data", "policy params", "rollout", "rollout: of which text decode", "rewards", "advantages+batch",
          "old logprobs", "ref logprobs", "update", "update: forward", "update: optimizer",
          "update: backward (derived)", "metrics (host)")
# Phases that add up to the step (the "of which" and "update:" rows are parts of another row).
TOP = ("data", "policy params", "rollout", "rewards", "advantages+batch", "old logprobs", "ref logprobs", "update",
       "metrics (host)")

SMOKE_OVERRIDES = ["grpo.prompts_per_step=2", "rollout.num_samples=4", "rollout.max_new_tokens=8",
                   "grpo.micro_batch_size=4", "adapter.r=4", "data.n_train=16", "data.n_eval=2"]


def build(cfg):
    """The trainer's pieces for ``cfg``, built as ``tina_jax.trainer`` builds them for a one-process run.

    (One place to change when the trainer exposes ``setup(cfg)``: this becomes that call.)"""
    import jax

    from tina_jax import adapters, config as config_lib, optim, trainer
    from tina_jax.models import load_model
    from tina_jax.rl.grpo import init_state, make_grpo_step, make_logprob_fn

    model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype,
                       remat=cfg.model.remat)
    tok = model.tokenizer
    train_ex, _, _ = trainer.build_data(cfg, tok)
    adapter = adapters.build(cfg.adapter, model.config, model.params)
    tx = optim.build_optimizer(cfg.optim, cfg.train.max_steps, config_lib.updates_per_rollout(cfg))
    gcfg = config_lib.grpo_config(cfg)
    state = init_state(model.config, model.params, tx, jax.random.key(cfg.train.seed), adapter=adapter,
                       keep_reference=adapter is None and gcfg.loss.beta > 0)
    sampling = config_lib.sampling_config(cfg)
    _, is_correct = trainer.correctness_fn(cfg)
    return dict(model=model, loader=trainer.build_loader(cfg, train_ex), reward_fn=trainer.build_rewards(cfg, tok),
                is_correct=is_correct, state=state, gcfg=gcfg, sampling=sampling,
                step_fn=make_grpo_step(gcfg), old_logprob_fn=make_logprob_fn(gcfg),
                schedule=optim.update_schedule(cfg.optim, cfg.train.max_steps, config_lib.updates_per_rollout(cfg)),
                sample_root=jax.random.key(cfg.train.seed + 1), trim_padding=trainer.trim_padding)


class Timer:
    """Per-phase seconds and XLA compilations of one step."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.compiles: dict[str, int] = {}
        self.compile_s: dict[str, float] = {}

    def __call__(self, phase: str, fn):
        with common.CompileCounter() as cc:
            dt, out = common.time_call(fn)
        self.s[phase] = self.s.get(phase, 0.0) + dt
        self.compiles[phase] = self.compiles.get(phase, 0) + cc.count
        self.compile_s[phase] = self.compile_s.get(phase, 0.0) + cc.seconds
        return out


def run_step(p: dict, cfg, step: int) -> tuple[Timer, dict]:
    """One training step as the trainer runs it (state advanced in ``p``), timed by phase."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tina_jax.rl import advantages as adv_lib
    from tina_jax.rl.grpo import policy_params
    from tina_jax.sampling import generate
    from tina_jax.trainer import rollout_updates

    T = Timer()
    g, r = cfg.grpo, cfg.rollout
    G = r.num_samples
    t_step = time.perf_counter()
    examples = T("data", lambda: next(p["loader"]))
    params = T("policy params", lambda: policy_params(p["state"]))
    gen = T("rollout", lambda: generate(p["model"], [ex["prompt_ids"] for ex in examples], p["sampling"],
                                        jax.random.fold_in(p["sample_root"], step), params=params))
    tok = p["model"].tokenizer
    lens = np.asarray(gen.lengths)
    rows = [np.asarray(gen.tokens)[i, :n].tolist() for i, n in enumerate(lens)]
    T("rollout: of which text decode", lambda: tok.batch_decode(rows, skip_special_tokens=True))
    fields = common.field_lists(examples, G)
    rewards, per_reward = T("rewards", lambda: p["reward_fn"](list(gen.texts), completion_lengths=[int(x) for x in lens],
                                                              **fields))
    rewards = np.asarray(rewards, np.float32)

    def assemble():
        batch = gen.batch()
        batch["advantages"] = adv_lib.compute_advantages(jnp.asarray(rewards), G, g.advantage, g.adv_eps)
        return p["trim_padding"](batch)

    batch = T("advantages+batch", assemble)
    T.s["old logprobs"] = 0.0  # the trainer's rollout_updates scores them only where the policy has moved
    T.s["ref logprobs"] = 0.0  # no separate pass: beta > 0 computes the reference inside grpo_step
    mbs = []

    def old_fn(state, b):
        return T("old logprobs", lambda: np.asarray(p["old_logprob_fn"](state, b)))

    def update(state, mb):
        mbs.append(mb)
        return T("update", lambda: p["step_fn"](state, mb))

    p["state"], ms = rollout_updates(p["state"], batch, g.mini_batches, g.num_iterations, update, old_fn)
    t_measured = time.perf_counter() - t_step

    def host_metrics():
        m = {k: float(np.mean([float(x[k]) for x in ms])) for k in ms[0]}
        first = int(p["state"].step) - len(ms)
        m["lr"] = float(np.mean([p["schedule"](first + j) for j in range(len(ms))]))
        m["reward/mean"] = float(np.nanmean(rewards))
        m["reward/accuracy"] = float(np.mean(p["is_correct"](list(gen.texts), **fields)))
        return m

    metrics = T("metrics (host)", host_metrics)
    step_s = t_measured + T.s["metrics (host)"]
    # The update's parts, re-timed on the same mini-batches without changing the state.
    state = p["state"]
    logp = p["forward_fn"]
    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    for mb in mbs:
        T("update: forward", lambda mb=mb: logp(state, mb))
        T("update: optimizer", lambda: p["opt_fn"](state, zeros))
    T.s["update: backward (derived)"] = max(0.0, T.s["update"] - T.s["update: forward"] - T.s["update: optimizer"])
    T.s["step"] = step_s
    T.s["unaccounted"] = step_s - sum(T.s.get(k, 0.0) for k in TOP)
    metrics.update({"completion/mean_length": float(lens.mean()), "batch/completion_width": int(batch["completion_ids"].shape[1]),
                    "batch/prompt_width": int(batch["prompt_ids"].shape[1])})
    return T, metrics


def add_measure_fns(p: dict) -> None:
    import jax
    import optax

    from tina_jax.rl.grpo import make_logprob_fn

    p["forward_fn"] = make_logprob_fn(p["gcfg"])  # the policy's logprob pass: the loss's forward

    @jax.jit
    def opt_fn(state, grads):
        updates, opt_state = state.tx.update(grads, state.opt_state, state.trainable)
        return optax.apply_updates(state.trainable, updates), opt_state

    p["opt_fn"] = opt_fn


def summarise(steps: list[tuple[Timer, dict]]) -> dict:
    keys = list(PHASES) + ["step", "unaccounted"]
    out = {}
    for k in keys:
        xs = [t.s.get(k, 0.0) for t, _ in steps]
        out[k] = {"median_s": common.median(xs), "mean_s": sum(xs) / len(xs), "all_s": xs,
                  "compiles": sum(t.compiles.get(k, 0) for t, _ in steps),
                  "compile_s": sum(t.compile_s.get(k, 0.0) for t, _ in steps)}
    step_med = out["step"]["median_s"] or 1e-12
    for k in keys:
        out[k]["share_of_step"] = (out[k]["median_s"] or 0.0) / step_med
    return out


def table(summary: dict, warm: list[tuple[Timer, dict]]) -> str:
    lines = [f"{'phase':<30} {'median s':>9} {'share':>7} {'compiles':>9} {'compile s':>10}", "-" * 69]
    for k in list(PHASES) + ["unaccounted", "step"]:
        s = summary[k]
        indent = "  " if (k.startswith(("update:", "rollout:"))) else ""
        lines.append(f"{indent + k:<30} {s['median_s']:>9.3f} {100 * s['share_of_step']:>6.1f}% {s['compiles']:>9d} "
                     f"{s['compile_s']:>10.2f}")
    for i, (t, _) in enumerate(warm):
        lines.append(f"warm-up step {i + 1}: {t.s['step']:.2f} s, {sum(t.compiles.values())} compilations "
                     f"({sum(t.compile_s.values()):.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(common.W1_RECIPE), help="a GRPO recipe (default: W1's)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="steps run first to compile (reported apart)")
    ap.add_argument("--model", default=None, help="model.source override (e.g. a tiny model directory)")
    ap.add_argument("--smoke", action="store_true", help="tiny batch and shapes (CI; use with --model DIR)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    from tina_jax.config import load_config

    import jax

    over = (SMOKE_OVERRIDES if args.smoke else []) + ([f"model.source={args.model}"] if args.model else [])
    over += ["train.eval_every=0"]  # train.max_steps stays the recipe's: the lr schedule depends on it
    keys = {o.split("=", 1)[0] for o in args.overrides}
    cfg = load_config(args.config, [o for o in over if o.split("=", 1)[0] not in keys] + list(args.overrides))
    if cfg.algorithm != "grpo":
        ap.error(f"{args.config} is not a GRPO recipe (algorithm {cfg.algorithm})")
    t0 = time.perf_counter()
    p = build(cfg)
    add_measure_fns(p)
    setup_s = time.perf_counter() - t0
    common.reset_peak_rss()
    warm, timed = [], []
    for i in range(args.warmup + args.steps):
        t, m = run_step(p, cfg, i)
        (warm if i < args.warmup else timed).append((t, m))
        print(f"step {i + 1}{' (warm-up)' if i < args.warmup else ''}: {t.s['step']:.2f} s, reward "
              f"{m['reward/mean']:.3f}, completion width {m['batch/completion_width']}, "
              f"{sum(t.compiles.values())} compilations", flush=True)
    summary = summarise(timed)
    text = table(summary, warm)
    print("\n" + text)
    g, r = cfg.grpo, cfg.rollout
    res = {"config": args.config, "overrides": list(args.overrides), "smoke": args.smoke, "model": cfg.model.source,
           "backend": jax.default_backend(), "rows": g.prompts_per_step * r.num_samples,
           "updates_per_rollout": g.mini_batches * g.num_iterations, "max_new_tokens": r.max_new_tokens,
           "setup_s": setup_s, "warmup_steps": [t.s | {"compiles": sum(t.compiles.values())} for t, _ in warm],
           "phases": summary, "steps": [{"seconds": t.s, "compiles": t.compiles, "metrics": m} for t, m in timed],
           "peak_rss_bytes_after_setup": common.peak_rss_bytes(), "device_peak_bytes": common.device_peak_bytes(),
           "table": text, "versions": common.versions("jax", "jaxlib")}
    if args.out:
        print(f"wrote {common.write_json(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
