#!/usr/bin/env python
"""TinyLoRA's headline at laptop scale: held-out greedy accuracy after a fixed wall-clock budget against
the number of trained parameters (TinyLoRA with 1, 13 and 105 parameters, LoRA-XS, LoRA r=1, LoRA r=32,
full fine-tuning) on the default task (configs/smollm2_arith_cpu.yaml: GRPO on SmolLM2-135M-Instruct,
2-digit addition).

    python bench/param_sweep.py                               # the sweep (7 x --budget-minutes, plus evals)
    python bench/param_sweep.py --only tinylora_13 lora_r32   # some of it
    python bench/param_sweep.py --lr-probe                    # how the learning rates below were chosen
    python bench/param_sweep.py --smoke --model DIR           # 1 step per config on a tiny model (tests)

Each configuration trains in its own process (``launch/train.py`` with overrides, ``train.time_limit_minutes``
= the budget, which counts from the process start: loading, compiling and training), then this process
restores its last checkpoint and measures held-out greedy accuracy (not counted in the budget). Writes
``<out>/results.json``, a markdown table (``<out>/param_sweep.md``) and a log-x plot (``--png``) with the
base model's accuracy as a reference line.

Learning rates (``SWEEP``): the reference is the default recipe's LoRA r=32 at 1e-4, known to learn this task.
``--lr-probe`` takes one rollout batch of the base model and, for each configuration and a grid of rates,
one GRPO update from the fresh adapter, and prints the policy's KL(old || new) on that batch (k3 estimator,
per completion token). A configuration's rate is the one whose one-update KL matches the reference's (KL grows
as lr^2 for small steps; the grid checks that): every adapter moves the policy about as far per update (Adam's first update is lr * sign(g)
per parameter, so few parameters need a much larger rate to move it as much).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

BASE_CONFIG = common.W1_RECIPE

# The GRPO recipe every configuration shares, pinned here so that changes to the default recipe's
# schedule or batch do not change the sweep: 4 prompts x G=8 per step (twice the updates per minute of
# the default's 8 x 8 -- few minutes allow few steps), constant lr, one update per rollout, no KL.
RECIPE = ["grpo.prompts_per_step=4", "rollout.num_samples=8", "rollout.temperature=1.0",
          "rollout.max_new_tokens=48", "grpo.micro_batch_size=8", "grpo.mini_batches=1", "grpo.num_iterations=1",
          "grpo.loss.beta=0.0", "grpo.advantage=grpo", "grpo.loss.aggregation=token_mean", "optim.schedule=constant",
          "optim.warmup_ratio=0.0", "optim.weight_decay=0.0", "adapter.dropout=0.0"]

# name -> (adapter overrides, learning rate). TinyLoRA counts are for SmolLM2-135M's 30 layers x 7
# modules = 210 modules with u=1: n_tie=210 -> 1 group, 17 -> 13 groups, 2 -> 105 groups. Rates: --lr-probe.
SWEEP: dict[str, tuple[list[str], float]] = {
    "tinylora_1": (["adapter.kind=tinylora", "adapter.r=2", "adapter.alpha=32", "adapter.u=1",
                    "adapter.n_tie=210"], 2.0e-3),
    "tinylora_13": (["adapter.kind=tinylora", "adapter.r=2", "adapter.alpha=32", "adapter.u=1",
                     "adapter.n_tie=17"], 1.9e-3),
    "tinylora_105": (["adapter.kind=tinylora", "adapter.r=2", "adapter.alpha=32", "adapter.u=1",
                      "adapter.n_tie=2"], 1.8e-3),
    "lora_xs_r8": (["adapter.kind=lora_xs", "adapter.r=8", "adapter.alpha=8"], 2.6e-3),
    "lora_r1": (["adapter.kind=lora", "adapter.r=1", "adapter.alpha=4"], 3.2e-3),
    "lora_r32": (["adapter.kind=lora", "adapter.r=32", "adapter.alpha=128"], 1e-4),
    "full": (["adapter.kind=none"], 1.6e-5),
}
REFERENCE = "lora_r32"


def _overrides(name: str, args, lr: float | None = None) -> list[str]:
    adapter, default_lr = SWEEP[name]
    out = [*RECIPE, *adapter, f"optim.lr={lr if lr is not None else default_lr}"]
    if args.model:
        out.append(f"model.source={args.model}")
    if args.smoke:  # tiny models: cap the rank at 8 (LoRA's r=32 exceeds their narrowest projection)
        out += ["data.n_eval=4", "rollout.max_new_tokens=8", "grpo.prompts_per_step=1", "train.eval_batch_size=4"]
        out += [f"adapter.r={min(8, int(o.split('=')[1]))}" for o in adapter if o.startswith("adapter.r=")]
    else:
        out.append(f"data.n_eval={args.n_eval}")
    merged: dict[str, str] = {}  # a later setting of a key replaces an earlier one (train.py rejects repeats)
    for o in out + list(args.override):
        merged[o.split("=", 1)[0]] = o
    return list(merged.values())


def _load(name: str, args, lr: float | None = None):
    from tina_jax.config import load_config

    return load_config(args.config, _overrides(name, args, lr))


# ------------------------------------------------------------------------------------------------
# Evaluation of a finished run (or of the base model)
# ------------------------------------------------------------------------------------------------
class Evaluator:
    """Held-out greedy accuracy of the base model or of a run's last checkpoint, with one loaded model."""

    def __init__(self, cfg):
        import jax

        from tina_jax import trainer
        from tina_jax.config import sampling_config
        from tina_jax.models import load_model

        self.model = load_model(cfg.model.source, dtype=cfg.model.dtype, compute_dtype=cfg.model.compute_dtype)
        _, self.eval_ex, _ = trainer.build_data(cfg, self.model.tokenizer)
        self.sampling = sampling_config(cfg)  # as the trainer samples (stop and pad ids: the tokenizer's)
        self.rng = jax.random.key(cfg.train.seed + 2)  # the trainer's eval key

    def accuracy(self, cfg, params) -> float:
        from tina_jax import trainer

        _, is_correct = trainer.correctness_fn(cfg)
        m = trainer.evaluate(self.model, params, self.eval_ex, cfg, self.sampling, is_correct, self.rng)
        return m["eval/greedy_accuracy"]

    def run_params(self, run_dir: Path):
        """(the run's config, policy parameters at its last checkpoint, that checkpoint's step)."""
        from tina_jax import trainer
        from tina_jax.config import load_config

        _, params, info = trainer.load_run_policy(run_dir, "last", console=lambda s: None)
        return load_config(run_dir / "config.yaml", upgrade=True), params, info["checkpoint"]


# ------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_one(name: str, args, out: Path) -> dict:
    run_dir = out / name
    run = [f"train.run_dir={run_dir}", "train.eval_every=0", "train.save_every=100000", "train.sample_every=0",
           "train.plot=false", "train.tensorboard=false", f"train.max_steps={1 if args.smoke else 100000}",
           f"train.time_limit_minutes={args.budget_minutes}"]
    keys = {o.split("=", 1)[0] for o in run}
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(args.config), "--no-resume",
           *[o for o in _overrides(name, args) if o.split("=", 1)[0] not in keys], *run]
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"{name}: training exited with {rc}; see {out / (name + '.log')}")
    rows = [r for r in _rows(run_dir / "metrics.jsonl") if "loss" in r]
    last = rows[-min(3, len(rows)):]
    mean = lambda k: float(sum(r[k] for r in last) / len(last))  # noqa: E731
    return {"name": name, "steps": len(rows), "process_wall_s": wall,
            "train_elapsed_s": rows[-1]["time/elapsed_s"], "median_step_s": sorted(r["time/step_s"] for r in rows)[len(rows) // 2],
            "reward_last3": mean("reward/mean"), "entropy_last3": mean("entropy")}


def sweep(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(SWEEP)
    ev = Evaluator(_load(REFERENCE, args))
    from tina_jax import adapters

    results: dict = {"budget_minutes": args.budget_minutes, "n_eval": len(ev.eval_ex), "recipe": RECIPE,
                     "config": str(Path(args.config).relative_to(ROOT) if Path(args.config).is_absolute() else args.config),
                     "configs": []}
    results["base_accuracy"] = ev.accuracy(_load(REFERENCE, args), ev.model.params)
    print(f"base model: held-out greedy accuracy {results['base_accuracy']:.3f}", flush=True)
    for name in names:
        cfg = _load(name, args)
        a = cfg.adapter
        n = (sum(x.size for x in __import__("jax").tree.leaves(ev.model.params)) if a.kind == "none" else
             adapters.count_trainable(a.kind, ev.model.config, a.target_modules, **a.hparams()))
        print(f"{name}: {n:,} trained parameters, lr {cfg.optim.lr:g}, {args.budget_minutes} min ...", flush=True)
        r = run_one(name, args, out)
        rcfg, params, step = ev.run_params(out / name)
        r.update(kind=a.kind, trained_params=int(n), lr=cfg.optim.lr, accuracy=ev.accuracy(rcfg, params), ckpt_step=step)
        print(f"  {r['steps']} steps in {r['train_elapsed_s']:.0f} s: held-out greedy accuracy {r['accuracy']:.3f}",
              flush=True)
        results["configs"].append(r)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    write_outputs(results, out / "param_sweep.md", Path(args.png) if args.png else out / "param_sweep.png")
    return results


def write_outputs(results: dict, md: Path, png: Path) -> None:
    lines = ["| configuration | trained parameters | lr | steps in budget | median s/step | held-out greedy accuracy "
             "| mean reward, last 3 steps | entropy, last 3 steps |", "|---|---|---|---|---|---|---|---|",
             f"| base model (no training) | 0 | - | - | - | {100 * results['base_accuracy']:.1f}% | - | - |"]
    for r in sorted(results["configs"], key=lambda r: r["trained_params"]):
        lines.append(f"| {r['name']} | {r['trained_params']:,} | {r['lr']:g} | {r['steps']} | {r['median_step_s']:.1f} "
                     f"| **{100 * r['accuracy']:.1f}%** | {r['reward_last3']:.2f} | {r['entropy_last3']:.2f} |")
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted(results["configs"], key=lambda r: r["trained_params"])
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    ax.plot([r["trained_params"] for r in rs], [100 * r["accuracy"] for r in rs], "o-", color="C0")
    for r in rs:
        ax.annotate(r["name"], (r["trained_params"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(100 * results["base_accuracy"], ls="--", color="gray", label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(f"GRPO on SmolLM2-135M, 2-digit addition, {results['budget_minutes']:g} min per run", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    print(f"wrote {md} and {png}")


# ------------------------------------------------------------------------------------------------
# Learning-rate probe
# ------------------------------------------------------------------------------------------------
def matched_rate(kls: dict[float, float], target: float) -> float:
    """The rate whose KL is ``target``, by log-log interpolation of (rate, KL) points (slope 2 from one point)."""
    pts = sorted((math.log(lr), math.log(kl)) for lr, kl in kls.items() if kl > 0)
    if len(pts) == 1:
        return math.exp(pts[0][0] + (math.log(target) - pts[0][1]) / 2)
    t = math.log(target)
    i = min(range(len(pts) - 1), key=lambda i: 0 if pts[i][1] <= t <= pts[i + 1][1] else
            min(abs(t - pts[i][1]), abs(t - pts[i + 1][1])))
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return math.exp(x0 + (t - y0) * (x1 - x0) / (y1 - y0))


def lr_probe(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tina_jax import adapters, optim, trainer
    from tina_jax.config import grpo_config
    from tina_jax.data import pipeline
    from tina_jax.rl import advantages as adv_lib
    from tina_jax.rl.grpo import init_state, make_grpo_step, make_logprob_fn
    from tina_jax.sampling import generate

    cfg0 = _load(REFERENCE, args)
    ev = Evaluator(cfg0)
    model = ev.model
    train_ex, _, _ = trainer.build_data(cfg0, model.tokenizer)
    loader = pipeline.make_loader(train_ex, batch_size=cfg0.grpo.prompts_per_step, seed=cfg0.data.seed,
                                  num_epochs=None)
    reward_fn = trainer.build_rewards(cfg0, model.tokenizer)
    G = cfg0.rollout.num_samples
    # a batch whose groups carry signal (mixed rewards), sampled from the base model
    for i in range(20):
        examples = next(loader)
        gen = generate(model, [ex["prompt_ids"] for ex in examples], ev.sampling, jax.random.key(100 + i))
        rewards = np.asarray(reward_fn(gen.texts, completion_lengths=[int(x) for x in np.asarray(gen.lengths)],
                                       **common.field_lists(examples, G))[0], np.float32)
        if adv_lib.zero_advantage_group_fraction(jnp.asarray(rewards), G) < 1.0:
            break
    batch = gen.batch()
    batch["advantages"] = adv_lib.compute_advantages(jnp.asarray(rewards), G, cfg0.grpo.advantage, cfg0.grpo.adv_eps)
    batch = trainer.trim_padding(batch)
    mask = np.asarray(batch["completion_mask"]).astype(bool)
    print(f"probe batch: {len(examples)} prompts x {G}, mean reward {rewards.mean():.3f}", flush=True)

    factors = [float(x) for x in args.probe_factors]
    out: dict = {}
    for name in (args.only or list(SWEEP)):
        cfg = _load(name, args)
        gcfg = grpo_config(cfg)
        step_fn = make_grpo_step(gcfg, donate=False)
        logp_fn = make_logprob_fn(gcfg)
        adapter = adapters.build(cfg.adapter, model.config, model.params)
        out[name] = {}
        for f in factors:
            lr = cfg.optim.lr * f
            tx = optim.build_optimizer(cfg.optim.__class__(**{**cfg.optim.__dict__, "lr": lr}), 1)
            state = init_state(model.config, model.params, tx, jax.random.key(0), adapter=adapter)
            old = np.asarray(logp_fn(state, batch))
            state, _ = step_fn(state, batch)
            new = np.asarray(logp_fn(state, batch))
            d = new - old
            k3 = float((np.exp(d) - d - 1)[mask].mean())
            out[name][lr] = k3
            print(f"{name:14s} lr {lr:9.2e}: one-update KL(old||new) per token {k3:.3e}", flush=True)
    ref = out.get(REFERENCE, {}).get(SWEEP[REFERENCE][1])
    if ref:
        print(f"reference ({REFERENCE} at {SWEEP[REFERENCE][1]:g}): KL {ref:.3e}; the rate giving the same KL "
              "(log-log interpolation between the two nearest rates tried):")
        for name, kls in out.items():
            print(f"  {name:14s} {matched_rate(kls, ref):.2e}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(BASE_CONFIG))
    ap.add_argument("--only", nargs="*", choices=list(SWEEP), help="run these configurations only")
    ap.add_argument("--budget-minutes", type=float, default=5.0, help="wall-clock budget per configuration")
    ap.add_argument("--n-eval", type=int, default=200, help="held-out problems")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "param_sweep"))
    ap.add_argument("--png", default=None, help="plot path (default <out>/param_sweep.png)")
    ap.add_argument("--model", default=None, help="model.source override (e.g. a tiny model for --smoke)")
    ap.add_argument("--smoke", action="store_true", help="1 step per configuration, tiny eval (tests)")
    ap.add_argument("--lr-probe", action="store_true", help="one-update KL per configuration and rate")
    ap.add_argument("--probe-factors", nargs="*", default=["1", "10"],
                    help="--lr-probe: multiples of each configuration's rate to try")
    ap.add_argument("--override", nargs="*", default=[], help="extra dotted overrides for every run")
    args = ap.parse_args(argv)
    if args.lr_probe:
        lr_probe(args)
    else:
        sweep(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
