"""Sampling throughput: tina_jax ``generate`` vs transformers ``generate`` on the same workload.

W1 (CPU, default)::

    python bench/bench_sampling.py [--repeats 3] [--skip-hf] [--breakdown]

  SmolLM2-135M-Instruct fp32; 8 chat prompts "What is {a} + {b}? Give the final answer as a number."
  (``random.seed(0)``; a, b = randint(10, 99) per prompt); G = 8 samples each (64 rows); 48 new tokens;
  temperature 1.0, top_p 1.0, top_k off. Stop tokens are ignored in both (tina_jax:
  ``stop_token_ids=()``; transformers: ``min_new_tokens=48``), so both fill exactly 64 x 48 token slots.
  ``--breakdown`` also times one decode step's parts (layers, lm_head, token choice) at W1 shapes.

GPU (``--gpu``)::

    python bench/bench_sampling.py --gpu [--peak-bw 3.35e12] [--skip-hf]

  A Qwen2.5-1.5B-shaped random model (``init_params`` of the registry config), bf16; 64 prompts of 256
  random tokens; G = 8 (512 rows); 1024 new tokens ignoring EOS. Reports tokens/s and the fraction of
  the memory-bandwidth roofline of a decode step: (weight bytes + KV-cache bytes a step must read) /
  step time / peak bandwidth, with the step time from (total - prefill-only run) / (N - 1).

Timings: the first call (compile + run) is reported separately; steady numbers are medians (and
bests) of ``--repeats`` runs with fresh keys, tina_jax and transformers alternating so both see the
same machine noise. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _stats(times: list[float], slots: int) -> dict:
    med, best = statistics.median(times), min(times)
    return {"steady_s": med, "best_s": best, "times_s": times, "slots_per_s": slots / med,
            "best_slots_per_s": slots / best}


def _tina_runner(model, prompts, sampling, seed: int = 0):
    """(run(i) -> seconds, info): generate with key fold_in(seed, i); the first call compiles."""
    from tina_jax.sampling import generate

    key = jax.random.key(seed)
    info = {}

    def run(i):
        t0 = time.perf_counter()
        out = generate(model, prompts, sampling, jax.random.fold_in(key, i))
        jax.block_until_ready(out.tokens)
        dt = time.perf_counter() - t0
        rows, n = out.tokens.shape
        assert int(np.asarray(out.lengths).min()) == n, "a row stopped early: the workload must ignore EOS"
        info.update(rows=rows, new_tokens=n, prompt_bucket=int(out.prompt_ids.shape[1]))
        return dt

    return run, info


def _hf_runner(hf_model, prompt_ids: list[list[int]], pad_id: int, g: int, n: int, device: str):
    """run(i) -> seconds for transformers' generate on the same left-padded prompts."""
    import torch

    t = max(map(len, prompt_ids))
    ids = torch.full((len(prompt_ids), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), t), dtype=torch.long)
    for i, x in enumerate(prompt_ids):
        ids[i, t - len(x):] = torch.tensor(x)
        mask[i, t - len(x):] = 1
    ids, mask = ids.to(device), mask.to(device)

    def run(i, new=n):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                    top_k=0, num_return_sequences=g, max_new_tokens=new, min_new_tokens=new,
                                    pad_token_id=pad_id)
        if device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert out.shape == (len(prompt_ids) * g, t + new), f"transformers returned {tuple(out.shape)}"
        return dt

    return run


def _compare(tina_run, hf_run, repeats: int, slots: int) -> dict:
    """Warm both up, then alternate tina / transformers runs so both see the same machine noise."""
    first = tina_run(10_000)
    res = {"tina_jax": {"first_call_s": first}}
    if hf_run is not None:
        hf_run(0, 2)  # warm-up (allocator, kernels)
    tt, th = [], []
    for i in range(repeats):
        tt.append(tina_run(i))
        if hf_run is not None:
            th.append(hf_run(i))
    res["tina_jax"].update(_stats(tt, slots))
    res["tina_jax"]["compile_s_approx"] = max(first - res["tina_jax"]["steady_s"], 0.0)
    if hf_run is not None:
        res["transformers"] = _stats(th, slots)
        res["speedup_median"] = res["tina_jax"]["slots_per_s"] / res["transformers"]["slots_per_s"]
        res["speedup_best"] = res["tina_jax"]["best_slots_per_s"] / res["transformers"]["best_slots_per_s"]
    return res


# ----------------------------------------------------------------------------------------------
# W1 (CPU)
# ----------------------------------------------------------------------------------------------
def w1_prompts(num: int = 8) -> list[list[dict]]:
    random.seed(0)
    prompts = []
    for _ in range(num):
        a = random.randint(10, 99)
        b = random.randint(10, 99)
        prompts.append([{"role": "user", "content": f"What is {a} + {b}? Give the final answer as a number."}])
    return prompts


def breakdown(model, prompts, sampling, repeats: int = 7) -> dict:
    """Times one decode step's parts at the workload's shapes (median of ``repeats``)."""
    from tina_jax import sampling as S
    from tina_jax.models import decoder

    cfg, params = model.config, model.params
    ids = S.encode_prompts(model.tokenizer, prompts)
    b, g, n = len(ids), sampling.num_samples, sampling.max_new_tokens
    p = S.prompt_bucket(max(map(len, ids)))
    r = b * g
    prefix = dict(decoder.init_cache(cfg, b, p), mask=jnp.ones((b, p), bool))
    cache = decoder.init_cache(cfg, r, n)
    tok = jnp.ones((r, 1), jnp.int32)
    rest = params

    @jax.jit
    def layers_fn(params, prefix, cache):  # one decode step's layers, as sample_tokens runs them
        return decoder.forward_cached(cfg, params, tok, tok + p, cache, jnp.int32(n // 2), prefix=prefix)

    head_fn = jax.jit(lambda rest, h: decoder.logits_from_hidden(cfg, rest, h[:, 0]))
    choose_fn = jax.jit(lambda logits, key: S.choose_tokens(logits, key, sampling))

    def med(fn):
        jax.block_until_ready(fn())
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    h, _ = layers_fn(params, prefix, cache)
    logits = head_fn(rest, h)
    t_layers = med(lambda: layers_fn(params, prefix, cache)[0])
    t_head = med(lambda: head_fn(rest, h))
    t_choose = med(lambda: choose_fn(logits, jax.random.key(0)))
    total = t_layers + t_head + t_choose
    return {"step_layers_ms": 1e3 * t_layers, "step_lm_head_ms": 1e3 * t_head, "step_choose_ms": 1e3 * t_choose,
            "lm_head_fraction": t_head / total}


def run_w1(args) -> dict:
    import tina_jax
    from tina_jax.sampling import SamplingConfig, encode_prompts

    model = tina_jax.load_model("smollm2-135m-instruct", dtype="float32")
    prompts = w1_prompts()
    g, n = 8, 48
    sampling = SamplingConfig(max_new_tokens=n, temperature=1.0, top_p=1.0, num_samples=g, stop_token_ids=())
    res = {"workload": "W1", "backend": jax.default_backend(), "model": "smollm2-135m-instruct", "dtype": "float32",
           "prompts": len(prompts), "num_samples": g, "max_new_tokens": n}
    tina_run, info = _tina_runner(model, prompts, sampling)
    hf_run = None
    if not args.skip_hf:
        import torch
        from transformers import AutoModelForCausalLM

        from tina_jax.models.loading import resolve_source

        hf = AutoModelForCausalLM.from_pretrained(str(resolve_source("smollm2-135m-instruct")),
                                                  dtype=torch.float32).eval()
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        hf_run = _hf_runner(hf, encode_prompts(model.tokenizer, prompts), pad, g, n, "cpu")
        res["torch_threads"] = torch.get_num_threads()
    slots = len(prompts) * g * n
    res.update(_compare(tina_run, hf_run, args.repeats, slots))
    res["tina_jax"].update(info)
    t = res["tina_jax"]
    print(f"tina_jax: {t['slots_per_s']:.1f} token-slots/s median (best {t['best_slots_per_s']:.1f}); "
          f"steady {t['steady_s']:.2f}s, first call {t['first_call_s']:.1f}s", flush=True)
    if hf_run is not None:
        h = res["transformers"]
        print(f"transformers: {h['slots_per_s']:.1f} token-slots/s median (best {h['best_slots_per_s']:.1f}); "
              f"tina_jax / transformers = {res['speedup_median']:.2f}x median, {res['speedup_best']:.2f}x best",
              flush=True)
    if args.breakdown:
        res["breakdown"] = breakdown(model, prompts, sampling)
        print("decode step:", {k: round(v, 3) for k, v in res["breakdown"].items()}, flush=True)
    return res


# ----------------------------------------------------------------------------------------------
# GPU workload
# ----------------------------------------------------------------------------------------------
def run_gpu(args) -> dict:
    from tina_jax import init_params
    from tina_jax.models.config import ModelConfig
    from tina_jax.models.loading import REGISTRY, Model
    from tina_jax.sampling import SamplingConfig

    hf_config = REGISTRY["qwen2.5-1.5b-instruct"].hf_config
    if args.gpu_layers:  # a shallower model of the same width (smoke runs)
        hf_config = dict(hf_config, num_hidden_layers=args.gpu_layers)
    cfg = ModelConfig.from_hf(hf_config, param_dtype="bfloat16", compute_dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    model = Model(cfg, params, tokenizer=None)
    b, g, p, n = args.gpu_prompts, args.gpu_samples, args.gpu_prompt_len, args.gpu_new_tokens
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, p).tolist() for _ in range(b)]
    sampling = SamplingConfig(max_new_tokens=n, temperature=1.0, num_samples=g, stop_token_ids=())
    res = {"workload": "gpu", "backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "model": "qwen2.5-1.5b-shaped random", "dtype": "bfloat16", "prompts": b, "prompt_len": p,
           "num_samples": g, "max_new_tokens": n}
    hf_run = None
    if not args.skip_hf:
        import torch
        import transformers

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("transformers: torch has no CUDA device; running it on the CPU", flush=True)
        hf_cfg = transformers.Qwen2Config(**{k: v for k, v in hf_config.items() if k != "architectures"})
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.bfloat16).to(device).eval()
        hf_run = _hf_runner(hf, prompts, 0, g, n, device)
        res["transformers_device"] = device
    r = b * g
    tina_run, info = _tina_runner(model, prompts, sampling)
    res.update(_compare(tina_run, hf_run, args.repeats, r * n))
    prefill_run, _ = _tina_runner(model, prompts, sampling.replace(max_new_tokens=1))
    prefill_run(10_000)
    prefill_s = statistics.median([prefill_run(i) for i in range(args.repeats)])
    tina = res["tina_jax"]
    tina.update(info)
    step_s = (tina["steady_s"] - prefill_s) / (n - 1)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k and v, bf16, all layers
    prompt_kv = b * tina["prompt_bucket"] * kv_token  # shared by the G rows of a prompt
    need_kv = prompt_kv + r * (n / 2) * kv_token  # the average valid completion cache over the run
    read_kv = prompt_kv + r * n * kv_token  # this implementation attends over the whole preallocated cache
    tina.update(step_ms=1e3 * step_s, prefill_s=prefill_s, tokens_per_s=tina["slots_per_s"],
                bytes_per_step_needed=param_bytes + need_kv, bytes_per_step_read=param_bytes + read_kv,
                roofline_fraction=(param_bytes + need_kv) / step_s / args.peak_bw,
                bandwidth_fraction_of_bytes_read=(param_bytes + read_kv) / step_s / args.peak_bw)
    print(f"tina_jax: {tina['tokens_per_s']:.0f} tokens/s, decode step {tina['step_ms']:.2f} ms, "
          f"{100 * tina['roofline_fraction']:.1f}% of the bandwidth roofline (needed bytes), "
          f"{100 * tina['bandwidth_fraction_of_bytes_read']:.1f}% counting the bytes actually read", flush=True)
    if hf_run is not None:
        print(f"transformers: {res['transformers']['slots_per_s']:.0f} tokens/s; "
              f"tina_jax / transformers = {res['speedup_median']:.2f}x", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU workload instead of W1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    ap.add_argument("--breakdown", action="store_true", help="W1: time a decode step's parts")
    ap.add_argument("--peak-bw", type=float, default=3.35e12, help="GPU peak memory bandwidth, bytes/s (H100 SXM)")
    ap.add_argument("--gpu-prompts", type=int, default=64)
    ap.add_argument("--gpu-samples", type=int, default=8)
    ap.add_argument("--gpu-prompt-len", type=int, default=256)
    ap.add_argument("--gpu-new-tokens", type=int, default=1024)
    ap.add_argument("--gpu-layers", type=int, default=0, help="override the layer count (0 = the registry's 28)")
    args = ap.parse_args()
    res = run_gpu(args) if args.gpu else run_w1(args)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
