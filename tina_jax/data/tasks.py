"""Built-in synthetic arithmetic tasks, so the default recipe needs no data files.

Each task is a finite pool of operand pairs ``(a, b)``. A seed fixes one permutation of the pool
(NumPy ``default_rng(seed).permutation``); datasets are read off that permutation, so they are
deterministic, and a train set drawn from its head never meets an eval set drawn from its tail.

Record format (what the rewards read)::

    {"problem": "What is 12 + 45? Give the final answer as a number.",
     "solution": "$57$",     # gold in a form math-verify's parse() reads
     "answer": "57",          # plain string
     "task": "add", "a": 12, "b": 45}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import numpy as np

__all__ = ["TASKS", "ArithmeticTask", "synthetic_dataset", "synthetic_splits"]


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
    """One binary arithmetic task over a finite pool of ``(a, b)`` operand pairs.

    Attributes:
      name: registry name (``synthetic:<name>`` in data sources).
      symbol: the operator as written in the problem text.
      pairs: every allowed ``(a, b)`` pair, in a fixed canonical order.
      op: the exact integer result of ``a <symbol> b``.
    """

    name: str
    symbol: str
    pairs: tuple[tuple[int, int], ...]
    op: Callable[[int, int], int]

    def record(self, a: int, b: int) -> dict:
        result = self.op(a, b)
        return {
            "problem": f"What is {a} {self.symbol} {b}? Give the final answer as a number.",
            "solution": f"${result}$",
            "answer": str(result),
            "task": self.name,
            "a": a,
            "b": b,
        }


def _grid(a_range: range, b_range: Callable[[int], range]) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a in a_range for b in b_range(a))


TASKS: dict[str, ArithmeticTask] = {
    # 2-digit + 2-digit: 90 * 90 = 8100 problems.
    "add": ArithmeticTask("add", "+", _grid(range(10, 100), lambda a: range(10, 100)), lambda a, b: a + b),
    # 2-digit - 2-digit with a >= b (results are never negative): 4095 problems.
    "sub": ArithmeticTask("sub", "-", _grid(range(10, 100), lambda a: range(10, a + 1)), lambda a, b: a - b),
    # 2-digit * 1-digit (b in 2..9): 720 problems.
    "mul": ArithmeticTask("mul", "*", _grid(range(10, 100), lambda a: range(2, 10)), lambda a, b: a * b),
}


def _task(task: str) -> ArithmeticTask:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def _permutation(task: ArithmeticTask, seed: int) -> np.ndarray:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(int(seed)).permutation(len(task.pairs))


def synthetic_dataset(
    task: str, n: int, seed: int, exclude: Collection[tuple[int, int]] | None = None
) -> list[dict]:
    """``n`` distinct problems of ``task``, the first ones of the seed's permutation.

    Args:
      task: a key of ``TASKS`` ("add", "sub", "mul").
      n: number of records (>= 0).
      seed: fixes the permutation; the same (task, n, seed, exclude) gives the same list.
      exclude: ``(a, b)`` pairs to skip (e.g. an eval set's pairs).

    Returns:
      ``n`` records (see module docstring), no two with the same ``(a, b)``.
    """
    spec = _task(task)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    exclude = set() if exclude is None else {tuple(p) for p in exclude}
    out: list[dict] = []
    for idx in _permutation(spec, seed):
        if len(out) == n:
            break
        a, b = spec.pairs[idx]
        if (a, b) not in exclude:
            out.append(spec.record(a, b))
    if len(out) < n:
        raise ValueError(
            f"task {task!r} has only {len(spec.pairs)} distinct problems "
            f"({len(spec.pairs) - len(exclude & set(spec.pairs))} after exclusions); asked for {n}"
        )
    return out


def synthetic_splits(task: str, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out sets from one permutation of the task's pool.

    Train is the head of the seed's permutation (so it equals ``synthetic_dataset(task, n_train,
    seed)``), eval is its tail read backwards (so it does not change when ``n_train`` changes).
    No ``(a, b)`` pair is in both.

    Raises:
      ValueError: if ``n_train + n_eval`` exceeds the pool size.
    """
    spec = _task(task)
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got {n_train}, {n_eval}")
    pool = len(spec.pairs)
    if n_train + n_eval > pool:
        raise ValueError(
            f"task {task!r} has {pool} distinct problems; n_train + n_eval = {n_train + n_eval} is too many"
        )
    perm = _permutation(spec, seed)
    train = [spec.record(*spec.pairs[i]) for i in perm[:n_train]]
    eval_ = [spec.record(*spec.pairs[i]) for i in perm[::-1][:n_eval]]
    return train, eval_
