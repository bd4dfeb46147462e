"""Micro-benchmark of one grpo_step (chunked logprobs + backward + AdamW update) on workload W1.

CPU (default): SmolLM2-135M-Instruct fp32, 8 W1 prompts (chat template, ~48 tokens) x G=8 = 64 completions
of 48 tokens, LoRA r=32 alpha=128 on all 7 projections, token-mean loss, beta 0.

    python bench/bench_grpo_step.py [--micro-batch 16] [--remat]
    python bench/bench_grpo_step.py --gpu [--peak-flops 989e12]   # Qwen2.5-1.5B shape, bf16, random weights

Prints compile time (first call) separately from the median steady-state step time, peak resident memory
of this process, and (with --gpu) model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tina_jax  # noqa: E402
from tina_jax import adapters  # noqa: E402
from tina_jax.rl.grpo import GrpoConfig, init_state, make_grpo_step  # noqa: E402
from tina_jax.rl.losses import LossConfig  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def w1_prompts(tokenizer, n: int = 8) -> list[list[int]]:
    from tina_jax.data.prompts import render_prompts

    random.seed(0)
    msgs = []
    for _ in range(n):
        a, b = random.randint(10, 99), random.randint(10, 99)
        msgs.append([{"role": "user", "content": f"What is {a} + {b}? Give the final answer as a number."}])
    return render_prompts(tokenizer, msgs)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-1.5B-shaped random model in bf16")
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--completion-len", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=None, help="GPU: prompt tokens (default 256)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--peak-flops", type=float, default=989e12, help="device peak (H100 bf16 dense: 989e12)")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--no-share-prompts", action="store_true", help="run each row's prompt separately")
    args = ap.parse_args()

    if args.gpu:
        from tina_jax.models.loading import REGISTRY

        cfg = tina_jax.ModelConfig.from_hf(REGISTRY["qwen2.5-1.5b-instruct"].hf_config, param_dtype="bfloat16",
                                           compute_dtype="bfloat16", remat=args.remat)
        params = tina_jax.init_params(cfg, jax.random.key(0))
        p_len = args.prompt_len or 256
        rng = np.random.default_rng(0)
        prompt_ids = rng.integers(0, cfg.vocab_size, (args.rows, p_len)).astype(np.int32)
        prompt_mask = np.ones_like(prompt_ids)
    else:
        model = tina_jax.load_model("smollm2-135m-instruct", dtype="float32")
        cfg, params = model.config.replace(remat=args.remat), model.params
        from tina_jax.sampling import pad_prompts, prompt_bucket

        ids = w1_prompts(model.tokenizer)
        p_len = prompt_bucket(max(map(len, ids)))
        pids, pmask = pad_prompts(ids, p_len, 2)
        g = args.rows // len(ids)
        prompt_ids, prompt_mask = np.repeat(pids, g, 0), np.repeat(pmask, g, 0)
        rng = np.random.default_rng(0)
    b, c = args.rows, args.completion_len
    lengths = rng.integers(c // 2, c + 1, b)
    batch = {
        "prompt_ids": jnp.asarray(prompt_ids), "prompt_mask": jnp.asarray(prompt_mask),
        "completion_ids": jnp.asarray(rng.integers(0, cfg.vocab_size, (b, c)), jnp.int32),
        "completion_mask": jnp.asarray(np.arange(c)[None] < lengths[:, None], jnp.int32),
        "advantages": jnp.asarray(rng.normal(size=b), jnp.float32),
        "sampler_logprobs": jnp.asarray(-rng.exponential(size=(b, c)), jnp.float32),
    }
    ad = adapters.init("lora", cfg, params, jax.random.key(1), r=32, alpha=128, dropout=0.0)
    state = init_state(cfg, params, optax.adamw(1e-4), jax.random.key(2), adapter=ad)
    g = args.rows // (8 if not args.gpu else 64)  # W1: 8 prompts x G; GPU: 64 prompts x G
    if args.gpu:  # rows of a group share their prompt, as a rollout produces
        prompt_ids, prompt_mask = np.repeat(prompt_ids[::g], g, 0), np.repeat(prompt_mask[::g], g, 0)
    step = make_grpo_step(GrpoConfig(loss=LossConfig(aggregation="token_mean"), micro_batch_size=args.micro_batch,
                                     logprob_chunk=args.chunk, group_size=g,
                                     share_prompts=not args.no_share_prompts))
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready((state.trainable, m))
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times)
    tokens = int(b * (p_len + c))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    # LoRA step FLOPs: forward 2N per token + backward through activations 2N per token (no base-weight
    # gradients); adapter FLOPs and attention are ignored (small at these lengths). Shared prompts are
    # counted once per group (the work actually needed).
    if not args.no_share_prompts:
        tokens = int(b // g * p_len + b * c)
    flops = 4 * n_params * tokens
    res = {"device": jax.devices()[0].device_kind, "model": "qwen2.5-1.5b-shape" if args.gpu else "smollm2-135m",
           "rows": b, "share_prompts": not args.no_share_prompts, "prompt_len": p_len, "completion_len": c, "micro_batch": args.micro_batch, "remat": args.remat,
           "compile_plus_first_s": round(first - steady, 2), "step_s": round(steady, 3),
           "tokens_per_s": round(tokens / steady, 1), "model_tflops_per_s": round(flops / steady / 1e12, 3),
           "peak_rss_gib": round(peak_rss_gib(), 2)}
    if args.gpu:
        res["mfu"] = round(flops / steady / args.peak_flops, 4)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
