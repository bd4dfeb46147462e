"""Reward functions for GRPO on decoded completions (RECIPES.md sections 5 and 7).

A reward is a plain function ``(completions: list[str], **example_fields) -> list[float]`` whose
``__name__`` is its name. Example fields arrive as lists aligned with ``completions``
(``solution=[...]``, ``answer=[...]``), as TRL and open-r1 pass them; fields a reward does not use
are ignored.

===================  ==========================================  ==============================
name                 build with                                  source
===================  ==========================================  ==============================
accuracy             ``accuracy_reward(flavour="tina", ...)``    open-r1 / Tina, math-verify
format               ``format_reward`` (a plain function)        Tina / Open-RS
tag_count            ``tag_count_reward``                        Tina
reasoning_steps      ``reasoning_steps_reward``                  open-r1
repetition_penalty   ``repetition_penalty_reward(ngram_size=3)`` open-r1
cosine               ``cosine_reward(max_len=1000, ...)``        open-r1, math-verify
length               ``length_reward(...)``                      open-r1 (Kimi 1.5), math-verify
gsm8k_strict         ``gsm8k_strict_reward()``                   verl (TinyLoRA)
kk                   ``kk_reward(scoring="logic_rl")``           Logic-RL / warm-up paper
warmup_math          ``warmup_math_reward()``                    warm-up paper, math-verify
===================  ==========================================  ==============================

``get_reward(name, **params)`` builds one by name; ``combine([(fn, weight), ...])`` sums them.

NaN means "no reward": ``accuracy`` (Tina flavour, ``on_unparseable_gold="skip"``) returns NaN when
the gold answer cannot be parsed or verify raises or times out, where Tina's reward returned ``None`` (made NaN by TRL and dropped by
its ``nansum``). :func:`combine` does the same: a NaN contributes 0 to the weighted total. Code that
consumes per-reward columns should use ``nanmean`` for logging.

Answer checks (accuracy, cosine, length) run in worker processes with a per-item timeout
(:mod:`tina_jax.rewards.pool`); call :func:`shutdown` to stop the workers early.
"""

from __future__ import annotations

# Not `import math`: importing the submodule tina_jax.rewards.math rebinds the name `math` here.
from collections.abc import Mapping
from math import isfinite, isnan
from typing import Any, Callable, Sequence

from tina_jax.rewards.math import (
    CORRECT,
    GOLD_UNPARSEABLE,
    MATH_VERIFY_TIMEOUT,
    VERIFY_FAILED,
    WRONG,
    accuracy_reward,
    answer_verdicts,
    check_answer,
    gold_texts,
    gsm8k_extract,
    gsm8k_gold,
    gsm8k_strict_reward,
    last_boxed_only_string,
)
from tina_jax.rewards.pool import CheckerPool, get_pool, shutdown
from tina_jax.rewards.puzzles import kk_reward, kk_score_logic_rl, kk_score_warmup
from tina_jax.rewards.shaping import (
    cosine_reward,
    cosine_value,
    format_reward,
    length_reward,
    reasoning_steps_reward,
    repetition_penalty_reward,
    tag_count_reward,
)
from tina_jax.rewards.warmup import warmup_answer_block, warmup_math_gold, warmup_math_reward

__all__ = [
    "CORRECT",
    "GOLD_UNPARSEABLE",
    "MATH_VERIFY_TIMEOUT",
    "REWARD_NAMES",
    "VERIFY_FAILED",
    "WRONG",
    "CheckerPool",
    "RewardFn",
    "accuracy_reward",
    "answer_verdicts",
    "check_answer",
    "check_params",
    "combine",
    "cosine_reward",
    "cosine_value",
    "format_reward",
    "get_pool",
    "get_reward",
    "gold_texts",
    "gsm8k_extract",
    "gsm8k_gold",
    "gsm8k_strict_reward",
    "kk_reward",
    "kk_score_logic_rl",
    "kk_score_warmup",
    "last_boxed_only_string",
    "length_reward",
    "reasoning_steps_reward",
    "repetition_penalty_reward",
    "shutdown",
    "tag_count_reward",
    "warmup_answer_block",
    "warmup_math_gold",
    "warmup_math_reward",
]

RewardFn = Callable[..., list[float]]

# name -> factory (parameterised rewards) or the function itself (parameter-free ones).
_FACTORIES: dict[str, Callable[..., RewardFn]] = {
    "accuracy": accuracy_reward,
    "cosine": cosine_reward,
    "length": length_reward,
    "repetition_penalty": repetition_penalty_reward,
    "gsm8k_strict": gsm8k_strict_reward,
    "kk": kk_reward,
    "warmup_math": warmup_math_reward,
}
_PLAIN: dict[str, RewardFn] = {
    "format": format_reward,
    "tag_count": tag_count_reward,
    "reasoning_steps": reasoning_steps_reward,
}
REWARD_NAMES: tuple[str, ...] = tuple(sorted([*_FACTORIES, *_PLAIN]))


def get_reward(name: str, **params: Any) -> RewardFn:
    """The reward called ``name``, built with ``params`` (see the table in the module docstring).

    Raises ValueError for an unknown name, or for parameters given to a parameter-free reward;
    a factory rejects unknown parameters with TypeError, re-raised here as ValueError.
    """
    if name in _PLAIN:
        if params:
            raise ValueError(f"reward {name!r} takes no parameters, got {sorted(params)}")
        return _PLAIN[name]
    if name not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARD_NAMES)}")
    try:
        return _FACTORIES[name](**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for reward {name!r}: {e}") from e


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError if ``params`` holds a name reward ``name`` does not take (nearest name suggested).
    Runs at config time, before any model is loaded; values are checked when the reward is built."""
    import difflib
    import inspect

    if name in _PLAIN:
        if params:
            raise ValueError(f"reward {name!r} takes no parameters, got {sorted(params)}")
        return
    if name not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARD_NAMES)}")
    valid = [p for p in inspect.signature(_FACTORIES[name]).parameters if p not in ("pool",)]
    for key in params:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            raise ValueError(f"reward {name!r} has no parameter {key!r}; "
                             + (f"did you mean {near[0]!r}? " if near else "") + f"valid: {', '.join(valid)}")


def build(specs: Sequence[Any], tokenizer: Any = None,
          group_size: int | None = None) -> Callable[..., tuple[list[float], dict[str, list[float]]]]:
    """``combine`` of the rewards named by ``specs`` (objects with ``name``, ``weight`` and ``params``, as
    in a run config's ``rewards`` list). Length-based rewards measured in tokens get ``tokenizer``;
    ``length`` normalises within groups of ``group_size`` completions unless its params say otherwise
    (TRL called reward functions per device micro-batch: one group of G in the paper recipes)."""
    fns = []
    for spec in specs:
        params = dict(spec.params)
        if spec.name in ("cosine", "length") and params.get("length_unit") == "tokens":
            params.setdefault("tokenizer", tokenizer)
        if spec.name == "length" and group_size is not None:
            params.setdefault("group_size", group_size)
        fns.append((get_reward(spec.name, **params), spec.weight))
    return combine(fns)


def combine(
    rewards: Sequence[tuple[RewardFn, float]],
) -> Callable[..., tuple[list[float], dict[str, list[float]]]]:
    """Builds ``combined(completions, **fields) -> (total, per_reward)``.

    ``total[i] = sum_k w_k * r_k[i]`` over the rewards whose value is not NaN (a NaN or ``None``
    value means "no reward" and contributes 0, like TRL's ``nansum``); ``per_reward[name]`` holds
    each reward's raw values (``None`` turned into NaN) for logging. RECIPES.md section 2.

    Raises ValueError for duplicate reward names (set a distinct ``__name__``), non-numeric
    weights, or a reward returning the wrong number of values.
    """
    pairs = []
    names: list[str] = []
    for entry in rewards:
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            raise ValueError(f"combine expects (reward_fn, weight) pairs, got {entry!r}")
        fn, weight = entry
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not isfinite(weight):
            raise ValueError(f"weight of reward {getattr(fn, '__name__', fn)!r} must be a finite number, got {weight!r}")
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"reward {fn!r} has no __name__; set one, it names the logged column")
        if name in names:
            raise ValueError(f"two rewards are named {name!r}; give one a distinct __name__")
        names.append(name)
        pairs.append((name, fn, float(weight)))

    def combined(completions: list[str], **fields: Any) -> tuple[list[float], dict[str, list[float]]]:
        n = len(completions)
        total = [0.0] * n
        per_reward: dict[str, list[float]] = {}
        for name, fn, weight in pairs:
            values = fn(completions, **fields)
            if len(values) != n:
                raise ValueError(f"reward {name!r} returned {len(values)} values for {n} completions")
            column = [float("nan") if v is None else float(v) for v in values]
            per_reward[name] = column
            for i, v in enumerate(column):
                if not isnan(v):
                    total[i] += weight * v
        return total, per_reward

    combined.__name__ = combined.__qualname__ = "combined"
    return combined
