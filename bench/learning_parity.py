"""Learning parity with a peer: tina_jax against TRL's GRPOTrainer + PEFT on the same model, task and settings.

W1's settings (configs/smollm2_arith_cpu.yaml): SmolLM2-135M-Instruct, synthetic 2-digit addition rewarded by
math-verify (``accuracy``), 8 prompts x G=8 completions per step, 48 new tokens, temperature 1.0, LoRA r=32
alpha=128 dropout 0 on all 7 projections, AdamW lr 1e-4 (constant, no warm-up, grad-norm clip 1.0), beta 0,
one optimizer update per rollout batch, token-mean loss, group-std-scaled advantages.

Each framework runs in its own subprocess (so peak memory is that framework's alone: VmHWM of the child), for
``--steps`` steps on the *same prompts in the same order*: the TRL dataset is the first ``steps x 8`` examples
that tina_jax's loader yields, read sequentially (``shuffle_dataset=False``). The script prints both reward
curves, the median time per step and the peak memory of each, and checks the issue's targets:

  * learning: tina_jax's mean sampled reward over the last half of the steps >= TRL's;
  * speed:    TRL median s/step / tina_jax median s/step >= 2.5;
  * memory:   tina_jax peak resident memory < 4 GB (4e9 bytes).

    python bench/learning_parity.py                       # both, 10 steps (TRL: ~90 s/step and ~20 GB on 2 CPUs)
    python bench/learning_parity.py --only tina           # reuses TRL's results already in --out (same settings)
    python bench/learning_parity.py --steps 5 --out /tmp/lp.json

TRL is an optional benchmark dependency (``pip install trl``; written against trl 1.16.0, transformers 5.23.0,
torch 2.13.0, peft 0.21.2), never a test dependency. Results: ``--out`` (JSON) and a PNG of the curves beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

RECIPE = common.W1_RECIPE
DEFAULT_OUT = REPO / "bench" / "results" / "learning_parity.json"
SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# W1 (the issue's settings). --smoke shrinks the batch and the completions, only to check the plumbing.
W1 = dict(prompts_per_step=8, num_generations=8, max_new_tokens=48, temperature=1.0, rank=32, alpha=128.0,
          dropout=0.0, lr=1.0e-4, beta=0.0, max_grad_norm=1.0)
SMOKE = dict(W1, prompts_per_step=2, num_generations=4, max_new_tokens=16, rank=8)  # rank fits a tiny model

SPEEDUP_TARGET = 2.5
PEAK_TARGET_BYTES = 4e9
FRAMEWORKS = ("tina_jax", "trl")


# ------------------------------------------------------------------------------------------------
# Shared: the run configuration both frameworks are built from
# ------------------------------------------------------------------------------------------------
def tina_overrides(settings: dict, steps: int, run_dir: str | Path) -> list[str]:
    """Dotted overrides of configs/smollm2_arith_cpu.yaml that force W1's settings explicitly.

    Everything else (dtype, remat, logprob_chunk, micro-batching, data) stays as the recipe has it.
    """
    s = settings
    return [
        "adapter.kind=lora", f"adapter.r={s['rank']}", f"adapter.alpha={s['alpha']}",
        f"adapter.dropout={s['dropout']}", "adapter.use_rslora=false",
        f"adapter.target_modules=[{','.join(SEVEN_PROJECTIONS)}]",
        f"rollout.num_samples={s['num_generations']}", f"rollout.max_new_tokens={s['max_new_tokens']}",
        f"rollout.temperature={s['temperature']}", "rollout.top_p=1.0", "rollout.top_k=0",
        f"grpo.prompts_per_step={s['prompts_per_step']}", "grpo.advantage=grpo", "grpo.loss.aggregation=token_mean",
        f"grpo.loss.beta={s['beta']}", "grpo.num_iterations=1", "grpo.mini_batches=1",
        "grpo.loss.clip_eps_low=0.2", "grpo.loss.clip_eps_high=0.2", "grpo.loss.tis_cap=null",
        f"optim.lr={s['lr']!r}", "optim.schedule=constant", "optim.warmup_ratio=0.0", "optim.weight_decay=0.0",
        f"optim.max_grad_norm={s['max_grad_norm']}",
        f"train.max_steps={steps}", "train.eval_every=0", f"train.save_every={steps}", "train.sample_every=0",
        "train.plot=false", "train.tensorboard=false", "train.time_limit_minutes=null",
        f"train.run_dir={run_dir}",
    ] + ([f"model.source={s['model']}"] if s.get("model") else [])


def build_config(settings: dict, steps: int, run_dir: str | Path):
    from tina_jax.config import load_config

    return load_config(RECIPE, overrides=tina_overrides(settings, steps, run_dir))


def _tina_version() -> str:
    import tina_jax

    return tina_jax.__version__


def _train_examples(cfg, tokenizer, steps: int) -> list[list[dict]]:
    """The prompt batches tina_jax's trainer draws in its first ``steps`` steps (same loader, same seed)."""
    from tina_jax.data import pipeline
    from tina_jax.trainer import build_data

    train_ex, _, _ = build_data(cfg, tokenizer)
    loader = pipeline.make_loader(train_ex, batch_size=cfg.grpo.prompts_per_step, seed=cfg.data.seed,
                                  num_epochs=cfg.data.num_epochs)
    return [next(loader) for _ in range(steps)]


# ------------------------------------------------------------------------------------------------
# Child 1: tina_jax
# ------------------------------------------------------------------------------------------------
def run_tina(settings: dict, steps: int, workdir: Path) -> dict:
    """Train with tina_jax's own trainer; per-step reward and time come from its metrics.jsonl."""
    import jax
    import yaml

    from tina_jax.trainer import train

    run_dir = workdir / "tina_run"
    cfg = build_config(settings, steps, run_dir)
    shown = {k: v for k, v in cfg.to_dict().items() if k in ("model", "adapter", "rollout", "grpo", "optim")}
    print("tina_jax effective config:\n" + yaml.safe_dump(shown, sort_keys=False), flush=True)
    t0 = time.perf_counter()
    train(cfg, resume=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if r["step"] >= 1), key=lambda r: r["step"])
    device_peak = None
    dev = jax.devices()[0]
    if dev.platform != "cpu" and hasattr(dev, "memory_stats"):
        device_peak = (dev.memory_stats() or {}).get("peak_bytes_in_use")
    return {
        "reward": [r["reward/mean"] for r in rows],
        "step_s": [r["time/step_s"] for r in rows],
        "completion_mean_length": [r.get("completion/mean_length") for r in rows],
        "peak_rss_bytes": common.peak_rss_bytes(),
        "device_peak_bytes": device_peak,
        "wall_s": wall,
        "platform": dev.platform,
        "metrics": rows,
        "config": cfg.to_dict(),
        "versions": {**common.versions("jax", "jaxlib", "transformers"), "tina_jax": _tina_version()},
    }


# ------------------------------------------------------------------------------------------------
# Child 2: TRL GRPOTrainer + PEFT
# ------------------------------------------------------------------------------------------------
def trl_config_kwargs(cfg, steps: int, output_dir: str | Path, use_cpu: bool) -> dict:
    """GRPOConfig keyword arguments (TRL 1.x) equivalent to the tina_jax RunConfig ``cfg``.

    One optimizer step = prompts_per_step x G completions, generated together and used for one update
    (per_device_train_batch_size counts completions; steps_per_generation = 1, gradient_accumulation_steps = 1).
    """
    r, g, o, m = cfg.rollout, cfg.grpo, cfg.optim, cfg.model
    loss = g.loss
    loss_types = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_sum_const": "dr_grpo"}
    scales = {"grpo": "group", "drgrpo": "none"}
    if g.advantage not in scales:
        raise ValueError(f"grpo.advantage={g.advantage!r} has no TRL equivalent here; use grpo or drgrpo")
    if g.mini_batches != 1 or loss.tis_cap is not None or loss.kl_estimator != "k3":
        raise ValueError("the TRL mapping covers mini_batches=1, tis_cap=null and kl_estimator=k3 only")
    dtype = m.dtype or "float32"
    return dict(
        output_dir=str(output_dir), max_steps=steps, seed=cfg.train.seed,
        per_device_train_batch_size=g.prompts_per_step * r.num_samples, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=r.num_samples, num_iterations=g.num_iterations,
        shuffle_dataset=False,  # the dataset is already in tina_jax's batch order
        max_completion_length=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
        learning_rate=o.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=o.weight_decay, adam_beta1=o.b1, adam_beta2=o.b2, adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm if o.max_grad_norm is not None else 0.0,
        beta=loss.beta, epsilon=loss.clip_eps_low, epsilon_high=loss.clip_eps_high,
        loss_type=loss_types[loss.aggregation], scale_rewards=scales[g.advantage], mask_truncated_completions=False,
        gradient_checkpointing=m.remat, bf16=dtype == "bfloat16", fp16=False, use_cpu=use_cpu,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False, disable_dropout=True,
    )


def prepare_trl_inputs(settings: dict, steps: int) -> dict:
    """What the TRL child needs from tina_jax, computed here so that the child never imports JAX (its peak
    memory is TRL's alone): the model directory, the dataset rows in tina_jax's batch order, the stop tokens,
    the GRPOConfig and LoraConfig arguments and the reward specs (tina_jax.config imports JAX)."""
    from transformers import AutoTokenizer

    from tina_jax.data import prompts as prompts_lib
    from tina_jax.models import load_config as load_model_config
    from tina_jax.models.loading import resolve_source
    from tina_jax.sampling import default_stop_token_ids

    cfg = build_config(settings, steps, "unused")
    a = cfg.adapter
    path = resolve_source(cfg.model.source)  # tina_jax's converted HF directory: the same weights
    tok = AutoTokenizer.from_pretrained(path)
    batches = _train_examples(cfg, tok, steps)
    rows = [{"prompt": prompts_lib.build_messages(ex, cfg.data.prompt_recipe), "problem": ex["problem"],
             "solution": ex["solution"], "answer": ex.get("answer")} for batch in batches for ex in batch]
    return {"model_path": str(path), "rows": rows,
            "expected_problems": [[ex["problem"] for ex in b] for b in batches],
            "first_prompt_text": batches[0][0]["prompt_text"],
            "stop_token_ids": list(default_stop_token_ids(load_model_config(str(path)), tok)),
            "grpo_config": trl_config_kwargs(cfg, steps, "set by the child", use_cpu=False),
            "lora_config": dict(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=list(a.target_modules),
                                use_rslora=a.use_rslora, bias="none", task_type="CAUSAL_LM"),
            "rewards": [dataclasses.asdict(spec) for spec in cfg.rewards]}


def run_trl(settings: dict, steps: int, workdir: Path) -> dict:
    """Train with TRL's GRPOTrainer + PEFT LoRA on tina_jax's converted HF checkpoint of the same model."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tina_jax import rewards as rewards_lib

    inputs = json.loads((workdir / "trl_inputs.json").read_text())
    path = inputs["model_path"]
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # Stop on the same tokens as tina_jax's sampler (eos and the end-of-turn tokens the tokenizer knows).
    model.generation_config.eos_token_id = inputs["stop_token_ids"]
    rendered = tok.apply_chat_template(inputs["rows"][0]["prompt"], add_generation_prompt=True, tokenize=False)
    dataset = Dataset.from_list(inputs["rows"])

    # The reward tina_jax's trainer builds (tina_jax.rewards.build does not import JAX).
    combined = rewards_lib.build([types.SimpleNamespace(**spec) for spec in inputs["rewards"]], tok)
    seen_problems: list[list[str]] = []

    def accuracy(completions, completion_ids=None, **fields) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        seen_problems.append(list(dict.fromkeys(fields["problem"])))
        gold = {k: fields[k] for k in ("solution", "answer") if k in fields}
        lengths = [len(x) for x in completion_ids] if completion_ids is not None else None
        total, _ = combined(texts, completion_lengths=lengths, **gold)
        return total

    lora = inputs["lora_config"]
    use_cpu = not torch.cuda.is_available()
    kwargs = dict(inputs["grpo_config"], output_dir=str(workdir / "trl_out"), use_cpu=use_cpu)
    print("TRL GRPOConfig:", json.dumps(kwargs, default=str), "\nPEFT LoraConfig:", json.dumps(lora), flush=True)

    class StepLog(TrainerCallback):
        def __init__(self):
            self.t0, self.step_s, self.logs = 0.0, [], []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_s.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                self.logs.append(dict(logs, step=state.global_step))

    cb = StepLog()
    trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=GRPOConfig(**kwargs), train_dataset=dataset,
                          processing_class=tok, peft_config=LoraConfig(**lora), callbacks=[cb])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {
        "reward": [x["reward"] for x in cb.logs],
        "step_s": cb.step_s,
        "trl_step_time": [x.get("step_time") for x in cb.logs],
        "completion_mean_length": [x.get("completions/mean_length") for x in cb.logs],
        "peak_rss_bytes": common.peak_rss_bytes(),
        "device_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "wall_s": wall,
        "platform": "cuda" if torch.cuda.is_available() else "cpu",
        "same_prompts_as_tina_jax": seen_problems == inputs["expected_problems"],
        "same_prompt_rendering": rendered == inputs["first_prompt_text"],
        "stop_token_ids": inputs["stop_token_ids"],
        "logs": cb.logs,
        "grpo_config": kwargs,
        "lora_config": lora,
        "jax_imported": "jax" in sys.modules,
        "versions": {**common.versions("trl", "transformers", "torch", "peft", "accelerate"), "tina_jax": _tina_version()},
    }


# ------------------------------------------------------------------------------------------------
# Parent: run the children, compare, report
# ------------------------------------------------------------------------------------------------
def launch(framework: str, settings: dict, steps: int, workdir: Path) -> dict:
    """Run one framework in a fresh Python process; returns its result dict (or {"error": ...})."""
    result = workdir / f"{framework}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", framework, "--_result", str(result),
           "--_workdir", str(workdir), "--_settings", json.dumps(settings), "--steps", str(steps)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    print(f"\n=== {framework}: {steps} steps ===", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not result.is_file():
        return {"error": f"{framework} child exited with status {proc.returncode} after "
                         f"{time.perf_counter() - t0:.0f}s (see its output above)"}
    return json.loads(result.read_text())


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def summarise(res: dict) -> dict:
    """Per-framework medians and the three targets (None where a side is missing)."""
    out: dict[str, Any] = {}
    for fw in FRAMEWORKS:
        r = res.get(fw)
        if not r or "error" in r:
            continue
        n = len(r["reward"])
        half = r["reward"][n // 2:] if n > 1 else r["reward"]
        out[fw] = {"median_step_s": statistics.median(r["step_s"]) if r["step_s"] else None,
                   "mean_reward_all_steps": _mean(r["reward"]), "mean_reward_last_half": _mean(half),
                   "reward_first": r["reward"][0] if n else None, "reward_last": r["reward"][-1] if n else None,
                   "peak_rss_gb": r["peak_rss_bytes"] / 1e9}
    t, p = out.get("tina_jax"), out.get("trl")
    targets: dict[str, Any] = {"learning": None, "speed": None, "memory": None}
    if t:
        targets["memory"] = {"tina_jax_peak_gb": t["peak_rss_gb"], "target_gb": PEAK_TARGET_BYTES / 1e9,
                             "met": t["peak_rss_gb"] * 1e9 < PEAK_TARGET_BYTES}
    if t and p:
        # One completion's reward is 0/1, so a step's mean over N completions has standard error <= 0.5/sqrt(N).
        targets["learning"] = {"tina_jax": t["mean_reward_last_half"], "trl": p["mean_reward_last_half"],
                               "criterion": "mean sampled reward over the last half of the steps, tina_jax >= TRL",
                               "met": t["mean_reward_last_half"] >= p["mean_reward_last_half"]}
        if t["median_step_s"] and p["median_step_s"]:
            ratio = p["median_step_s"] / t["median_step_s"]
            targets["speed"] = {"trl_over_tina_jax": ratio, "target": SPEEDUP_TARGET, "met": ratio >= SPEEDUP_TARGET}
    out["targets"] = targets
    return out


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(res: dict, summary: dict) -> str:
    lines = []
    t, p = res.get("tina_jax") or {}, res.get("trl") or {}
    n = max(len(t.get("reward", [])), len(p.get("reward", [])))
    lines.append(f"{'step':>4} | {'tina_jax reward':>15} | {'TRL reward':>10} | {'tina_jax s':>10} | {'TRL s':>8}")
    lines.append("-" * 60)
    get = lambda r, k, i: r[k][i] if k in r and i < len(r[k]) else None  # noqa: E731
    for i in range(n):
        lines.append(f"{i + 1:>4} | {_fmt(get(t, 'reward', i)):>15} | {_fmt(get(p, 'reward', i)):>10} | "
                     f"{_fmt(get(t, 'step_s', i), '.1f'):>10} | {_fmt(get(p, 'step_s', i), '.1f'):>8}")
    for fw in FRAMEWORKS:
        r = res.get(fw)
        if r and "error" in r:
            lines.append(f"{fw}: FAILED: {r['error']}")
        elif fw in summary:
            s = summary[fw]
            reused = " (reused from an earlier run)" if r.get("reused") else ""
            lines.append(f"{fw}: median {_fmt(s['median_step_s'], '.2f')} s/step, peak memory "
                         f"{s['peak_rss_gb']:.2f} GB (VmHWM), mean reward last half {_fmt(s['mean_reward_last_half'])}"
                         f"{reused}")
    tg = summary["targets"]
    if tg["speed"]:
        lines.append(f"speed: TRL / tina_jax = {tg['speed']['trl_over_tina_jax']:.2f}x "
                     f"(target >= {SPEEDUP_TARGET}x): {'MET' if tg['speed']['met'] else 'NOT MET'}")
    if tg["learning"]:
        lines.append(f"learning: last-half mean reward tina_jax {tg['learning']['tina_jax']:.3f} vs TRL "
                     f"{tg['learning']['trl']:.3f}: {'MET' if tg['learning']['met'] else 'NOT MET'}")
    if tg["memory"]:
        lines.append(f"memory: tina_jax peak {tg['memory']['tina_jax_peak_gb']:.2f} GB (target < "
                     f"{PEAK_TARGET_BYTES / 1e9:.0f} GB): {'MET' if tg['memory']['met'] else 'NOT MET'}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for fw, label in (("tina_jax", "tina_jax"), ("trl", "TRL GRPOTrainer + PEFT")):
        r = res.get(fw)
        if not r or "error" in r:
            continue
        steps = range(1, len(r["reward"]) + 1)
        ax1.plot(steps, r["reward"], marker="o", label=label)
        ax2.plot(range(1, len(r["step_s"]) + 1), r["step_s"], marker="o", label=label)
    ax1.set(xlabel="step", ylabel="mean sampled reward (accuracy)", title="reward per step", ylim=(-0.02, 1.02))
    ax2.set(xlabel="step", ylabel="seconds", title="time per step", yscale="log")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _child(args) -> None:
    settings = json.loads(args._settings)
    workdir = Path(args._workdir)
    fn = {"tina_jax": run_tina, "trl": run_trl}[args._child]
    res = fn(settings, args.steps, workdir)
    Path(args._result).write_text(json.dumps(res, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="training steps per framework (default 10)")
    ap.add_argument("--only", choices=("tina", "trl", "both"), default="both",
                    help="run one side; the other side's results already in --out are reused if the settings match")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny batch: plumbing check only
    ap.add_argument("--model", default=None, help="model.source for both frameworks (default the recipe's)")
    for hidden in ("--_child", "--_result", "--_workdir", "--_settings"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args._child:
        _child(args)
        return 0

    settings = SMOKE if args.smoke else W1
    if args.model:
        settings = dict(settings, model=args.model)
    out = args.out or (DEFAULT_OUT.with_name("learning_parity_smoke.json") if args.smoke else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = {"tina": ["tina_jax"], "trl": ["trl"], "both": list(FRAMEWORKS)}[args.only]
    if "trl" in wanted:
        try:
            import trl  # noqa: F401
        except ImportError:
            ap.error("TRL is not installed: pip install trl (an optional benchmark dependency), or use --only tina")

    res: dict[str, Any] = {}
    if args.only != "both" and out.is_file():  # keep the other side of an earlier run with the same settings
        old = json.loads(out.read_text())
        if old.get("settings") == settings and old.get("steps") == args.steps:
            for fw in FRAMEWORKS:
                if fw not in wanted and old.get(fw) and "error" not in old[fw]:
                    res[fw] = dict(old[fw], reused=True)
    with tempfile.TemporaryDirectory(prefix="learning_parity_") as tmp:
        if "trl" in wanted:
            (Path(tmp) / "trl_inputs.json").write_text(json.dumps(prepare_trl_inputs(settings, args.steps)))
        for fw in wanted:
            res[fw] = launch(fw, settings, args.steps, Path(tmp))
    summary = summarise(res)
    text = report(res, summary)
    print("\n" + text)
    png = plot(res, out.with_suffix(".png"))
    doc = {"steps": args.steps, "smoke": args.smoke, "settings": settings, "recipe": str(RECIPE.relative_to(REPO)),
           "tina_jax": res.get("tina_jax"), "trl": res.get("trl"), "summary": summary, "report": text,
           "plot": str(png) if png else None, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nresults: {out}" + (f", plot: {png}" if png else ""))
    return 1 if any(r and "error" in r for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
