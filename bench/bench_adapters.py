"""Peak memory and step time: a LoRA train step vs a full-parameter train step on SmolLM2-135M.

Each mode runs in a fresh subprocess so its peak RSS (VmHWM) is its own. One step = mean next-token NLL
of a [batch, seq] batch of random token ids, ``value_and_grad`` w.r.t. the trainable pytree (the LoRA
factors, or every parameter), then an optax AdamW update; the whole step is jitted with donated state.

    python bench/bench_adapters.py                  # both modes, table + one JSON line
    python bench/bench_adapters.py --mode lora      # one mode (what the parent runs per subprocess)

Numbers on a shared CPU are noisy; compare modes from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

MODES = ("lora", "full")


def run_mode(mode: str, model_name: str, batch: int, seq: int, steps: int, rank: int = 32) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import tina_jax
    from tina_jax import adapters

    t0 = time.perf_counter()
    model = tina_jax.load_model(model_name)
    load_s = time.perf_counter() - t0
    cfg, params = model.config, model.params
    rss_loaded = common.rss_bytes() or 0
    common.reset_peak_rss()  # the peak below is the training step's, not the loader's
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)

    def nll(p):
        logits = tina_jax.forward(cfg, p, ids)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    opt = optax.adamw(1e-4, weight_decay=0.0)
    if mode == "lora":
        adapter = adapters.init("lora", cfg, params, jax.random.key(0), r=rank)  # Tina: r=32, alpha=128, p=0.05
        trainable, frozen = adapter.trainable, params

        def loss_fn(t, base, key):
            return nll(adapters.apply(base, adapter.replace(trainable=t), dropout_rng=key))
    elif mode == "full":
        trainable, frozen = params, None
        del params, model

        def loss_fn(t, base, key):
            return nll(t)
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")

    def _step(t, opt_state, base, key):
        loss, grads = jax.value_and_grad(loss_fn)(t, base, key)
        updates, opt_state = opt.update(grads, opt_state, t)
        return optax.apply_updates(t, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))  # the frozen base is an argument, never donated
    opt_state = opt.init(trainable)
    n_train = sum(x.size for x in jax.tree.leaves(trainable))
    holder, losses = {"t": trainable, "o": opt_state}, []

    def run(i):
        holder["t"], holder["o"], loss = step(holder["t"], holder["o"], frozen, jax.random.key(1 + i))
        losses.append(loss)
        return holder["t"], loss

    first_s, _, times = common.timed(run, steps)
    losses = [float(x) for x in losses]
    return {
        "mode": mode, "model": model_name, "batch": batch, "seq": seq, "trainable_params": int(n_train),
        "load_s": round(load_s, 2), "compile_and_first_step_s": round(first_s, 2),
        "step_s_median": round(float(np.median(times)), 3), "step_s_all": [round(t, 3) for t in times],
        "rss_after_load_gib": round(rss_loaded / 2**30, 3), "peak_rss_gib": round(common.peak_rss_bytes() / 2**30, 3),
        "losses": [round(x, 4) for x in losses], "backend": jax.default_backend(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES)
    ap.add_argument("--model", default=common.DEFAULT_MODEL)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (Tina's 32)")
    args = ap.parse_args(argv)
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args.model, args.batch, args.seq, args.steps, args.rank)))
        return 0
    results = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--batch", str(args.batch),
               "--seq", str(args.seq), "--steps", str(args.steps), "--rank", str(args.rank)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"mode {mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    hdr = f"{'mode':<6} {'trainable':>12} {'compile+1st s':>14} {'step s (med)':>13} {'RSS load GiB':>13} {'peak RSS GiB':>13}"
    print(hdr)
    for r in results:
        print(f"{r['mode']:<6} {r['trainable_params']:>12,} {r['compile_and_first_step_s']:>14.2f} "
              f"{r['step_s_median']:>13.3f} {r['rss_after_load_gib']:>13.3f} {r['peak_rss_gib']:>13.3f}")
    common.print_json({"bench": "adapters", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
