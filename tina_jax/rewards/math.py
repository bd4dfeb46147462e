"""Answer-checking rewards: math-verify accuracy (open-r1 lineage) and verl's strict GSM8K check.

Every reward here is a plain function ``(completions: list[str], **example_fields) -> list[float]``
whose ``__name__`` is the reward's name; example fields arrive as lists aligned with
``completions`` (as TRL and open-r1 pass them) and unknown fields are ignored.

math-verify runs only in the worker processes of :mod:`tina_jax.rewards.pool` (imported lazily
there), never in the caller, so a pathological completion costs at most ``timeout`` seconds.

Gold text (:func:`gold_texts`): the ``solution`` field, as open-r1 passes it (a full solution whose
``\\boxed{}`` holds the answer, or any text math-verify can parse). If there is no ``solution``
field but an ``answer`` field (a bare final answer, e.g. ``"7"``, ``"\\frac{1}{2}"``, ``142.0``), it
is wrapped as ``\\boxed{answer}`` unless it already contains ``\\boxed`` or ``$``: a bare ``7`` is
not found by ``LatexExtractionConfig`` alone (it needs ``$..$`` or ``\\boxed{}``), and ``\\boxed{}``
keeps braces and dollar signs inside the answer intact where ``$answer$`` would not.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Literal, Sequence

from tina_jax.rewards.pool import CheckerPool, get_pool

__all__ = [
    "CORRECT",
    "GOLD_UNPARSEABLE",
    "MATH_VERIFY_TIMEOUT",
    "VERIFY_FAILED",
    "WRONG",
    "accuracy_reward",
    "answer_verdicts",
    "check_answer",
    "gold_texts",
    "gsm8k_extract",
    "gsm8k_gold",
    "gsm8k_strict_reward",
    "last_boxed_only_string",
]

RewardFn = Callable[..., list[float]]

# Verdicts returned by check_answer / answer_verdicts.
CORRECT = 1
WRONG = 0
GOLD_UNPARSEABLE = -1
VERIFY_FAILED = -2  # verify raised or timed out ("tina" mode only; Tina's reward returned None there)

# math-verify's own limits: parse(parsing_timeout=5) and verify(timeout_seconds=5), each a signal.alarm.
MATH_VERIFY_TIMEOUT = 5

# How gold is parsed and in which order verify() gets its arguments (verify is not symmetric).
#   "tina":    parse(gold) with math-verify's default [LatexExtractionConfig(), ExprExtractionConfig()],
#              verify(gold, answer)       [shangshang-wang/Tina, tina/post_train_hf/rewards.py accuracy_reward]
#   "open_r1": parse(gold, [LatexExtractionConfig()]), verify(answer, gold)
#              [huggingface/open-r1 src/open_r1/rewards.py accuracy_reward, len_reward,
#               get_cosine_scaled_reward; Open-RS uses this accuracy_reward]
#   "lenient": gold as "tina"; the answer as open-r1 extracts it, else the last plain number of the
#              text ("so the sum is 57." counts); verify(gold, answer). For small models that never box
#              their answer (the CPU default recipe).
#   "warmup":  the completion argument is already the answer (a "\boxed{..}" string); both it and the
#              gold parsed with math-verify's defaults, verify(answer, gold)
#              [safal312/warmup-before-you-train train/dataset_loader.py load_math reward_correct:
#               verify(parse(ext_string), parse(gt))]. Used by tina_jax.rewards.warmup, not an
#              accuracy flavour.
CheckMode = Literal["tina", "open_r1", "lenient", "warmup"]
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_LENIENT_TAIL = 1000  # characters searched for the last number
_FLAVOURS = ("tina", "open_r1", "lenient")  # accuracy_reward's flavours
_CHECK_MODES = (*_FLAVOURS, "warmup")


def _require_str_list(completions: Any) -> list[str]:
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise ValueError(
            f"completions must be a list of strings (decoded completion texts), got {type(completions).__name__}"
        )
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            raise ValueError(
                f"completions[{i}] is a {type(c).__name__}, expected str: pass the decoded completion text, "
                "not chat messages or token ids"
            )
    return list(completions)


def _field(fields: dict[str, Any], name: str, n: int) -> list[Any]:
    """``fields[name]`` checked to be a list aligned with ``n`` completions."""
    values = fields[name]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"example field {name!r} must be a list with one entry per completion, "
                         f"got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"example field {name!r} has {len(values)} entries for {n} completions; "
                         "repeat each example's field once per completion")
    return list(values)


def _wrap_answer(value: Any, field_name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"example field {field_name!r} must hold strings or numbers, got {type(value).__name__} "
                         f"({value!r:.80})")
    text = str(value)
    if "\\boxed" in text or "$" in text:
        return text
    return "\\boxed{" + text + "}"


def gold_texts(fields: dict[str, Any], n: int, gold_field: str | None = None) -> list[str]:
    """The gold text for each of ``n`` completions, from the example fields.

    Args:
      fields: the example fields passed to the reward (``solution=[...]``, ``answer=[...]``, ...).
      n: number of completions.
      gold_field: a field to read as is; ``None`` means ``solution``, else ``answer`` wrapped as
        ``\\boxed{answer}`` (see the module docstring).

    Raises ValueError naming the field when it is missing or misaligned.
    """
    if gold_field is not None:
        if gold_field not in fields:
            raise ValueError(f"this reward reads the gold answer from the example field {gold_field!r}, "
                             f"which is missing (got fields: {sorted(fields)})")
        values = _field(fields, gold_field, n)
        for v in values:
            if not isinstance(v, str):
                raise ValueError(f"example field {gold_field!r} must hold strings, got {type(v).__name__}")
        return values
    if "solution" in fields:
        values = _field(fields, "solution", n)
        for v in values:
            if not isinstance(v, str):
                raise ValueError(f"example field 'solution' must hold strings, got {type(v).__name__}; "
                                 "K&K's list-of-bools 'solution' belongs to the kk reward")
        return values
    if "answer" in fields:
        return [_wrap_answer(v, "answer") for v in _field(fields, "answer", n)]
    raise ValueError(
        "this reward needs the gold answer in the example field 'solution' (open-r1's name: the "
        "reference solution text) or 'answer' (a bare final answer); neither was passed "
        f"(got fields: {sorted(fields)})"
    )


# ----------------------------------------------------------------------------------------------
# Worker side: runs inside the pool's processes.


@lru_cache(maxsize=2)
def _configs(boxed: str | bool = "all") -> tuple[Any, Any, Any]:
    """(answer config, gold config "tina", gold config "open_r1"), built once per worker.

    ``boxed`` is the answer's ``NormalizationConfig(boxed=...)``: open-r1's accuracy (and Tina's) pass
    ``"all"``, open-r1's cosine and len rewards pass ``True`` (which latex2sympy2_extended >= 1.0.6 treats
    as neither "all" nor "last": the normalisation then leaves ``\\boxed``/``\\fbox`` in place)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # open-r1's answer extraction: only well-formed LaTeX, \boxed{} first, and an anchor
    # ("final answer is", \boxed{}, ...) is required.
    answer_cfg = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False,
                malformed_operators=False,
                basic_latex=True,
                equations=True,
                boxed=boxed,
                units=True,
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    return answer_cfg, [LatexExtractionConfig(), ExprExtractionConfig()], [LatexExtractionConfig()]


_GOLD_CACHE: dict[tuple[str, str], list] = {}
_GOLD_CACHE_MAX = 4096


def _parse_gold(gold: str, mode: str, step_timeout: int) -> list:
    """Parsed gold, cached per worker (the G completions of a prompt share it). Empty parses are
    not cached: under load a parse can time out, and that must not stick."""
    from math_verify import parse

    key = (gold, mode)
    if key in _GOLD_CACHE:
        return _GOLD_CACHE[key]
    if mode == "warmup":  # math-verify's defaults: both configs, extraction_mode="any_match"
        parsed = parse(gold, parsing_timeout=step_timeout)
    else:
        _, gold_tina, gold_open_r1 = _configs()
        cfg = gold_open_r1 if mode == "open_r1" else gold_tina
        parsed = parse(gold, extraction_config=cfg, extraction_mode="first_match", parsing_timeout=step_timeout)
    if parsed:
        if len(_GOLD_CACHE) >= _GOLD_CACHE_MAX:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[key] = parsed
    return parsed


def check_answer(completion: str, gold: str, mode: str = "open_r1", step_timeout: int = MATH_VERIFY_TIMEOUT,
                 boxed: str | bool = "all") -> int:
    """math-verify verdict for one completion: ``CORRECT``, ``WRONG``, ``GOLD_UNPARSEABLE`` or (mode
    "tina") ``VERIFY_FAILED`` when ``verify`` raises or times out, where Tina's reward returned None.

    Runs the open-r1 / Tina accuracy check [huggingface/open-r1 src/open_r1/rewards.py
    accuracy_reward; shangshang-wang/Tina tina/post_train_hf/rewards.py]: gold parsed first (an
    empty parse means ``GOLD_UNPARSEABLE``), then the completion with open-r1's answer config,
    then ``verify`` (argument order per ``mode``, see ``CheckMode``).

    ``step_timeout`` (whole seconds, >= 1) is math-verify's own ``signal.alarm`` limit per parse
    and per comparison, a first line of defence; the pool's process kill is the hard limit. Meant
    to run in a pool worker (the main thread of its process, where ``signal.alarm`` works).
    ``boxed``: the answer's normalisation config, see ``_configs``.
    """
    from math_verify import parse, verify

    if mode not in _CHECK_MODES:
        raise ValueError(f"mode must be one of {_CHECK_MODES}, got {mode!r}")
    gold_parsed = _parse_gold(gold, mode, step_timeout)
    if len(gold_parsed) == 0:
        return GOLD_UNPARSEABLE
    if mode == "warmup":
        answer_parsed = parse(completion, parsing_timeout=step_timeout)
        return CORRECT if verify(answer_parsed, gold_parsed, timeout_seconds=step_timeout) else WRONG
    answer_parsed = parse(completion, extraction_config=_configs(boxed)[0], extraction_mode="first_match",
                          parsing_timeout=step_timeout)
    if mode == "lenient" and not answer_parsed:
        # No boxed/anchored answer: the last plain number of the text. Not math-verify's unanchored
        # expression search, which would credit a restated question ("94 + 43 =" parses as 137).
        numbers = _NUMBER_RE.findall(completion[-_LENIENT_TAIL:])
        if not numbers:
            return WRONG
        answer_parsed = parse(f"${numbers[-1].replace(',', '')}$", extraction_config=_configs()[1],
                              parsing_timeout=step_timeout)
    if mode == "tina":
        try:  # Tina: `float(verify(gold, answer))` in a try; an exception (a timeout included) gives None
            ok = verify(gold_parsed, answer_parsed, timeout_seconds=step_timeout, raise_on_error=True)
        except Exception:  # noqa: BLE001 - any failure of the check, as Tina caught it
            return VERIFY_FAILED
    elif mode == "lenient":
        ok = verify(gold_parsed, answer_parsed, timeout_seconds=step_timeout)
    else:
        ok = verify(answer_parsed, gold_parsed, timeout_seconds=step_timeout)
    return CORRECT if ok else WRONG


# ----------------------------------------------------------------------------------------------
# Caller side.


def _limits(timeout: float | None) -> tuple[int, float]:
    """(math-verify's per-call alarm, the pool's per-item budget). ``None``: math-verify's own 5 s per
    parse and per verify, and a budget of 4 x 5 s (gold parse, answer parse, verify, margin). A number:
    that budget per item, and half of it (whole seconds, at least 1) per call."""
    if timeout is None:
        return MATH_VERIFY_TIMEOUT, 4.0 * MATH_VERIFY_TIMEOUT
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None (math-verify's own), got {timeout!r}")
    return max(1, int(timeout // 2)), float(timeout)


def answer_verdicts(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    mode: CheckMode = "open_r1",
    timeout: float | None = None,
    pool: CheckerPool | None = None,
    checker: Callable[..., int] = check_answer,
    boxed: str | bool = "all",
) -> list[int]:
    """Checks each completion against its gold in the worker pool.

    Args:
      completions, golds: aligned lists of texts.
      mode: gold parsing / verify order, ``"tina"``, ``"open_r1"``, ``"lenient"`` or ``"warmup"``.
      timeout: seconds per item, or None for math-verify's own limits (see ``_limits``); an item that
        times out or whose check raises counts as ``WRONG`` (``VERIFY_FAILED`` in mode "tina"), logged
        as a warning.
      pool: the pool to use; default :func:`tina_jax.rewards.pool.get_pool`.
      checker: the (picklable, module-level) check function; :func:`check_answer` unless testing.
      boxed: the answer normalisation's ``boxed`` (``"all"``: open-r1's accuracy; ``True``: its cosine
        and len rewards).

    Returns one verdict per completion: ``CORRECT`` (1), ``WRONG`` (0), ``GOLD_UNPARSEABLE`` (-1) or
    ``VERIFY_FAILED`` (-2, mode "tina" only). Mode ``"warmup"`` (see ``CheckMode``) expects the
    extracted answer in place of the completion.
    """
    if mode not in _CHECK_MODES:
        raise ValueError(f"mode must be one of {_CHECK_MODES}, got {mode!r}")
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    step, budget = _limits(timeout)
    pool = pool if pool is not None else get_pool()
    items = [(c, g, mode, step, boxed) for c, g in zip(completions, golds)]
    return pool.map(checker, items, timeout=budget, fallback=VERIFY_FAILED if mode == "tina" else WRONG)


def accuracy_reward(
    flavour: Literal["tina", "open_r1", "lenient"] = "tina",
    *,
    on_unparseable_gold: Literal["skip", "one"] | None = None,
    timeout: float | None = None,
    gold_field: str | None = None,
    pool: CheckerPool | None = None,
) -> RewardFn:
    """Builds the ``accuracy`` reward: 1.0 if math-verify finds the completion's answer equal to
    the gold, else 0.0 (RECIPES.md section 5).

    Args:
      flavour: ``"tina"`` (Tina's accuracy_reward: gold parsed with math-verify's default
        LaTeX + expression extraction, ``verify(gold, answer)``) or ``"open_r1"`` (open-r1's /
        Open-RS's: gold parsed with ``LatexExtractionConfig()`` only, ``verify(answer, gold)``).
        The completion is parsed the same way in both: ``LatexExtractionConfig(NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed="all",
        units=True), boxed_match_priority=0, try_extract_without_anchor=False)``, so it needs a
        ``\\boxed{}`` or an anchored LaTeX answer ("final answer is $..$"). ``"lenient"``: gold as
        in "tina"; the completion as above, else its last plain number (a restated "a + b" does not
        count), ``verify(gold, answer)``; for small models that never box their answers.
      on_unparseable_gold: what a completion scores when the gold cannot be parsed.
        ``"skip"`` (Tina: the reward returned ``None``; TRL turned it into NaN and left it out of
        the weighted sum) gives ``float("nan")``; :func:`tina_jax.rewards.combine` treats NaN as
        "no reward" (contributes 0 to the total). ``"one"`` (open-r1 / Open-RS) gives 1.0.
        Default: ``"one"`` for ``flavour="open_r1"``, ``"skip"`` otherwise.
      timeout: seconds per completion, or None (default) for math-verify's own limits (5 s per parse
        and per verify). A check that raises or times out scores NaN ("no reward", as Tina's None) in
        the "tina" flavour, 0.0 otherwise (open-r1 / Open-RS caught it as 0.0); a warning is logged.
      gold_field: see :func:`gold_texts` (default: ``solution``, else ``answer``).
      pool: worker pool; default the process-wide one.

    Returns ``accuracy(completions, **fields) -> list[float]``.
    """
    if flavour not in _FLAVOURS:
        raise ValueError(f"flavour must be one of {_FLAVOURS}, got {flavour!r}")
    if on_unparseable_gold is None:
        on_unparseable_gold = "one" if flavour == "open_r1" else "skip"
    if on_unparseable_gold not in ("skip", "one"):
        raise ValueError(f"on_unparseable_gold must be 'skip' or 'one', got {on_unparseable_gold!r}")
    no_gold = float("nan") if on_unparseable_gold == "skip" else 1.0

    def accuracy(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        golds = gold_texts(fields, len(texts), gold_field)
        verdicts = answer_verdicts(texts, golds, mode=flavour, timeout=timeout, pool=pool)
        return [no_gold if v == GOLD_UNPARSEABLE else float("nan") if v == VERIFY_FAILED else float(v == CORRECT)
                for v in verdicts]

    accuracy.__name__ = accuracy.__qualname__ = "accuracy"
    return accuracy


# ----------------------------------------------------------------------------------------------
# The MATH dataset's answer extraction [hendrycks/math modeling/math_equivalence.py; the copy in
# safal312/warmup-before-you-train train/custom_MATH_reward.py, which its MATH reward uses].


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` of ``text`` with balanced braces (``"\\boxed{\\frac{1}{2}}"``), else the
    last ``\\fbox{...}``; ``None`` if there is none or its braces never close.

    Kept as the MATH code has it: if ``"\\boxed "`` (a space, no brace) occurs anywhere, the result
    is ``"\\boxed "`` + the text after its last occurrence up to the next ``$``, even when a braced box
    follows; the scan after ``\\boxed`` takes the first brace group that closes (``"\\boxedx}{1}"``
    gives ``None``).
    """
    if not isinstance(text, str):
        raise ValueError(f"last_boxed_only_string expects a string, got {type(text).__name__}")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


# ----------------------------------------------------------------------------------------------
# GSM8K strict [volcengine/verl verl/utils/reward_score/gsm8k.py, as in jxmorris12/verl-lora].

_GSM8K_RE = re.compile("#### (\\-?[0-9\\.\\,]+)")
_GSM8K_CLIP_CHARS = 300


def gsm8k_extract(text: str, clip_chars: int = _GSM8K_CLIP_CHARS) -> str | None:
    """verl's strict extraction: the last ``#### <number>`` in the last ``clip_chars`` characters,
    with ``,`` and ``$`` removed; ``None`` if there is none."""
    if len(text) > clip_chars:
        text = text[-clip_chars:]
    found = _GSM8K_RE.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").replace("$", "")


def gsm8k_gold(answer: Any) -> str:
    """The gold string verl compares against: for a raw GSM8K ``answer`` (rationale ending in
    ``#### 72``) the first ``#### <number>`` with commas removed, as verl's
    examples/data_preprocess/gsm8k.py does; any other value as ``str(value)``."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise ValueError(f"GSM8K gold must be a string or int, got {type(answer).__name__}")
    text = str(answer)
    m = _GSM8K_RE.search(text)
    if m is None:
        return text
    return m.group(0).split("#### ")[1].replace(",", "")


def gsm8k_strict_reward(
    *,
    score: float = 1.0,
    format_score: float = 0.0,
    clip_chars: int = _GSM8K_CLIP_CHARS,
    gold_field: str = "answer",
) -> RewardFn:
    """Builds the ``gsm8k_strict`` reward of TinyLoRA's GSM8K runs (RECIPES.md section 5):
    ``score`` if verl's strict extraction (:func:`gsm8k_extract`) equals the gold string exactly,
    ``format_score`` if an answer was extracted but differs, 0.0 if none was found
    [volcengine/verl verl/utils/reward_score/gsm8k.py compute_score, method="strict"].

    The gold comes from ``gold_field`` (default ``answer``: GSM8K's raw answer or the bare number),
    reduced by :func:`gsm8k_gold`.
    """

    def gsm8k_strict(completions: list[str], **fields: Any) -> list[float]:
        texts = _require_str_list(completions)
        if gold_field not in fields:
            raise ValueError(f"gsm8k_strict reads the gold answer from the example field {gold_field!r}, "
                             f"which is missing (got fields: {sorted(fields)})")
        golds = [gsm8k_gold(a) for a in _field(fields, gold_field, len(texts))]
        out = []
        for text, gold in zip(texts, golds):
            pred = gsm8k_extract(text, clip_chars)
            out.append(0.0 if pred is None else float(score if pred == gold else format_score))
        return out

    gsm8k_strict.__name__ = gsm8k_strict.__qualname__ = "gsm8k_strict"
    return gsm8k_strict
