"""Long-tail decode workload (issue 14, item 3): most rows finish early, a few run long.

    python bench/long_tail.py [--repeats 1] [--max-new-tokens 512] [--out runs/bench/long_tail.json]

SmolLM2-135M-Instruct fp32, greedy, 64 distinct chat prompts (one row each, G = 1), up to 512 new tokens,
the model's default stop tokens. The prompts are fixed (no randomness) and mix three kinds so the natural
completion lengths are long-tailed:

- 44 short-answer prompts: "What is {a} + {b}? Reply with only the number." (a, b from a fixed list);
- 14 one-sentence prompts: "In one sentence, what is {thing}?";
- 6 open-ended problems: the first 6 MATH-500 test problems (``data/math500/test.jsonl``), bare question.

Greedy decoding is deterministic, so the same tokens come out before and after a sampler change
(``tokens_sha256`` fingerprints them; equal hashes = identical outputs). The script uses only the public
API (``tina_jax.load_model``, ``sampling.generate``, ``sampling.SamplingConfig``), so the same file runs
on an older checkout to measure "before".

Reported (printed, and the last line is one JSON object; ``--out`` writes it too):

- ``first_call_s``: the first ``generate`` (compile + run); ``wall_s``: median of ``--repeats`` further runs;
- ``generated_tokens``: sum of completion lengths (stop token included); ``tokens_per_s`` = that / wall_s;
- ``length_percentiles``: p10/p50/p90/p99/max/mean of the completion lengths; ``truncated`` rows;
- ``finished_row_step_fraction``: of the row-steps a dense batch decodes (every row runs until the longest
  row ends: rows x max length), the fraction spent on rows that had already emitted their stop token,
  ``1 - sum(lengths) / (rows * max(lengths))``. It is a property of the workload (what a sampler that keeps
  finished rows in the batch wastes), not a measurement of the sampler.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_PAIRS = [(17, 25), (38, 44), (12, 79), (63, 21), (55, 36), (91, 18), (27, 64), (48, 33), (72, 15), (29, 58),
          (84, 47), (13, 96), (66, 22), (35, 81), (50, 49), (77, 19), (41, 53), (88, 26), (24, 67), (59, 32),
          (16, 74), (93, 45)]
_THINGS = ["a prime number", "photosynthesis", "a black hole", "the Pythagorean theorem", "an atom",
           "gravity", "a triangle", "democracy", "a volcano", "the moon", "an algorithm", "a fraction",
           "evaporation", "a circle"]


def prompts() -> list[list[dict]]:
    """The 64 fixed chat prompts, kinds interleaved (row order does not matter to a dense batch)."""
    short = [f"What is {a} + {b}? Reply with only the number." for a, b in _PAIRS]
    short += [f"What is {a} + {b}? Reply with only the number." for b, a in _PAIRS]
    one = [f"In one sentence, what is {t}?" for t in _THINGS]
    with open(ROOT / "data" / "math500" / "test.jsonl") as f:
        math = [json.loads(line)["problem"] for _, line in zip(range(6), f)]
    texts = short + one + math
    assert len(texts) == 64, len(texts)
    order = np.random.default_rng(0).permutation(len(texts))
    return [[{"role": "user", "content": texts[i]}] for i in order]


def run(args) -> dict:
    import jax

    import tina_jax
    from tina_jax import sampling

    model = tina_jax.load_model("smollm2-135m-instruct", dtype=args.dtype)
    chats = prompts()
    cfg = sampling.SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
    key = jax.random.key(0)

    def once():
        t0 = time.perf_counter()
        out = sampling.generate(model, chats, cfg, key)
        jax.block_until_ready(out.tokens)
        return time.perf_counter() - t0, out

    first, out = once()
    times = []
    for _ in range(args.repeats):
        dt, again = once()
        assert np.array_equal(np.asarray(again.tokens), np.asarray(out.tokens)), "greedy runs differ"
        times.append(dt)
    wall = statistics.median(times) if times else first
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    rows = len(lengths)
    gen = int(lengths.sum())
    digest = hashlib.sha256()
    for i in range(rows):
        digest.update(tokens[i, :lengths[i]].astype(np.int32).tobytes())
        digest.update(b"|")
    q = lambda p: float(np.percentile(lengths, p))  # noqa: E731
    return {
        "workload": "long_tail", "model": "smollm2-135m-instruct", "dtype": args.dtype, "rows": rows,
        "max_new_tokens": args.max_new_tokens, "greedy": True, "repeats": args.repeats,
        "first_call_s": first, "wall_s": wall, "times_s": times,
        "generated_tokens": gen, "tokens_per_s": gen / wall,
        "length_percentiles": {"p10": q(10), "p50": q(50), "p90": q(90), "p99": q(99),
                               "max": int(lengths.max()), "mean": float(lengths.mean())},
        "truncated": int(np.asarray(out.truncated).sum()),
        "finished_row_step_fraction": 1.0 - gen / (rows * int(lengths.max())),
        "lengths": lengths.tolist(),
        "tokens_sha256": digest.hexdigest(),
        "jax": jax.__version__, "backend": jax.default_backend(),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after the first (compile) call")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    res = run(args)
    p = res["length_percentiles"]
    print(f"long tail: {res['rows']} rows, {res['generated_tokens']} tokens in {res['wall_s']:.1f} s "
          f"({res['tokens_per_s']:.1f} tokens/s; first call {res['first_call_s']:.1f} s); lengths p50 {p['p50']:.0f} "
          f"p90 {p['p90']:.0f} p99 {p['p99']:.0f} max {p['max']}; {res['truncated']} truncated; "
          f"finished row-step fraction {res['finished_row_step_fraction']:.2f}; sha256 {res['tokens_sha256'][:12]}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
