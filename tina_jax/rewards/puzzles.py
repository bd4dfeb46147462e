"""Knights & Knaves reward (``kk``): Logic-RL's scoring and the warm-up paper's.

The gold is the puzzle's ``solution_text_format`` (``"(1) Amelia is a knight\\n(2) Penelope is a
knave"``), read from the example field ``solution_text_format`` (the top-level field of Logic-RL's
data, data/kk/*.jsonl), else from ``reward_model[i]["ground_truth"]
["solution_text_format"]`` (verl's layout of the same files), or from ``gold_field`` if given (the
warm-up paper passed it as ``answer``). K&K's ``solution`` field is a list of booleans and is not
used.

Logic-RL scored ``prompt + response`` after cutting at the assistant header, so the ``<think>``
that its prompts end with (``<|im_start|>assistant\\n<think>``) counted toward the format check.
Rewards here see the completion only: pass ``prefix="<think>"`` when the prompt ends with
``<think>`` to score as Logic-RL did. (Logic-RL's cut at the first ``"Assistant:"`` inside a
response is not reproduced.)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from tina_jax.rewards.math import RewardFn, _field, _require_str_list
from tina_jax.rewards.warmup import warmup_answer_block

__all__ = [
    "kk_reward",
    "kk_score_logic_rl",
    "kk_score_warmup",
    "parse_kk_answer",
    "parse_solution_text_format",
]

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_GOLD_LINE_RE = re.compile(r"\b([A-Za-z]+)\b.*?\b(knight|knave)\b", re.IGNORECASE)


def parse_solution_text_format(solution_text: str) -> dict[str, str]:
    """Gold ``{name: "knight"|"knave"}``: per non-empty line, the first word and the first
    knight/knave after it [Unakar/Logic-RL verl/utils/reward_score/kk.py parse_solution_text_format]."""
    status: dict[str, str] = {}
    for line in solution_text.split("\n"):
        line = line.strip()
        if not line:
            continue
        m = _GOLD_LINE_RE.search(line)
        if m:
            status[m.group(1)] = m.group(2).lower()
    return status


def parse_kk_answer(answer_text: str, expected_names: list[str]) -> dict[str, str] | None:
    """The model's ``{name: role}``, or ``None`` if the answer does not name exactly one role per
    person (``knight`` + ``knave`` substring count must equal the number of names) or any name lacks
    a ``<Name> is a knight|knave`` statement (case-insensitive)
    [Unakar/Logic-RL verl/utils/reward_score/kk.py parse_model_answer]."""
    lower = answer_text.lower()
    if lower.count("knight") + lower.count("knave") != len(expected_names):
        return None
    status: dict[str, str] = {}
    for name in expected_names:
        m = re.search(rf"\b{re.escape(name)}\b\s+is\s+a\s+\b(knight|knave)\b", answer_text, re.IGNORECASE)
        if m is None:
            return None
        status[name] = m.group(1).lower()
    return status


def _structure_ok(text: str) -> bool:
    """Logic-RL's validate_response_structure: each of <think>, </think>, <answer>, </answer>
    exactly once, in that order."""
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if any(text.count(t) != 1 for t in tags):
        return False
    pos = [text.find(t) for t in tags]
    return pos[0] <= pos[1] <= pos[2] <= pos[3]


def kk_score_logic_rl(response: str, solution_text_format: str, format_reward: float = 1.0) -> float:
    """Logic-RL's compute_score on a response (RECIPES.md section 5).

    format: ``+format_reward`` if the structure check passes, else ``-|format_reward|``;
    answer (last ``<answer>`` block): +2 if every gold name is stated with the gold role, -1.5 if
    parsed but different, -2 if it cannot be parsed, the block is empty or the format failed.
    [Unakar/Logic-RL verl/utils/reward_score/kk.py compute_score]
    """
    gold = parse_solution_text_format(solution_text_format)
    matches = list(_ANSWER_RE.finditer(response))
    answer_text = matches[-1].group(1).strip() if matches else None
    format_ok = _structure_ok(response)
    format_score = format_reward if format_ok else -abs(format_reward)
    if format_ok and answer_text:
        pred = parse_kk_answer(answer_text, list(gold))
        if pred:
            answer_score = 2.0 if pred == gold else -1.5
        else:
            answer_score = -2.0
    else:
        answer_score = -2.0
    return float(format_score + answer_score)


def _warmup_table(text: str) -> dict[str, str]:
    """The warm-up paper's line parser: for each line of >= 2 space-separated tokens,
    ``{second token: last token}``, lower-cased ("(1) Amelia is a knight" -> amelia: knight)."""
    table: dict[str, str] = {}
    for line in text.split("\n"):
        sp = line.strip().split(" ")
        if not line or len(sp) < 2:
            continue
        table[sp[1].lower()] = sp[-1].lower()
    return table


def kk_score_warmup(completion: str, solution_text_format: str) -> float:
    """The warm-up paper's K&K reward (RECIPES.md section 7): -2 bad format
    (:func:`tina_jax.rewards.warmup.warmup_answer_block`), -1 if a name is not in the gold or a role
    mentions neither knight nor knave, +2 if the parsed table equals the gold's, else -0.5.
    [safal312/warmup-before-you-train train/dataset_loader.py load_kk reward_kk]
    """
    block = warmup_answer_block(completion)
    if block is None:
        return -2.0
    gold = _warmup_table(solution_text_format)
    pred = _warmup_table(block.strip())
    if any(name not in gold for name in pred):
        return -1.0
    if any("knight" not in role and "knave" not in role for role in pred.values()):
        return -1.0
    return 2.0 if pred == gold else -0.5


def _kk_golds(fields: dict[str, Any], n: int, gold_field: str | None) -> list[str]:
    if gold_field is not None:
        if gold_field not in fields:
            raise ValueError(f"kk reads the gold from the example field {gold_field!r}, which is missing "
                             f"(got fields: {sorted(fields)})")
        golds = _field(fields, gold_field, n)
    elif "solution_text_format" in fields:
        golds = _field(fields, "solution_text_format", n)
    elif "reward_model" in fields:
        golds = []
        for rm in _field(fields, "reward_model", n):
            try:
                golds.append(rm["ground_truth"]["solution_text_format"])
            except (KeyError, TypeError) as e:
                raise ValueError("example field 'reward_model' must be verl's "
                                 "{'ground_truth': {'solution_text_format': ...}}") from e
    else:
        raise ValueError(
            "kk needs the gold in the example field 'solution_text_format' (K&K data) or "
            f"'reward_model' (verl layout), or name it with gold_field=...; got fields: {sorted(fields)}"
        )
    for g in golds:
        if not isinstance(g, str):
            raise ValueError(f"K&K gold must be a string like '(1) Amelia is a knight', got {type(g).__name__}")
    return golds


def kk_reward(
    *,
    scoring: Literal["logic_rl", "warmup"] = "logic_rl",
    prefix: str = "",
    format_reward: float = 1.0,
    gold_field: str | None = None,
) -> RewardFn:
    """Builds ``kk``: :func:`kk_score_logic_rl` (format +-1 plus answer +2/-1.5/-2, range [-3, 3])
    or, with ``scoring="warmup"``, :func:`kk_score_warmup` (+2 / -0.5 / -1 / -2).

    Args:
      prefix: text prepended to each completion before scoring, e.g. ``"<think>"`` when the
        prompt ends with it (see the module docstring). Applies to both scorings.
      format_reward: Logic-RL's format score magnitude (its default 1).
      gold_field: field holding ``solution_text_format``; default: see the module docstring.
    """
    if scoring not in ("logic_rl", "warmup"):
        raise ValueError(f"scoring must be 'logic_rl' or 'warmup', got {scoring!r}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")

    def kk(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        golds = _kk_golds(fields, len(texts), gold_field)
        if scoring == "warmup":
            return [kk_score_warmup(prefix + t, g) for t, g in zip(texts, golds)]
        return [kk_score_logic_rl(prefix + t, g, format_reward) for t, g in zip(texts, golds)]

    kk.__name__ = kk.__qualname__ = "kk"
    return kk
