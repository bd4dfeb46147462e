"""Load time of SmolLM2-135M-Instruct (first GGUF conversion and cached) and forward time on [8, 256].

    python bench/bench_forward.py            # uses a fresh cache dir, so the first load converts
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep-cache", action="store_true", help="reuse $TINA_JAX_CACHE instead of a fresh one")
    args = ap.parse_args()
    if not args.keep_cache:
        os.environ["TINA_JAX_CACHE"] = tempfile.mkdtemp(prefix="tina_jax_bench_")
    import tina_jax

    t0 = time.perf_counter()
    tina_jax.load_model("smollm2-135m-instruct")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = tina_jax.load_model("smollm2-135m-instruct")
    cached = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, model.config.vocab_size, (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)
    fwd = jax.jit(tina_jax.forward, static_argnums=0)
    t0 = time.perf_counter()
    fwd(model.config, model.params, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fwd(model.config, model.params, ids, mask).block_until_ready()
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times)
    tokens = args.batch * args.seq
    res = {"load_first_s": round(first, 2), "load_cached_s": round(cached, 2),
           "forward_compile_plus_first_s": round(compile_s, 2), "forward_steady_s": round(steady, 3),
           "tokens_per_s": round(tokens / steady, 1), "batch": args.batch, "seq": args.seq,
           "backend": jax.default_backend()}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
