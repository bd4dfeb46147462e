"""Sampler-vs-trainer logprob gap of a TinyLoRA policy with bf16 weights: merged vs factored decoding.

SmolLM2-135M-Instruct with bfloat16 weights (compute in bf16, or fp32 with --compute-dtype), a TinyLoRA adapter (r=2, alpha=32, u=1, n_tie=16:
14 trained values on SmolLM2's 210 modules, P shared by min(in, out) as the authors' code) whose v is set
to a fixed magnitude (every value = +m; not trained: v starts at N(0, 1e-5^2) and an Adam update moves it
by about lr, 1e-6..2e-4 in the paper's sweep, so 1e-5..1e-2 spans initialisation to a long run). For each m, G completions of GSM8K test
questions are sampled (temperature 1, top-p 1) with the adapter merged into the bf16 kernels or factored
(x K + c (x A) B in each decode step), and the trainer scores the same tokens (teacher-forced forward of the
adapted parameters, bf16, logits / 1). Reported over completion tokens: mean and max |trainer - sampler|
logprob, mean |w - 1| of the importance weight w = exp(trainer - sampler), and the share of the adapter's
update that survives merging (|merged_bf16 - base| / |delta| over all adapted kernels).

    python bench/bench_adapter_decoding.py [--prompts 8] [--samples 4] [--new-tokens 64] [--compute-dtype float32]
    python bench/bench_adapter_decoding.py --model DIR --prompts 2 --samples 2 --new-tokens 4 --magnitudes 0,1e-2  # tests
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=common.DEFAULT_MODEL, help="model source (a tiny model in tests)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--magnitudes", default="0,1e-5,1e-4,1e-3,1e-2")
    ap.add_argument("--compute-dtype", default="bfloat16", help="bfloat16 or float32 (weights stay bf16)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from tina_jax import adapters
    from tina_jax.data import load_records, prepare_examples
    from tina_jax.rl.grpo import sequence_logprobs
    from tina_jax.sampling import SamplingConfig, pad_prompts, sample_tokens

    model = common.load_model(args.model, dtype="bfloat16", compute_dtype=args.compute_dtype)
    cfg, base = model.config, model.params
    recs = load_records(str(ROOT / "data" / "gsm8k" / "test.jsonl"))
    recs = recs.select(range(args.prompts)) if hasattr(recs, "select") else recs[:args.prompts]
    ex, _ = prepare_examples(recs, model.tokenizer, recipe="tinylora_gsm8k", required_fields=("answer",))
    plen = -(-max(len(e["prompt_ids"]) for e in ex) // 16) * 16
    ids, mask = pad_prompts([e["prompt_ids"] for e in ex], plen)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    g = args.samples
    ad0 = adapters.init("tinylora", cfg, base, jax.random.key(0), r=2, alpha=32, u=1, n_tie=16)
    print(f"TinyLoRA on SmolLM2: {adapters.num_trainable(ad0)} trained values; {len(ex)} prompts x {g} samples, "
          f"{args.new_tokens} new tokens, bf16 weights, {args.compute_dtype} compute")
    rows = []
    for m in [float(x) for x in args.magnitudes.split(",")]:
        ad = ad0.replace(trainable={"v": jnp.full_like(ad0.trainable["v"], m)})
        adapted = adapters.apply(base, ad)
        deltas = adapters.delta_weights(ad)
        kept = []
        for name, dw in deltas.items():
            b = base["layers"][name]
            merged = (b.astype(jnp.float32) + dw).astype(b.dtype).astype(jnp.float32)
            kept.append((float(jnp.sum(jnp.abs(merged - b.astype(jnp.float32)))), float(jnp.sum(jnp.abs(dw)))))
        survive = sum(k for k, _ in kept) / max(sum(d for _, d in kept), 1e-30) if m else float("nan")
        for mode in ("merged", "factored"):
            s = SamplingConfig(max_new_tokens=args.new_tokens, num_samples=g, stop_token_ids=(),
                               adapter_decoding=mode)
            t0 = time.time()
            tok, lp, _ = sample_tokens(cfg, adapted, ids, mask, jax.random.key(1), s)
            tok.block_until_ready()
            dt = time.time() - t0
            want, _ = sequence_logprobs(cfg, adapted, jnp.repeat(ids, g, 0), jnp.repeat(mask, g, 0), tok,
                                        jnp.ones_like(tok), 16, 1.0)
            gap = np.abs(np.asarray(want, np.float64) - np.asarray(lp, np.float64))
            w = np.exp(np.asarray(want, np.float64) - np.asarray(lp, np.float64))
            row = dict(v=m, mode=mode, gap_mean=float(gap.mean()), gap_max=float(gap.max()),
                       w_dev_mean=float(np.abs(w - 1).mean()), merge_survival=survive, sample_s=dt)
            rows.append(row)
            print(f"v={m:<7g} {mode:8s} |dlogp| mean {row['gap_mean']:.5f} max {row['gap_max']:.4f}  "
                  f"|w-1| mean {row['w_dev_mean']:.5f}  update kept by merging {survive:.3f}  ({dt:.1f}s incl. compile)")
    common.print_json(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
