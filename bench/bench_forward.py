"""Load time of SmolLM2-135M-Instruct (first GGUF conversion and cached) and forward time on [8, 256].

    python bench/bench_forward.py            # uses a fresh cache dir, so the first load converts
    python bench/bench_forward.py --model DIR --keep-cache --batch 2 --seq 16 --repeats 1   # another model (tests)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench import common  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=common.DEFAULT_MODEL)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep-cache", action="store_true", help="reuse $TINA_JAX_CACHE instead of a fresh one")
    args = ap.parse_args(argv)
    if not args.keep_cache:
        os.environ["TINA_JAX_CACHE"] = tempfile.mkdtemp(prefix="tina_jax_bench_")
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tina_jax

    t0 = time.perf_counter()
    common.load_model(args.model)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = common.load_model(args.model)
    cached = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, model.config.vocab_size, (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)
    fwd = jax.jit(tina_jax.forward, static_argnums=0)
    compile_s, steady, _ = common.timed(lambda i: fwd(model.config, model.params, ids, mask), args.repeats)
    tokens = args.batch * args.seq
    common.print_json({"model": args.model, "load_first_s": round(first, 2), "load_cached_s": round(cached, 2),
                       "forward_compile_plus_first_s": round(compile_s, 2), "forward_steady_s": round(steady, 3),
                       "tokens_per_s": round(tokens / steady, 1), "batch": args.batch, "seq": args.seq,
                       "backend": jax.default_backend()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
