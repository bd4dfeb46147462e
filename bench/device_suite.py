#!/usr/bin/env python
"""Every accelerator workload in one command and one JSON (about 8 minutes on one H200).

    python bench/device_suite.py --out device_suite.json [--peak-bw 4.8e12] [--peak-flops 989e12]
    python bench/device_suite.py --smoke          # tiny shapes on CPU (CI runs this)

Workloads (random weights: no hub needed; the model shapes are the registry's):
1. ``rollout``: Qwen2.5-1.5B shape, bf16, 64 prompts x G 8 x 1024 new tokens (no stop tokens, so every row
   decodes all 1024), prompts of 256 tokens: decode tokens/s and the fraction of the HBM-bandwidth
   roofline (each decode step must read the weights once plus the KV cache filled so far).
2. ``grpo_step``: Qwen2.5-1.5B shape, bf16, LoRA r=32 on all 7 projections, 64 rows of 256 + 1024 tokens
   (8 prompts x G 8, prompts shared), remat, micro-batch 16: step time and model-FLOPs utilisation
   (4N FLOPs per token for a LoRA step: forward 2N, backward through activations 2N).
3. ``tinylora_7b``: Qwen2.5-7B shape, bf16, TinyLoRA (r=2, u=1, n_tie=16: 13 trained parameters), 16 rows of
   256 + 1024 tokens, remat, micro-batch 4: that it fits, step time, peak memory.

Needs only jax (with the accelerator backend), numpy, optax, flax and tina_jax itself: no grain,
math-verify, datasets or torch. On a GPU image without the project's other dependencies:
``pip install --no-deps -e .`` in the checkout is enough for this script.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench import common  # noqa: E402
from tina_jax import adapters  # noqa: E402
from tina_jax.models import ModelConfig, init_params  # noqa: E402
from tina_jax.rl.grpo import GrpoConfig, init_state, make_grpo_step  # noqa: E402
from tina_jax.rl.losses import LossConfig  # noqa: E402
from tina_jax.sampling import SamplingConfig, sample_tokens  # noqa: E402


def _config(name: str, smoke: bool, remat: bool = False) -> ModelConfig:
    if smoke:
        return common.tiny_model_config("float32", remat=remat)
    return common.registry_model_config(name, "bfloat16", remat=remat)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(compile + first call s, median steady s)."""
    first, steady, _ = common.timed(fn, repeats)
    return first, steady


def rollout(args) -> dict:
    cfg = _config("qwen2.5-1.5b-instruct", args.smoke)
    params = init_params(cfg, jax.random.key(0))
    b, g, p, n = (2, 2, 16, 8) if args.smoke else (64, 8, 256, 1024)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, p)), jnp.int32)
    mask = jnp.ones((b, p), jnp.int32)

    def run(new):
        s = SamplingConfig(max_new_tokens=new, temperature=1.0, num_samples=g, stop_token_ids=(), pad_token_id=0)
        return lambda i: sample_tokens(cfg, params, ids, mask, jax.random.key(i), s)

    first, steady = _timed(run(n), args.repeats)
    _, prefill = _timed(run(1), args.repeats)
    rows = b * g
    step_s = max((steady - prefill) / (n - 1), 1e-9)  # tiny smoke shapes can time below noise
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.compute_dtype).itemsize
    needed = param_bytes + b * p * kv_token + rows * (n / 2) * kv_token  # per decode step, on average
    return {"model": "qwen2.5-1.5b shape" if not args.smoke else "tiny", "prompts": b, "samples": g,
            "prompt_len": p, "new_tokens": n, "compile_plus_first_s": round(first - steady, 2),
            "rollout_s": round(steady, 3), "prefill_s": round(prefill, 3), "decode_step_ms": round(1e3 * step_s, 3),
            "decode_tokens_per_s": round(rows / step_s, 1), "tokens_per_s_end_to_end": round(rows * n / steady, 1),
            "bytes_per_step_needed": int(needed),
            "hbm_roofline_fraction": round(needed / step_s / args.peak_bw, 4), "peak_bytes": common.device_peak_bytes()}


def _step(cfg: ModelConfig, params, ad, rows: int, g: int, p: int, c: int, micro: int, repeats: int,
          peak_flops: float) -> dict:
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (rows // g, p))
    batch = common.synthetic_grpo_batch(cfg.vocab_size, np.repeat(prompts, g, 0), np.ones((rows, p), np.int32), c,
                                        seed=1)
    state = init_state(cfg, params, optax.adamw(1e-5), jax.random.key(2), adapter=ad)
    step = make_grpo_step(GrpoConfig(loss=LossConfig(aggregation="token_mean"), micro_batch_size=micro,
                                     logprob_chunk=256 if c >= 256 else 8, group_size=g, share_prompts=True))
    first, steady, _ = common.timed_updates(step, state, batch, repeats)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    tokens = rows // g * p + rows * c  # shared prompts counted once per group: the work needed
    flops = 4 * n_params * tokens
    return {"rows": rows, "group": g, "prompt_len": p, "completion_len": c, "micro_batch": micro,
            "trainable_params": int(adapters.num_trainable(ad)), "compile_plus_first_s": round(first - steady, 2),
            "step_s": round(steady, 3), "tokens_per_s": round(tokens / steady, 1),
            "model_tflops_per_s": round(flops / steady / 1e12, 3), "mfu": round(flops / steady / peak_flops, 4),
            "peak_bytes": common.device_peak_bytes()}


def grpo(args) -> dict:
    cfg = _config("qwen2.5-1.5b-instruct", args.smoke, remat=True)
    params = init_params(cfg, jax.random.key(0))
    ad = adapters.init("lora", cfg, params, jax.random.key(1), r=32 if not args.smoke else 4, alpha=128, dropout=0.0)
    shape = (8, 4, 16, 8, 4) if args.smoke else (64, 8, 256, 1024, 16)
    return {"model": "qwen2.5-1.5b shape, LoRA r=32" if not args.smoke else "tiny",
            **_step(cfg, params, ad, *shape, args.repeats, args.peak_flops)}


def tinylora_7b(args) -> dict:
    cfg = _config("qwen2.5-7b-instruct", args.smoke, remat=True)
    params = init_params(cfg, jax.random.key(0))
    ad = adapters.init("tinylora", cfg, params, jax.random.key(1), r=2, alpha=32, u=1, n_tie=16)
    shape = (4, 2, 16, 8, 2) if args.smoke else (16, 4, 256, 1024, 4)
    return {"model": "qwen2.5-7b shape, TinyLoRA u=1 n_tie=16" if not args.smoke else "tiny",
            **_step(cfg, params, ad, *shape, args.repeats, args.peak_flops)}


WORKLOADS = {"rollout": rollout, "grpo_step": grpo, "tinylora_7b": tinylora_7b}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, CI)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-bw", type=float, default=4.8e12, help="HBM bytes/s (H200 4.8e12, H100 SXM 3.35e12)")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 FLOP/s (H100/H200 SXM 989e12)")
    ap.add_argument("--out", default="bench/results/device_suite.json")
    args = ap.parse_args(argv)
    names = [w for w in args.only.split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {list(WORKLOADS)}")
    dev = jax.devices()[0]
    res = {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
           "devices": jax.device_count(), "jax": jax.__version__, "smoke": args.smoke,
           "peak_bw": args.peak_bw, "peak_flops": args.peak_flops, "workloads": {}}
    t_all = time.perf_counter()
    for w in names:
        t0 = time.perf_counter()
        try:
            res["workloads"][w] = WORKLOADS[w](args)
        except Exception as e:  # noqa: BLE001 - one workload failing (e.g. out of memory) must not lose the others
            res["workloads"][w] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        res["workloads"][w]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(w, json.dumps(res["workloads"][w]), flush=True)
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['wall_s']} s)")
    return 1 if any("error" in v for v in res["workloads"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
