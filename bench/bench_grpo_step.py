"""Micro-benchmark of one grpo_step (chunked logprobs + backward + AdamW update) on workload W1.

CPU (default): SmolLM2-135M-Instruct fp32, 8 W1 prompts (chat template, ~48 tokens) x G=8 = 64 completions
of 48 tokens, LoRA r=32 alpha=128 on all 7 projections, token-mean loss, beta 0.

    python bench/bench_grpo_step.py [--micro-batch 16] [--remat]
    python bench/bench_grpo_step.py --gpu [--peak-flops 989e12]   # Qwen2.5-1.5B shape, bf16, random weights
    python bench/bench_grpo_step.py --smoke                        # tiny random model (tests)

Prints compile time (first call) separately from the median steady-state step time, peak resident memory
of this process, and (with --gpu) model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tina_jax  # noqa: E402
from bench import common  # noqa: E402
from tina_jax import adapters  # noqa: E402
from tina_jax.rl.grpo import GrpoConfig, init_state, make_grpo_step  # noqa: E402
from tina_jax.rl.losses import LossConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-1.5B-shaped random model in bf16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model, 8 rows of 16 + 8 tokens (tests)")
    ap.add_argument("--model", default=common.DEFAULT_MODEL, help="CPU: the model source")
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--completion-len", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=None, help="GPU: prompt tokens (default 256)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="device peak (H100 bf16 dense: 989e12)")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--no-share-prompts", action="store_true", help="run each row's prompt separately")
    args = ap.parse_args(argv)

    if args.smoke:
        args.rows, args.completion_len, args.rank = 8, 8, 4
        args.prompt_len = args.prompt_len or 16
    n_prompts = 64 if args.gpu else 8 if not args.smoke else 2  # W1: 8 prompts x G; GPU: 64 prompts x G
    g = args.rows // n_prompts
    rng = np.random.default_rng(0)
    if args.gpu or args.smoke:
        cfg = (common.registry_model_config("qwen2.5-1.5b-instruct", "bfloat16", remat=args.remat) if args.gpu
               else common.tiny_model_config(remat=args.remat))
        params = tina_jax.init_params(cfg, jax.random.key(0))
        p_len = args.prompt_len or 256
        pids = rng.integers(0, cfg.vocab_size, (n_prompts, p_len)).astype(np.int32)
        pmask = np.ones_like(pids)
    else:
        from tina_jax.sampling import pad_prompts, prompt_bucket

        model = common.load_model(args.model, dtype="float32")
        cfg, params = model.config.replace(remat=args.remat), model.params
        ids = common.w1_prompt_ids(model.tokenizer, n_prompts)
        p_len = prompt_bucket(max(map(len, ids)))
        pids, pmask = pad_prompts(ids, p_len, 2)
    # rows of a group share their prompt, as a rollout produces
    batch = common.synthetic_grpo_batch(cfg.vocab_size, np.repeat(pids, g, 0), np.repeat(pmask, g, 0),
                                        args.completion_len)
    b, c = args.rows, args.completion_len
    ad = adapters.init("lora", cfg, params, jax.random.key(1), r=args.rank, alpha=128, dropout=0.0)
    state = init_state(cfg, params, optax.adamw(1e-4), jax.random.key(2), adapter=ad)
    step = make_grpo_step(GrpoConfig(loss=LossConfig(aggregation="token_mean"), micro_batch_size=args.micro_batch,
                                     logprob_chunk=args.chunk, group_size=g,
                                     share_prompts=not args.no_share_prompts))
    first, steady, _ = common.timed_updates(step, state, batch, args.repeats)
    tokens = int(b * (p_len + c))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    # LoRA step FLOPs: forward 2N per token + backward through activations 2N per token (no base-weight
    # gradients); adapter FLOPs and attention are ignored (small at these lengths). Shared prompts are
    # counted once per group (the work actually needed).
    if not args.no_share_prompts:
        tokens = int(b // g * p_len + b * c)
    flops = 4 * n_params * tokens
    name = "qwen2.5-1.5b-shape" if args.gpu else "tiny" if args.smoke else args.model
    res = {"device": jax.devices()[0].device_kind, "model": name,
           "rows": b, "share_prompts": not args.no_share_prompts, "prompt_len": p_len, "completion_len": c,
           "micro_batch": args.micro_batch, "remat": args.remat,
           "compile_plus_first_s": round(first - steady, 2), "step_s": round(steady, 3),
           "tokens_per_s": round(tokens / steady, 1), "model_tflops_per_s": round(flops / steady / 1e12, 3),
           "peak_rss_gib": round(common.peak_rss_bytes() / 2**30, 2)}
    if args.gpu:
        res["mfu"] = round(flops / steady / args.peak_flops, 4)
    common.print_json(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
