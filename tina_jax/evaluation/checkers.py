"""Graders of the evaluation protocols: each returns, per completion, ``(correct, extracted)``.

- ``math``: math-verify exactly as lighteval's extractive match graded Tina / Open-RS / open-r1
  [shangshang-wang/Tina scripts/eval/run_eval_custom_tasks.py latex_gold_metric / expr_gold_metric;
  huggingface/lighteval metrics/dynamic_metrics.py multilingual_extractive_match_metric]:
  the gold parsed with ``LatexExtractionConfig()`` (``latex`` golds) or ``ExprExtractionConfig()``
  (``expr`` / ``gsm8k`` golds), first match; the completion parsed with
  ``[ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)]`` (``\\boxed{}`` first),
  ``fallback_mode="first_match"``, ``extraction_mode="any_match"``; ``verify(gold, pred,
  float_rounding=5)`` (the custom tasks' ``precision=5``). Runs in the killable worker pool of
  :mod:`tina_jax.rewards.pool`: a pathological completion costs at most ``timeout`` and scores 0.
- ``gsm8k_strict``: verl's strict GSM8K check (the last ``#### <number>`` of the last 300 characters,
  string equality with the gold) [volcengine/verl verl/utils/reward_score/gsm8k.py], as TinyLoRA.
- ``kk``: Logic-RL's answer check [Unakar/Logic-RL verl/utils/reward_score/kk.py]: the response
  (the prompt's pre-filled ``<think>`` included) passes the structure check and the last
  ``<answer>`` block states every gold person's role correctly (the ``+2`` answer score).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

__all__ = ["math_check", "gsm8k_check", "kk_check", "grade"]

_FALLBACK = (0, None, True)


@lru_cache(maxsize=1)
def _math_configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    pred = [ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)]
    return pred, {"latex": [LatexExtractionConfig()], "expr": [ExprExtractionConfig()],
                  "gsm8k": [ExprExtractionConfig()]}


def math_check(completion: str, gold: str, gold_kind: str, step_timeout: int = 5) -> tuple[int, str | None, bool]:
    """Worker side: ``(correct, extracted answer or None, gold parsed)`` as lighteval grades."""
    from math_verify import parse, verify

    pred_cfg, gold_cfgs = _math_configs()
    gold_parsed = parse(gold, extraction_config=gold_cfgs[gold_kind], fallback_mode="first_match",
                        extraction_mode="first_match", parsing_timeout=step_timeout)
    pred = parse(completion, extraction_config=pred_cfg, fallback_mode="first_match",
                 extraction_mode="any_match", parsing_timeout=step_timeout)
    extracted = str(pred[-1]) if pred else None
    if not gold_parsed:
        return 0, extracted, False
    ok = bool(pred) and verify(gold_parsed, pred, float_rounding=5, timeout_seconds=step_timeout)
    return int(ok), extracted, True


def gsm8k_check(completion: str, gold: str) -> tuple[int, str | None]:
    from tina_jax.rewards.math import gsm8k_extract

    pred = gsm8k_extract(completion)
    return int(pred is not None and pred == gold), pred


def kk_check(completion: str, gold: str, prefix: str = "") -> tuple[int, str | None]:
    from tina_jax.rewards.puzzles import _ANSWER_RE, _structure_ok, parse_kk_answer, parse_solution_text_format

    response = prefix + completion
    matches = list(_ANSWER_RE.finditer(response))
    answer = matches[-1].group(1).strip() if matches else None
    if not _structure_ok(response) or not answer:
        return 0, answer
    want = parse_solution_text_format(gold)
    got = parse_kk_answer(answer, list(want))
    return int(got is not None and got == want), answer


def grade(checker: str, completions: Sequence[str], golds: Sequence[str], gold_kinds: Sequence[str], *,
          timeout: float = 10.0, prefix: str = "") -> tuple[list[int], list[str | None], int]:
    """``(correct, extracted, n_gold_unparsed)`` for aligned completions and golds."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    if checker == "gsm8k_strict":
        out = [gsm8k_check(c, g) for c, g in zip(completions, golds)]
        return [o[0] for o in out], [o[1] for o in out], 0
    if checker == "kk":
        out = [kk_check(c, g, prefix) for c, g in zip(completions, golds)]
        return [o[0] for o in out], [o[1] for o in out], 0
    if checker != "math":
        raise ValueError(f"unknown checker {checker!r}; one of math, gsm8k_strict, kk")
    from tina_jax.rewards.pool import get_pool

    step = max(1, int(timeout // 2))
    items: list[tuple[Any, ...]] = [(prefix + c, g, k, step) for c, g, k in zip(completions, golds, gold_kinds)]
    out = get_pool().map(math_check, items, timeout=timeout, fallback=_FALLBACK)
    return [int(o[0]) for o in out], [o[1] for o in out], sum(1 for o in out if not o[2])
