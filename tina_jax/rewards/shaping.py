"""Shaping rewards of the open-r1 lineage: format, tag_count, reasoning_steps, repetition_penalty,
cosine and length (RECIPES.md section 5).

Each reward is a plain function ``(completions: list[str], **example_fields) -> list[float]`` whose
``__name__`` is the reward's name; parameterised rewards come from factories
(``cosine_reward(max_len=3584)`` returns a function named ``"cosine"``). Sources:
huggingface/open-r1 src/open_r1/rewards.py and shangshang-wang/Tina tina/post_train_hf/rewards.py,
whose format and tag_count differ from open-r1's (Tina's prompt already ends with ``<think>``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal

from tina_jax.rewards.math import (
    CORRECT,
    GOLD_UNPARSEABLE,
    RewardFn,
    _field,
    _require_str_list,
    answer_verdicts,
    gold_texts,
)
from tina_jax.rewards.pool import CheckerPool

__all__ = [
    "cosine_reward",
    "cosine_value",
    "format_reward",
    "length_reward",
    "reasoning_steps_reward",
    "repetition_penalty_reward",
    "tag_count_reward",
]

LengthUnit = Literal["chars", "tokens"]


def format_reward(completions: list[str], **fields: Any) -> list[float]:
    """``format``: 1.0 if the completion contains ``"\\n</think>\\n"`` exactly once, else 0.0.

    Tina's format_reward, also Open-RS's: ``<think>`` is in the prompt and ``<answer>`` is never
    checked [shangshang-wang/Tina tina/post_train_hf/rewards.py; RECIPES.md section 5].
    """
    return [1.0 if c.count("\n</think>\n") == 1 else 0.0 for c in _require_str_list(completions)]


format_reward.__name__ = format_reward.__qualname__ = "format"


def tag_count_reward(completions: list[str], **fields: Any) -> list[float]:
    """``tag_count``: +0.5 if ``"<think>\\n"`` occurs exactly once, +0.5 if ``"\\n</think>\\n"`` does.

    [shangshang-wang/Tina tina/post_train_hf/rewards.py tag_count_reward; RECIPES.md section 5]
    """
    out = []
    for c in _require_str_list(completions):
        r = 0.0
        if c.count("<think>\n") == 1:
            r += 0.5
        if c.count("\n</think>\n") == 1:
            r += 0.5
        out.append(r)
    return out


tag_count_reward.__name__ = tag_count_reward.__qualname__ = "tag_count"

# No re.MULTILINE, as in open-r1: "^\d+\." only matches at the very start of the text.
_STEP_RE = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


def reasoning_steps_reward(completions: list[str], **fields: Any) -> list[float]:
    """``reasoning_steps``: ``min(1, n / 3)`` where ``n`` counts matches of
    ``(Step \\d+:|^\\d+\\.|\\n-|\\n\\*|First,|Second,|Next,|Finally,)`` (no MULTILINE flag).

    [huggingface/open-r1 src/open_r1/rewards.py reasoning_steps_reward; RECIPES.md section 5]
    """
    return [min(1.0, len(_STEP_RE.findall(c)) / 3) for c in _require_str_list(completions)]


reasoning_steps_reward.__name__ = reasoning_steps_reward.__qualname__ = "reasoning_steps"


def repetition_penalty_reward(*, ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """Builds ``repetition_penalty``: ``(1 - unique / total) * max_penalty`` over the word
    ``ngram_size``-grams of the lower-cased, whitespace-split completion; 0.0 for an empty text or
    one with fewer than ``ngram_size`` words.

    [huggingface/open-r1 src/open_r1/rewards.py get_repetition_penalty_reward(ngram_size=3,
    max_penalty=-1.0) as Tina configures it; after arXiv 2502.03373 appendix C.2]
    """
    if not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
    if max_penalty > 0:
        raise ValueError(f"max_penalty {max_penalty} should not be positive (it is the most negative reward)")

    def repetition_penalty(completions: list[str], **fields: Any) -> list[float]:
        out = []
        for c in _require_str_list(completions):
            words = c.lower().split()
            if c == "" or len(words) < ngram_size:
                out.append(0.0)
                continue
            ngrams = list(zip(*[words[i:] for i in range(ngram_size)]))
            out.append(float((1 - len(set(ngrams)) / len(ngrams)) * max_penalty))
        return out

    repetition_penalty.__name__ = repetition_penalty.__qualname__ = "repetition_penalty"
    return repetition_penalty


def _length_counter(
    length_unit: str, tokenizer: Any, length_fn: Callable[[str], int] | None
) -> Callable[[list[str], dict[str, Any]], list[int]]:
    """Returns ``lengths(texts, fields)`` for the chosen unit (validated here, at build time)."""
    if length_unit == "chars":
        if tokenizer is not None or length_fn is not None:
            raise ValueError("length_unit='chars' counts characters; tokenizer/length_fn need length_unit='tokens'")
        return lambda texts, fields: [len(t) for t in texts]
    if length_unit != "tokens":
        raise ValueError(f"length_unit must be 'chars' or 'tokens', got {length_unit!r}")
    if tokenizer is not None and length_fn is not None:
        raise ValueError("pass either tokenizer or length_fn, not both")
    if tokenizer is not None:
        def count(t: str) -> int:
            return len(tokenizer(t, add_special_tokens=False)["input_ids"])
    else:
        count = length_fn

    def lengths(texts: list[str], fields: dict[str, Any]) -> list[int]:
        if "completion_lengths" in fields:  # exact generated-token counts from the trainer
            values = _field(fields, "completion_lengths", len(texts))
            return [int(v) for v in values]
        if count is None:
            raise ValueError(
                "length_unit='tokens' needs token counts: build the reward with tokenizer=... or "
                "length_fn=..., or pass the field completion_lengths=[...] (generated tokens per completion)"
            )
        return [int(count(t)) for t in texts]

    return lengths


def cosine_value(
    length: float,
    correct: bool,
    *,
    max_len: float,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    clamp: bool = True,
) -> float:
    """open-r1's cosine schedule for one completion of length ``length``.

    ``cos = cos(pi * L / max_len)`` with ``L = min(length, max_len)`` if ``clamp`` else ``length``;
    correct: ``min_value_correct + 0.5 * (max_value_correct - min_value_correct) * (1 + cos)``;
    wrong: ``max_value_wrong + 0.5 * (min_value_wrong - max_value_wrong) * (1 + cos)`` (open-r1
    swaps min and max for wrong answers). With the defaults a correct answer goes from 1.0 at
    ``L = 0`` to 0.5 at ``max_len``, a wrong one from 0.0 to -0.5. ``clamp=False`` is the original
    code, whose curve is periodic past ``max_len`` (RECIPES.md section 5 calls it a bug).
    [huggingface/open-r1 src/open_r1/rewards.py get_cosine_scaled_reward]
    """
    L = min(length, max_len) if clamp else length
    cosine = math.cos(L / max_len * math.pi)
    if correct:
        lo, hi = min_value_correct, max_value_correct
    else:
        lo, hi = max_value_wrong, min_value_wrong
    return float(lo + 0.5 * (hi - lo) * (1.0 + cosine))


def cosine_reward(
    *,
    max_len: int = 1000,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    length_unit: LengthUnit = "chars",
    clamp: bool = True,
    tokenizer: Any = None,
    length_fn: Callable[[str], int] | None = None,
    on_unparseable_gold: Literal["one", "skip"] = "one",
    timeout: float | None = None,
    gold_field: str | None = None,
    pool: CheckerPool | None = None,
) -> RewardFn:
    """Builds ``cosine``: :func:`cosine_value` of each completion's length, correct or not.

    Correctness is math-verify's, as open-r1's cosine reward decides it (gold parsed with
    ``LatexExtractionConfig()``, the answer with its ``NormalizationConfig(boxed=True)`` -- not the
    accuracy reward's ``"all"`` --, ``verify(answer, gold)``; see
    :func:`tina_jax.rewards.math.check_answer`), in the worker pool; a check that times out or
    crashes counts as wrong. Defaults are Tina's config (cosine_min_value_wrong 0.0,
    cosine_max_value_wrong -0.5, cosine_min_value_correct 0.5, cosine_max_value_correct 1.0,
    cosine_max_len 1000; Tina's Open-RS3 recipe sets max_len 3584) [shangshang-wang/Tina
    tina/config.py; RECIPES.md sections 3 and 5].

    Args:
      length_unit: ``"chars"`` (as coded in open-r1: ``len(text)``) or ``"tokens"`` (with
        ``tokenizer`` (a Hugging Face tokenizer, counted without special tokens) or ``length_fn``,
        or the field ``completion_lengths=[...]`` at call time, which takes precedence).
      clamp: count ``min(L, max_len)`` (default) or the raw length (open-r1's periodic curve).
      on_unparseable_gold: ``"one"`` (open-r1 and Tina: 1.0) or ``"skip"`` (NaN, "no reward").
      timeout, gold_field, pool: as for :func:`tina_jax.rewards.math.accuracy_reward`.
    """
    if not max_len > 0:
        raise ValueError(f"max_len must be > 0, got {max_len!r}")
    if on_unparseable_gold not in ("skip", "one"):
        raise ValueError(f"on_unparseable_gold must be 'skip' or 'one', got {on_unparseable_gold!r}")
    lengths_of = _length_counter(length_unit, tokenizer, length_fn)
    no_gold = float("nan") if on_unparseable_gold == "skip" else 1.0
    values = dict(max_len=max_len, min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
                  min_value_correct=min_value_correct, max_value_correct=max_value_correct, clamp=clamp)

    def cosine(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        golds = gold_texts(fields, len(texts), gold_field)
        lengths = lengths_of(texts, fields)
        verdicts = answer_verdicts(texts, golds, mode="open_r1", timeout=timeout, pool=pool, boxed=True)
        return [
            no_gold if v == GOLD_UNPARSEABLE else cosine_value(n, v == CORRECT, **values)
            for n, v in zip(lengths, verdicts)
        ]

    cosine.__name__ = cosine.__qualname__ = "cosine"
    return cosine


def length_reward(
    *,
    length_unit: LengthUnit = "chars",
    tokenizer: Any = None,
    length_fn: Callable[[str], int] | None = None,
    group_size: int | None = None,
    timeout: float | None = None,
    gold_field: str | None = None,
    pool: CheckerPool | None = None,
) -> RewardFn:
    """Builds ``length``, Kimi-1.5's length penalty as open-r1 codes it (len_reward):
    ``lambda = 0.5 - (L - L_min) / (L_max - L_min)``; correct: ``lambda``, wrong: ``min(0, lambda)``;
    all zeros when ``L_max == L_min`` [huggingface/open-r1 src/open_r1/rewards.py len_reward;
    arXiv 2501.12599; RECIPES.md section 5].

    Args:
      group_size: ``None`` (open-r1): ``L_min``/``L_max`` over all completions passed in one call
        (TRL passes a whole batch). An int: over consecutive groups of that many completions (the G
        samples of one prompt, as the Kimi report defines it); the call's length must divide.
      length_unit, tokenizer, length_fn: as for :func:`cosine_reward`.
      timeout, gold_field, pool: as for :func:`tina_jax.rewards.math.accuracy_reward`.

    A completion whose gold cannot be parsed counts as correct (open-r1: "avoid penalizing"); a
    check that times out or crashes counts as wrong.
    """
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be None or a positive int, got {group_size!r}")
    lengths_of = _length_counter(length_unit, tokenizer, length_fn)

    def length(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        n = len(texts)
        golds = gold_texts(fields, n, gold_field)
        lengths = lengths_of(texts, fields)
        g = n if group_size is None else group_size
        if n == 0:
            return []
        if n % g:
            raise ValueError(f"length reward: {n} completions is not a multiple of group_size={g}")
        out = [0.0] * n
        need = [i for s in range(0, n, g) if max(lengths[s:s + g]) > min(lengths[s:s + g])
                for i in range(s, s + g)]
        if not need:
            return out
        verdicts = answer_verdicts([texts[i] for i in need], [golds[i] for i in need],
                                   mode="open_r1", timeout=timeout, pool=pool, boxed=True)
        correct = dict(zip(need, (v in (CORRECT, GOLD_UNPARSEABLE) for v in verdicts)))
        for s in range(0, n, g):
            lo, hi = min(lengths[s:s + g]), max(lengths[s:s + g])
            if hi == lo:
                continue
            for i in range(s, s + g):
                lam = 0.5 - (lengths[i] - lo) / (hi - lo)
                out[i] = float(lam if correct[i] else min(0.0, lam))
        return out

    length.__name__ = length.__qualname__ = "length"
    return length
