"""The "Warm up before you train" rewards (RECIPES.md section 7)
[safal312/warmup-before-you-train train/dataset_loader.py: load_kk reward_kk, load_math reward_correct].

Both gate on the same answer format first (:func:`warmup_answer_block`): the completion must hold
``</think>``, ``<answer>`` and ``</answer>`` exactly once each and match
``.+</think>\\s*<answer>(.+)</answer>\\s*$`` (DOTALL: at least one character before ``</think>``, a
non-empty answer block, nothing but whitespace after ``</answer>``), else -2. ``<think>`` is not
checked: the paper's prompts end with it (recipes ``warmup_kk`` / ``warmup_math``) and the reward sees
the completion only, as TRL passed it.

* K&K: ``kk`` with ``scoring: warmup`` (:func:`tina_jax.rewards.puzzles.kk_score_warmup`).
* MATH: ``warmup_math`` (:func:`warmup_math_reward`): -2 bad format; -1 no ``\\boxed{}`` (nor
  ``\\fbox{}``) in the answer block (:func:`tina_jax.rewards.math.last_boxed_only_string`); else
  math-verify's ``verify(parse(last box), parse(gold box))`` with its default parse configuration
  (check mode ``"warmup"`` of :func:`tina_jax.rewards.math.check_answer`): +2 equal, -0.5 not.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tina_jax.rewards.math import (
    CORRECT,
    RewardFn,
    _field,
    _require_str_list,
    answer_verdicts,
    last_boxed_only_string,
)
from tina_jax.rewards.pool import CheckerPool

__all__ = ["warmup_answer_block", "warmup_math_gold", "warmup_math_reward"]

logger = logging.getLogger(__name__)

_FORMAT_RE = re.compile(r".+</think>\s*<answer>(.+)</answer>\s*$", re.DOTALL)

# The paper's MATH scores.
BAD_FORMAT, NO_BOX, WRONG_ANSWER, RIGHT_ANSWER = -2.0, -1.0, -0.5, 2.0


def warmup_answer_block(completion: str) -> str | None:
    """The text between ``<answer>`` and ``</answer>`` (not stripped) if ``completion`` has the paper's
    format (see the module docstring), else ``None`` (the paper's -2)."""
    if not (completion.count("</think>") == 1 and completion.count("<answer>") == 1
            and completion.count("</answer>") == 1):
        return None
    m = _FORMAT_RE.search(completion)
    return None if m is None else m.group(1)


def warmup_math_gold(value: Any, field_name: str = "answer") -> str | None:
    """The gold the paper compares against: the last ``\\boxed{..}`` of a text that has one (the paper
    took ``last_boxed_only_string(solution)`` of MATH-lighteval); a bare final answer (``"7"``,
    ``"\\frac{1}{2}"``, ``" \\$ 54.60"``) wrapped as ``\\boxed{answer}``, which is what that box holds.
    ``None`` when a text names a box whose braces never close."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"example field {field_name!r} must hold strings or numbers, got {type(value).__name__}")
    text = str(value)
    if "\\boxed" in text or "\\fbox" in text:
        return last_boxed_only_string(text)
    return "\\boxed{" + text + "}"


def _golds(fields: dict[str, Any], n: int, gold_field: str | None) -> tuple[str, list[Any]]:
    if gold_field is not None:
        if gold_field not in fields:
            raise ValueError(f"warmup_math reads the gold from the example field {gold_field!r}, which is "
                             f"missing (got fields: {sorted(fields)})")
        name = gold_field
    elif "solution" in fields:
        name = "solution"
    elif "answer" in fields:
        name = "answer"
    else:
        raise ValueError("warmup_math needs the gold in the example field 'solution' (a MATH solution with a "
                         "\\boxed{} answer) or 'answer' (the bare final answer), or name it with gold_field=...; "
                         f"got fields: {sorted(fields)}")
    return name, _field(fields, name, n)


def warmup_math_reward(
    *,
    timeout: float | None = None,
    gold_field: str | None = None,
    pool: CheckerPool | None = None,
) -> RewardFn:
    """Builds ``warmup_math``, the paper's single MATH reward (range [-2, 2], see the module docstring).

    Args:
      timeout: seconds per answer check, or None for math-verify's own limits (5 s per parse and per
        verify); a check that times out or raises scores -0.5, as math-verify's caught failure
        (``parse`` -> ``[]``, ``verify`` -> False) did in the paper's reward.
      gold_field: field holding the gold (:func:`warmup_math_gold`); default ``solution``, else ``answer``.
      pool: worker pool; default the process-wide one.

    A gold whose box never closes scores -0.5 for every well-formatted boxed completion (the paper's
    ``parse(None)`` matched nothing), with a warning.
    """

    def warmup_math(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        name, raw = _golds(fields, len(texts), gold_field)
        golds = [warmup_math_gold(v, name) for v in raw]
        scores: list[float] = []
        todo: list[tuple[int, str, str]] = []  # (index, boxed answer, gold)
        for i, (text, gold) in enumerate(zip(texts, golds)):
            block = warmup_answer_block(text)
            boxed = None if block is None else last_boxed_only_string(block)
            if block is None:
                scores.append(BAD_FORMAT)
            elif boxed is None:
                scores.append(NO_BOX)
            else:
                scores.append(WRONG_ANSWER)
                if gold is None:
                    logger.warning("warmup_math: the gold of completion %d (field %r) has no closed \\boxed{}; "
                                   "scored -0.5, as the paper's reward did", i, name)
                else:
                    todo.append((i, boxed, gold))
        if todo:
            verdicts = answer_verdicts([b for _, b, _ in todo], [g for _, _, g in todo], mode="warmup",
                                       timeout=timeout, pool=pool)
            for (i, _, _), v in zip(todo, verdicts):
                if v == CORRECT:
                    scores[i] = RIGHT_ANSWER
        return scores

    warmup_math.__name__ = warmup_math.__qualname__ = "warmup_math"
    warmup_math.correct_at = RIGHT_ANSWER  # the value that means a correct completion (held-out accuracy)
    return warmup_math
