"""Metrics over graded samples: avg@n, unbiased pass@k, maj@k, and their mean and std over seeds.

All functions take plain lists / NumPy arrays and are exact formulas:

- ``avg@n``: mean over problems of the mean correctness of the n samples (pass@1 estimated from n).
- ``pass@k`` (Chen et al. 2021, unbiased): per problem ``1 - C(n - c, k) / C(n, k)`` with c correct
  out of n, averaged over problems.
- ``maj@k``: per problem, the most frequent extracted answer among the first k samples (samples with
  no extracted answer do not vote; ties go to the answer seen first) is correct; 0 if nothing was
  extracted. Samples with the same extracted string share a verdict (the grader is a function of it).
- Over seeds (independent sampling runs): mean and sample std (ddof = 1; 0 for one seed).
"""
from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np

__all__ = ["pass_at_k", "maj_at_k", "ks_for", "summarize_seed", "over_seeds"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def maj_at_k(extracted: Sequence[str | None], correct: Sequence[int], k: int) -> float:
    """maj@k of one problem from its samples' extracted answers and verdicts (in sample order)."""
    votes: dict[str, int] = {}
    verdict: dict[str, int] = {}
    for e, c in zip(extracted[:k], correct[:k]):
        if e is None:
            continue
        votes[e] = votes.get(e, 0) + 1
        verdict.setdefault(e, int(c))
    if not votes:
        return 0.0
    best = max(votes.values())
    winner = next(e for e in votes if votes[e] == best)  # dicts keep first-seen order
    return float(verdict[winner])


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarize_seed(per_problem: Sequence[dict]) -> dict[str, float]:
    """Metrics of one seed from per-problem records ``{"correct": [..n], "extracted": [..n],
    "num_tokens": [..n], "truncated": [..n]}`` (every problem has the same n)."""
    if not per_problem:
        raise ValueError("no problems to summarize")
    n = len(per_problem[0]["correct"])
    out: dict[str, float] = {f"avg@{n}": float(np.mean([np.mean(p["correct"]) for p in per_problem]))}
    for k in ks_for(n):
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(sum(p["correct"])), k) for p in per_problem]))
        if n > 1:
            out[f"maj@{k}"] = float(np.mean([maj_at_k(p["extracted"], p["correct"], k) for p in per_problem]))
    lengths = np.concatenate([np.asarray(p["num_tokens"], np.float64) for p in per_problem])
    out["mean_length"] = float(lengths.mean())
    out["median_length"] = float(np.median(lengths))
    out["truncated_frac"] = float(np.mean(np.concatenate([np.asarray(p["truncated"], np.float64)
                                                          for p in per_problem])))
    out["num_problems"] = float(len(per_problem))
    return out


def over_seeds(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "values"}}`` across seeds (std with ddof=1; 0 for one seed)."""
    keys = per_seed[0].keys()
    out = {}
    for k in keys:
        v = np.asarray([s[k] for s in per_seed], np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                  "values": [float(x) for x in v]}
    return out
