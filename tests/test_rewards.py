"""Tests for tina_jax.rewards: known-case tables per reward, the checker pool under adversarial
input, the registry and the combiner.

Expected values are written by hand or computed from the published formula on lengths/counts
known by construction, never by calling the code under test. One CheckerPool (2 workers) serves
the whole module; adversarial tests use a 1 s timeout.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest

import tina_jax.rewards as R
from tina_jax.rewards import CheckerPool

DATA = Path(__file__).resolve().parents[1] / "data" / "kk"  # the K&K test sets shipped in data/
NAN = float("nan")
TIMEOUT = 1.0  # per item, adversarial tests
SLACK = 2.5  # seconds on top of the timeout (CPU shared with other jobs)


@pytest.fixture(scope="module")
def pool():
    p = CheckerPool(num_workers=2)
    p.start(wait=True)  # workers import math-verify once; later timings exclude start-up
    assert p.map(R.check_answer, [("\\boxed{1}", "$1$", "open_r1", 1, "all")] * 2, timeout=60, fallback=None) == [1, 1]
    yield p
    p.close()


def _same(got, want, tol=1e-9):
    """Elementwise equality with NaN == NaN; returns the mismatching indices."""
    bad = []
    for i, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, float) and math.isnan(w):
            if not (isinstance(g, float) and math.isnan(g)):
                bad.append(i)
        elif not (isinstance(g, float) and abs(g - w) <= tol):
            bad.append(i)
    return bad


# ---------------------------------------------------------------------------------------------
# accuracy: (gold field, gold, completion, expected) for flavour "tina" unless a row says otherwise.

B = "\\boxed"
ACCURACY_CASES = [
    # fractions and decimals
    ("solution", "$\\frac{1}{2}$", "The answer is $\\boxed{0.5}$", 1.0),
    ("solution", "$0.5$", B + "{\\dfrac{1}{2}}", 1.0),
    ("solution", "$\\frac{1}{2}$", B + "{\\tfrac{1}{2}}", 1.0),
    ("solution", "$\\frac{1}{2}$", B + "{1/2}", 1.0),
    ("solution", "$\\frac{1}{2}$", B + "{\\frac{2}{4}}", 1.0),
    ("solution", "$\\frac{1}{2}$", B + "{\\frac{1}{3}}", 0.0),
    ("solution", "$\\dfrac{3}{4}$", B + "{\\frac{3}{4}}", 1.0),
    ("solution", "$-\\frac{1}{2}$", B + "{-0.5}", 1.0),
    ("solution", "$\\frac{1}{3}$", B + "{0.333}", 0.0),  # compared at 6 decimals
    ("solution", "$\\frac{1}{3}$", B + "{0.333333}", 1.0),
    ("solution", "$3$", B + "{3.0}", 1.0),
    # AIME leading zeros
    ("solution", "$7$", B + "{007}", 1.0),
    ("solution", "007", B + "{7}", 1.0),  # bare gold: Tina parses it with expression extraction
    # boxed variants
    ("solution", "$5$", B + " {5}", 0.0),  # math-verify only anchors on "\boxed{"
    ("solution", "$5$", "\\fbox{5}", 0.0),  # not an answer anchor for extraction
    ("solution", "$5$", B + "{\\boxed{5}}", 1.0),
    ("solution", "$5$", B + "{5}\n\nFinal: " + B + "{5}", 1.0),  # the same box twice
    ("solution", "$5$", B + "{5} and also " + B + "{3}", 0.0),  # two boxes read as the set {3, 5}
    ("solution", "$12$", "The answer is " + B + "{12}. Wait, actually " + B + "{13}", 0.0),
    ("solution", "$5$", B + "{5.}", 0.0),
    # lists, sets, intervals, points
    ("solution", "$1, 2$", B + "{1, 2}", 1.0),
    ("solution", "$1,2$", B + "{2, 1}", 1.0),
    ("solution", "$\\{1,2\\}$", B + "{1}, " + B + "{2}", 1.0),
    ("solution", "$1,2,3$", B + "{1,2}", 0.0),
    ("solution", "$(1, 2]$", B + "{(1,2]}", 1.0),
    ("solution", "$(1, 2]$", B + "{[1,2]}", 0.0),
    ("solution", "$[0, \\infty)$", B + "{[0,\\infty)}", 1.0),
    ("solution", "$x \\in [2, 5]$", B + "{[2,5]}", 1.0),
    ("solution", "$(3,4)$", B + "{(4,3)}", 0.0),
    # units, percentages, money
    ("solution", "$5$", B + "{5 \\text{ cm}}", 1.0),
    ("solution", "$5 \\text{ cm}$", B + "{5}", 1.0),
    ("solution", "$50\\%$", B + "{0.5}", 1.0),
    ("solution", "$50\\%$", B + "{50}", 1.0),  # math-verify accepts the number without %
    ("solution", "$10\\%$", B + "{10\\%}", 1.0),
    ("solution", "$18.90$", B + "{\\$18.90}", 1.0),
    # signs, roots, pi, powers, algebra
    ("solution", "$-3$", B + "{-3}", 1.0),
    ("solution", "$-3$", B + "{3}", 0.0),
    ("solution", "$2\\sqrt{2}$", B + "{\\sqrt{8}}", 1.0),
    ("solution", "$\\frac{\\sqrt{3}}{2}$", B + "{\\frac{\\sqrt{3}}{2}}", 1.0),
    ("solution", "$\\sqrt{2}$", B + "{\\sqrt2}", 0.0),  # malformed LaTeX is not repaired (open-r1)
    ("solution", "$\\frac12$", "$" + B + "{\\frac12}$", 0.0),  # idem
    ("solution", "$\\pi$", B + "{3.14159265}", 1.0),
    ("solution", "$\\pi$", B + "{3.14}", 0.0),
    ("solution", "$2\\pi$", B + "{2 \\pi}", 1.0),
    ("solution", "$\\frac{\\pi}{2}$", B + "{90^\\circ}", 0.0),
    ("solution", "$10^{3}$", B + "{1000}", 1.0),
    ("solution", "$1000$", B + "{1,000}", 1.0),
    ("solution", "$x^2+2x+1$", B + "{(x+1)^2}", 1.0),
    ("solution", "$x=2$", B + "{2}", 1.0),
    ("solution", "$2$", B + "{x=2}", 1.0),
    ("solution", "$\\infty$", B + "{\\infty}", 1.0),
    # where the answer is (needs \boxed or an anchor), empty and answer-less text
    ("solution", "$5$", "The answer is 5.", 0.0),
    ("solution", "$5$", "The final answer is $5$", 1.0),
    ("solution", "$\\frac{1}{2}$", "So the result is $\\frac{1}{2}$.", 0.0),
    ("solution", "$3$", "**Final Answer**\n\\[" + B + "{3}\\]", 1.0),
    ("solution", "$3$", "<think>\n...\n</think>\n<answer>" + B + "{3}</answer>", 1.0),
    ("solution", "$5$", "", 0.0),
    ("solution", "$5$", "no answer here", 0.0),
    # full solutions as gold (open-r1's "solution" field)
    ("solution", "Adding gives $\\boxed{5}$.", B + "{5}", 1.0),
    ("solution", "The answer is \\boxed{\\frac{3}{4}}.", "so " + B + "{0.75}", 1.0),
    # unparseable gold: Tina skips (NaN)
    ("solution", "no math here", B + "{5}", NAN),
    ("solution", "", B + "{5}", NAN),
    # the 'answer' field, wrapped as \boxed{answer}
    ("answer", "7", B + "{7}", 1.0),
    ("answer", "7", B + "{8}", 0.0),
    ("answer", 142.0, B + "{142}", 1.0),  # AMC answers are floats
    ("answer", "\\frac{1}{2}", B + "{0.5}", 1.0),
    ("answer", "$\\frac{1}{2}$", B + "{0.5}", 1.0),  # already delimited: used as is
]

# open-r1 / Open-RS flavour: gold must be LaTeX, verify(answer, gold), unparseable gold -> 1.0.
ACCURACY_OPEN_R1_CASES = [
    ("solution", "$\\frac{1}{2}$", B + "{0.5}", 1.0),
    ("solution", "$7$", B + "{007}", 1.0),
    ("solution", "$-3$", B + "{3}", 0.0),
    ("solution", "7", B + "{8}", 1.0),  # bare "7" is not LaTeX: unparseable gold -> 1.0
    ("solution", "no math here", B + "{5}", 1.0),
    ("answer", "7", B + "{8}", 0.0),  # wrapped in \boxed{}: parseable
    ("answer", "7", B + "{7}", 1.0),
]


def _run_accuracy(fn, rows):
    """Calls ``fn`` once per gold field on all rows using it; returns values in row order."""
    got = [None] * len(rows)
    for field in ("solution", "answer"):
        idx = [i for i, r in enumerate(rows) if r[0] == field]
        if idx:
            out = fn([rows[i][2] for i in idx], **{field: [rows[i][1] for i in idx]}, unused=[0] * len(idx))
            for i, v in zip(idx, out):
                got[i] = v
    return got


def test_accuracy_table(pool):
    assert len(ACCURACY_CASES) >= 40
    got = _run_accuracy(R.accuracy_reward(pool=pool), ACCURACY_CASES)
    bad = _same(got, [r[3] for r in ACCURACY_CASES])
    assert not bad, [(ACCURACY_CASES[i], got[i]) for i in bad]


def test_accuracy_open_r1_flavour(pool):
    got = _run_accuracy(R.accuracy_reward("open_r1", pool=pool), ACCURACY_OPEN_R1_CASES)
    bad = _same(got, [r[3] for r in ACCURACY_OPEN_R1_CASES])
    assert not bad, [(ACCURACY_OPEN_R1_CASES[i], got[i]) for i in bad]


LENIENT_CASES = [
    # (completion, gold, expected): the final number counts without \\boxed{} or an anchor
    ("The answer is 156.", "$156$", 1.0),
    ("75 + 81 = 156", "$156$", 1.0),
    ("So the sum is 156. This is a classic example.", "$156$", 1.0),
    ("16 + 77 = 111\n\nThis is a classic example.", "$93$", 0.0),
    ("\\boxed{93}", "$93$", 1.0),
    ("no number here", "$93$", 0.0),
    ("", "$93$", 0.0),
    ("The result is 0.5", "$\\frac{1}{2}$", 1.0),
    ("To add 94 and 43 we get 94 + 43 = ", "$137$", 0.0),  # a restated question is not an answer
    ("The total is 1,234 apples.", "$1234$", 1.0),
    ("It is -7", "$-7$", 1.0),
]


def test_accuracy_lenient_flavour(pool):
    fn = R.accuracy_reward(flavour="lenient", pool=pool)
    got = fn([c for c, _, _ in LENIENT_CASES], solution=[g for _, g, _ in LENIENT_CASES])
    assert got == [e for _, _, e in LENIENT_CASES]
    strict = R.accuracy_reward(flavour="tina", pool=pool)(["The answer is 156."], solution=["$156$"])
    assert strict == [0.0]  # the strict flavours need \\boxed{} or an anchor


def test_accuracy_gold_policy_override(pool):
    one = R.accuracy_reward("tina", on_unparseable_gold="one", pool=pool)
    skip = R.accuracy_reward("open_r1", on_unparseable_gold="skip", pool=pool)
    assert one([B + "{5}"], solution=["no math"]) == [1.0]
    assert math.isnan(skip([B + "{5}"], solution=["no math"])[0])
    with pytest.raises(ValueError, match="on_unparseable_gold"):
        R.accuracy_reward(on_unparseable_gold="zero")
    with pytest.raises(ValueError, match="flavour"):
        R.accuracy_reward("trl")


def test_accuracy_solution_wins_over_answer(pool):
    acc = R.accuracy_reward(pool=pool)
    assert acc([B + "{3}", B + "{4}"], solution=["$3$", "$3$"], answer=["4", "4"]) == [1.0, 0.0]
    assert acc([B + "{4}"], gold=["$4$"], solution=["$3$"]) == [0.0]
    assert R.accuracy_reward(gold_field="gold", pool=pool)([B + "{4}"], gold=["$4$"], solution=["$3$"]) == [1.0]


def test_accuracy_bad_fields():
    acc = R.accuracy_reward()
    with pytest.raises(ValueError, match="'solution'.*'answer'"):
        acc([B + "{1}"], problem=["1+0"])
    with pytest.raises(ValueError, match="'solution' has 1 entries for 2 completions"):
        acc(["a", "b"], solution=["$1$"])
    with pytest.raises(ValueError, match="completions\\[0\\] is a list"):
        acc([[{"role": "assistant", "content": "x"}]], solution=["$1$"])
    with pytest.raises(ValueError, match="'gold'"):
        R.accuracy_reward(gold_field="gold")(["x"], solution=["$1$"])
    with pytest.raises(ValueError, match="strings or numbers"):
        acc(["x"], answer=[[1, 2]])
    assert R.accuracy_reward()([], solution=[]) == []


# ---------------------------------------------------------------------------------------------
# format and tag_count: texts built from k copies of a tag between tag-free fillers.

FILL = ["", "abc", "Let x = 2.", "think > 3 </ b", " ", "\n\n"]


def _join(parts, fillers):
    out = fillers[0]
    for i, p in enumerate(parts):
        out += p + fillers[(i + 1) % len(fillers)]
    return out


def test_format_table():
    cases = []
    for k in range(6):  # occurrences of "\n</think>\n"
        for f in range(len(FILL)):
            text = _join(["\n</think>\n"] * k, FILL[f:] + FILL[:f])
            cases.append((text, 1.0 if k == 1 else 0.0))
    cases += [
        ("</think>\n", 0.0),  # no newline before
        ("\n</think>", 0.0),  # no newline after
        ("<think>\nx\n</think>\n<answer>5</answer>", 1.0),
        ("\n</think>\n</think>\n", 1.0),  # the second tag shares the first one's newline
        ("\n</think>\n\n</think>\n", 0.0),
        ("\n</THINK>\n", 0.0),
        ("\r\n</think>\r\n", 0.0),
        ("", 0.0),
    ]
    assert len(cases) >= 40
    got = R.format_reward([c for c, _ in cases], solution=["x"] * len(cases))
    assert got == [w for _, w in cases]
    assert R.format_reward.__name__ == "format"


def test_tag_count_table():
    cases = []
    for a in range(3):  # "<think>\n" count
        for b in range(3):  # "\n</think>\n" count
            for f in range(5):
                fill = FILL[f:] + FILL[:f]
                fill = [x.replace("\n", " ") for x in fill]  # keep fillers tag- and newline-free
                text = _join(["<think>\n"] * a + ["\n</think>\n"] * b, fill)
                cases.append((text, 0.5 * (a == 1) + 0.5 * (b == 1)))
    cases += [("<think>x</think>", 0.0), ("<think>\n\n</think>\n", 1.0), ("<think>\n<think>\n\n</think>\n", 0.5)]
    assert len(cases) >= 40
    assert R.tag_count_reward([c for c, _ in cases]) == [w for _, w in cases]
    assert R.tag_count_reward.__name__ == "tag_count"


# ---------------------------------------------------------------------------------------------
# reasoning_steps: k markers joined by marker-free text -> min(1, k / 3).

MARKERS = ["Step 1:", "\n- a", "\n* b", "First,", "Second,", "Next,", "Finally,", "Step 23:"]


def test_reasoning_steps_table():
    cases = []
    for k in range(len(MARKERS) + 1):
        for rot in range(5):
            ms = (MARKERS[rot:] + MARKERS[:rot])[:k]
            text = "We compute " + " then ".join(ms) + " done"
            cases.append((text, min(1.0, k / 3)))
    cases += [
        ("1. a\n2. b\n3. c", 1 / 3),  # "^\d+\." matches only at the start (no MULTILINE)
        ("step 1: lower case", 0.0),
        ("Step one: words", 0.0),
        ("first, lower case", 0.0),
        ("x\n-5 is negative", 1 / 3),
        ("", 0.0),
    ]
    assert len(cases) >= 40
    got = R.reasoning_steps_reward([c for c, _ in cases])
    assert not _same(got, [w for _, w in cases]), list(zip(got, cases))
    assert R.reasoning_steps_reward.__name__ == "reasoning_steps"


# ---------------------------------------------------------------------------------------------
# repetition_penalty: m words cycling through p distinct words have m - n + 1 n-grams of which
# min(p, m - n + 1) are distinct -> (1 - distinct / total) * max_penalty.


def test_repetition_penalty_table():
    words = ["alpha", "Beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    cases = []  # (ngram, max_penalty, text, expected)
    for n, pen in [(3, -1.0), (2, -0.5), (4, -2.0)]:
        for p in (1, 2, 3, 5):
            for m in (n, n + 1, 9, 20):
                text = " ".join(words[i % p] for i in range(m))
                total = m - n + 1
                cases.append((n, pen, text, (1 - min(p, total) / total) * pen))
    cases += [
        (3, -1.0, "", 0.0),
        (3, -1.0, "two words", 0.0),
        (3, -1.0, "a A a", 0.0),  # one 3-gram
        (3, -1.0, "a A a A", -0.5),  # case-insensitive: 2 identical 3-grams
        (3, -1.0, "a\tb\nc  a b c", -0.25),  # any whitespace splits; 4 3-grams, 3 distinct
    ]
    assert len(cases) >= 40
    for n, pen in {(c[0], c[1]) for c in cases}:
        rows = [c for c in cases if c[:2] == (n, pen)]
        fn = R.repetition_penalty_reward(ngram_size=n, max_penalty=pen)
        assert fn.__name__ == "repetition_penalty"
        got = fn([r[2] for r in rows])
        assert not _same(got, [r[3] for r in rows], tol=1e-12), (n, pen, got, rows)
    with pytest.raises(ValueError, match="should not be positive"):
        R.repetition_penalty_reward(max_penalty=0.5)


# ---------------------------------------------------------------------------------------------
# cosine: correct answers "\boxed{5}" and wrong ones "\boxed{6}" padded to exact lengths.


def _pad(text, n):
    assert len(text) <= n
    return text + "x" * (n - len(text))


def test_cosine_value_formula():
    # correct: 0.5 + 0.25 (1 + cos(pi L / M)); wrong: -0.5 + 0.25 (1 + cos(pi L / M))
    for frac, cos in [(0, 1.0), (1 / 3, 0.5), (0.5, 0.0), (2 / 3, -0.5), (1, -1.0)]:
        assert R.cosine_value(frac * 120, True, max_len=120) == pytest.approx(0.5 + 0.25 * (1 + cos), abs=1e-12)
        assert R.cosine_value(frac * 120, False, max_len=120) == pytest.approx(-0.5 + 0.25 * (1 + cos), abs=1e-12)


def test_cosine_table(pool):
    M = 120
    # (length, correct, clamp, expected); cos(pi L/M) at L/M = 1/3, 1/2, 2/3, 1, 4/3, 2 is
    # 0.5, 0, -0.5, -1, -0.5, 1.
    rows = []
    for L, cos_raw in [(40, 0.5), (60, 0.0), (80, -0.5), (120, -1.0), (160, -0.5), (240, 1.0), (30, math.sqrt(2) / 2)]:
        for clamp in (True, False):
            cos = -1.0 if clamp and L > M else cos_raw
            rows.append((L, True, clamp, 0.5 + 0.25 * (1 + cos)))
            rows.append((L, False, clamp, -0.5 + 0.25 * (1 + cos)))
    # hand-written values
    rows += [(0, False, True, 0.0), (0, False, False, 0.0), (120, True, True, 0.5), (240, True, True, 0.5),
             (240, True, False, 1.0), (240, False, False, 0.0), (160, False, False, -0.375),
             (9, True, True, 0.5 + 0.25 * (1 + math.cos(math.pi * 9 / 120)))]
    assert len(rows) >= 30
    texts = [("" if L == 0 else _pad(B + ("{5}" if ok else "{6}"), L)) for L, ok, _, _ in rows]
    for clamp in (True, False):
        idx = [i for i, r in enumerate(rows) if r[2] == clamp]
        fn = R.cosine_reward(max_len=M, clamp=clamp, pool=pool)
        assert fn.__name__ == "cosine"
        got = fn([texts[i] for i in idx], solution=["$5$"] * len(idx))
        assert not _same(got, [rows[i][3] for i in idx], tol=1e-12), (got, [rows[i] for i in idx])


def test_cosine_options(pool):
    # open-r1's factory defaults (wrong from -1.0 short to -0.5 long), tokens unit, gold policy
    cases = []  # (fn kwargs, text, fields, expected)
    M = 100
    short_wrong, long_wrong = _pad(B + "{6}", 10), _pad(B + "{6}", 100)
    cases.append((dict(min_value_wrong=-1.0, max_value_wrong=-0.5), short_wrong, {},
                  -0.5 + 0.5 * (-0.5) * (1 + math.cos(math.pi * 0.1))))
    cases.append((dict(min_value_wrong=-1.0, max_value_wrong=-0.5), long_wrong, {}, -0.5))
    words = B + "{5} " + "w " * 49  # 50 whitespace-separated words
    cases.append((dict(length_unit="tokens", length_fn=lambda t: len(t.split())), words, {}, 0.75))
    cases.append((dict(length_unit="tokens"), B + "{5}", {"completion_lengths": [50]}, 0.75))
    cases.append((dict(length_unit="tokens", length_fn=len), B + "{5}", {"completion_lengths": [100]}, 0.5))
    cases.append((dict(), B + "{5}", {"solution": ["no math"]}, 1.0))
    cases.append((dict(on_unparseable_gold="skip"), B + "{5}", {"solution": ["no math"]}, NAN))
    for kw, text, fields, want in cases:
        fields = {"solution": ["$5$"], **fields}
        got = R.cosine_reward(max_len=M, pool=pool, **kw)([text], **fields)
        assert not _same(got, [want], tol=1e-12), (kw, text, got, want)
    with pytest.raises(ValueError, match="needs token counts"):
        R.cosine_reward(length_unit="tokens", pool=pool)(["x"], solution=["$1$"])
    with pytest.raises(ValueError, match="length_unit"):
        R.cosine_reward(length_unit="words")
    with pytest.raises(ValueError, match="need length_unit='tokens'"):
        R.cosine_reward(length_fn=len)


class _WordTokenizer:
    """Stands in for a Hugging Face tokenizer: one id per whitespace-separated word."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": list(range(len(text.split())))}


def test_cosine_tokenizer(pool):
    fn = R.cosine_reward(max_len=100, length_unit="tokens", tokenizer=_WordTokenizer(), pool=pool)
    got = fn([B + "{5} " + "w " * 49, B + "{6} " + "w " * 99], solution=["$5$", "$5$"])
    assert got == pytest.approx([0.75, -0.5], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# length (Kimi 1.5): lambda = 0.5 - (L - Lmin) / (Lmax - Lmin); wrong -> min(0, lambda).


def test_length_table(pool):
    # groups of (length, correct, expected) written by hand
    groups = [
        [(10, True, 0.5), (20, True, 0.0), (30, True, -0.5)],
        [(10, False, 0.0), (20, False, 0.0), (30, False, -0.5)],
        [(10, True, 0.5), (15, False, 0.0), (20, True, 0.25), (50, False, -0.5)],
        [(12, True, 0.0), (12, False, 0.0), (12, True, 0.0)],  # equal lengths -> zeros
        [(10, False, 0.0), (60, True, -0.5), (35, True, 0.0), (45, True, -0.2)],
        [(100, True, -0.5), (20, True, 0.5), (40, False, 0.0), (60, True, -0.0), (80, False, -0.25)],
        [(9, True, 0.5), (9, True, 0.5), (109, False, -0.5), (59, True, 0.0), (34, False, 0.0)],
    ]
    fn = R.length_reward(group_size=None, pool=pool)
    assert fn.__name__ == "length"
    n_cases = 0
    per_group_texts = []
    for g in groups:
        texts = [_pad(B + ("{5}" if ok else "{6}"), int(L)) for L, ok, _ in g]
        per_group_texts.append(texts)
        got = fn(texts, solution=["$5$"] * len(g))
        assert not _same(got, [w for _, _, w in g], tol=1e-12), (g, got)
        n_cases += len(g)
    # group_size: the same groups of 3 in one call give the same values as separate calls
    g3 = [g for g in groups if len(g) == 3]
    fn3 = R.length_reward(group_size=3, pool=pool)
    texts = [t for g, ts in zip(groups, per_group_texts) if len(g) == 3 for t in ts]
    got = fn3(texts, solution=["$5$"] * len(texts))
    assert not _same(got, [w for g in g3 for _, _, w in g], tol=1e-12)
    n_cases += len(texts)
    # open-r1 (group_size=None) over the same 9 completions: Lmin 10, Lmax 30 overall
    got = fn(texts, solution=["$5$"] * len(texts))
    # L = 12 -> 0.5 - 2/20 = 0.4 (kept when correct, min(0, 0.4) = 0 when wrong)
    want = [0.5, 0.0, -0.5, 0.0, 0.0, -0.5, 0.4, 0.0, 0.4]
    assert not _same(got, want, tol=1e-12), got
    n_cases += len(texts)
    # unparseable gold counts as correct
    got = fn([_pad(B + "{6}", 10), _pad(B + "{6}", 30)], solution=["no math", "no math"])
    assert got == [0.5, -0.5]
    n_cases += 2
    assert n_cases >= 40
    with pytest.raises(ValueError, match="not a multiple of group_size=3"):
        fn3(["a", "b"], solution=["$1$", "$1$"])
    assert fn([], solution=[]) == []


# ---------------------------------------------------------------------------------------------
# gsm8k_strict (verl): "#### <number>" in the last 300 characters, string equality.

GSM8K_CASES = [
    ("#### 72", "72", 1.0),
    ("So the total is 72.\n#### 72", "72", 1.0),
    ("####72", "72", 0.0),  # needs the space
    ("#### 72.0", "72", 0.0),  # string equality, not numeric
    ("#### 72.", "72", 0.0),
    ("#### 1,000", "1000", 1.0),  # commas stripped from the prediction
    ("#### 1,000", "1,000", 0.0),  # ...and the gold is compared as given
    ("#### $72", "72", 0.0),  # "$" before the number: no match
    ("#### 72$", "72", 1.0),
    ("#### -5", "-5", 1.0),
    ("#### -5", "5", 0.0),
    ("#### 5 then #### 7", "7", 1.0),  # the last match
    ("#### 5 then #### 7", "5", 0.0),
    ("The answer is 72", "72", 0.0),
    ("", "72", 0.0),
    ("#### seventy-two", "72", 0.0),
    ("#### 72" + "x" * 294, "72", 0.0),  # 301 chars: the last 300 start "### 72", no match
    ("#### 72" + "x" * 293, "72", 1.0),  # exactly 300 chars: kept whole
    ("#### 72" + "x" * 400, "72", 0.0),  # the answer lies before the last 300 chars
    ("y" * 1000 + "#### 72", "72", 1.0),
    ("#### 3.5", "3.5", 1.0),
    ("#### .5", ".5", 1.0),
    ("#### 0.50", "0.5", 0.0),
    ("#### 1,2,3", "123", 1.0),
    ("#### 72\n#### 73", "73", 1.0),
    ("#### 72 dollars", "72", 1.0),
    ("**#### 72**", "72", 1.0),
    ("# 72", "72", 0.0),
    ("###  72", "72", 0.0),
    ("#### #### 72", "72", 1.0),
    # raw GSM8K gold (rationale + "#### N") is reduced like verl's preprocessing
    ("#### 18", "Janet sells 9 eggs.\n#### 18", 1.0),
    ("#### 1234", "So...\n#### 1,234", 1.0),
    ("#### 1,234", "So...\n#### 1,234", 1.0),
    ("#### 17", "So...\n#### 18", 0.0),
    ("#### 18", 18, 1.0),  # int gold
    ("#### -3", "#### -3", 1.0),
    ("#### 10", "10.0", 0.0),
    ("answer: 10", "10", 0.0),
    ("####\n10", "10", 0.0),
    ("#### 5,", "5", 1.0),  # the trailing comma is captured then stripped
]


def test_gsm8k_strict_table():
    assert len(GSM8K_CASES) >= 40
    fn = R.gsm8k_strict_reward()
    assert fn.__name__ == "gsm8k_strict"
    got = fn([c for c, _, _ in GSM8K_CASES], answer=[g for _, g, _ in GSM8K_CASES])
    bad = [i for i, (g, (_, _, w)) in enumerate(zip(got, GSM8K_CASES)) if g != w]
    assert not bad, [(GSM8K_CASES[i], got[i]) for i in bad]
    assert R.gsm8k_strict_reward(format_score=0.1)(["#### 1", "none"], answer=["2", "2"]) == [0.1, 0.0]
    with pytest.raises(ValueError, match="'answer'"):
        fn(["#### 1"], solution=["1"])


# ---------------------------------------------------------------------------------------------
# kk: answers built from the K&K data's `names` and boolean `solution` (independent of the
# `solution_text_format` string that the reward parses).


def _kk_examples():
    out = []
    for n in (3, 4, 5, 6, 7):
        with open(DATA / f"{n}ppl_test.jsonl") as f:
            for _, line in zip(range(2), f):
                out.append(json.loads(line))
    return out


def _kk_answer(names, roles):
    return "\n".join(f"({i + 1}) {n} is a {'knight' if r else 'knave'}" for i, (n, r) in enumerate(zip(names, roles)))


def test_kk_data_fields():
    ex = _kk_examples()[0]
    assert ex["solution_text_format"] == _kk_answer(ex["names"], ex["solution"])
    assert ex["reward_model"]["ground_truth"]["solution_text_format"] == ex["solution_text_format"]


def test_kk_table_logic_rl_and_warmup():
    logic, warm = R.kk_reward(), R.kk_reward(scoring="warmup")
    assert logic.__name__ == warm.__name__ == "kk"
    rows = []  # (completion, gold, expected logic_rl, expected warmup)
    for ex in _kk_examples():
        names, sol, gold = ex["names"], ex["solution"], ex["solution_text_format"]
        right = _kk_answer(names, sol)
        flipped = _kk_answer(names, [not sol[0]] + sol[1:])
        dropped = _kk_answer(names[:-1], sol[:-1])
        rows.append((f"<think>reasoning</think>\n<answer>{right}</answer>", gold, 3.0, 2.0))
        rows.append((f"<think>reasoning</think>\n<answer>{flipped}</answer>", gold, -0.5, -0.5))
        # one person missing: Logic-RL counts roles (mismatch -> unparseable, -2); warm-up
        # compares tables (different -> -0.5)
        rows.append((f"<think>r</think><answer>{dropped}</answer>", gold, -1.0, -0.5))
        # no "<think>": Logic-RL's format fails (-1) and the answer is not scored (-2)
        rows.append((f"reasoning</think><answer>{right}</answer>", gold, -3.0, 2.0))
    assert len(rows) >= 40
    got_l = logic([r[0] for r in rows], solution_text_format=[r[1] for r in rows])
    got_w = warm([r[0] for r in rows], solution_text_format=[r[1] for r in rows])
    assert got_l == [r[2] for r in rows]
    assert got_w == [r[3] for r in rows]


KK_GOLD = "(1) Amelia is a knight\n(2) Penelope is a knight\n(3) Evelyn is a knave"
KK_RIGHT = "(1) Amelia is a knight\n(2) Penelope is a knight\n(3) Evelyn is a knave"

KK_HAND_CASES = [
    # (completion, logic_rl, warmup)
    (f"<think>x</think><answer>{KK_RIGHT}</answer>", 3.0, 2.0),
    (f"<think>x</think><answer>{KK_RIGHT.upper()}</answer>", 3.0, 2.0),  # both lower-case
    (f"<think>x</think>\n\n<answer>\n{KK_RIGHT}\n</answer>\n", 3.0, 2.0),
    (f"<think>x</think><answer>Amelia is a knight, Penelope is a knight, Evelyn is a knave.</answer>", 3.0, -1.0),
    (f"<think>x</think><answer>(1) Amelia is a knight.\n(2) Penelope is a knight.\n(3) Evelyn is a knave.</answer>",
     3.0, -0.5),
    (f"<think>x</think><answer>(1) Amelia is knight\n(2) Penelope is a knight\n(3) Evelyn is a knave</answer>",
     -1.0, 2.0),
    (f"<think>x</think><answer>(1) Amelia is a liar\n(2) Penelope is a knight\n(3) Evelyn is a knave</answer>",
     -1.0, -1.0),
    # Logic-RL: "knights" counts as a 4th role; warm-up: the line's 2nd word "knights?" is no name
    (f"<think>x</think><answer>All knights? {KK_RIGHT}</answer>", -1.0, -1.0),
    (f"<think>x</think><answer></answer>", -1.0, -2.0),
    (f"<think>x</think><answer>{KK_RIGHT}</answer> trailing", 3.0, -2.0),
    (f"<think>x</think><answer>a</answer><answer>{KK_RIGHT}</answer>", -3.0, -2.0),
    (f"<answer>{KK_RIGHT}</answer><think>x</think>", -3.0, -2.0),
    (f"<think>x<think></think><answer>{KK_RIGHT}</answer>", -3.0, 2.0),
    (f"</think><answer>{KK_RIGHT}</answer>", -3.0, -2.0),
    (f"<think>x</think>{KK_RIGHT}", -3.0, -2.0),
    ("", -3.0, -2.0),
]


def test_kk_hand_cases():
    logic, warm = R.kk_reward(), R.kk_reward(scoring="warmup")
    texts = [c for c, _, _ in KK_HAND_CASES]
    assert logic(texts, solution_text_format=[KK_GOLD] * len(texts)) == [c[1] for c in KK_HAND_CASES]
    assert warm(texts, solution_text_format=[KK_GOLD] * len(texts)) == [c[2] for c in KK_HAND_CASES]


def test_kk_prefix_gold_fields_and_errors():
    body = f"reasoning</think><answer>{KK_RIGHT}</answer>"
    assert R.kk_reward(prefix="<think>")([body], solution_text_format=[KK_GOLD]) == [3.0]
    assert R.kk_reward()([body], solution_text_format=[KK_GOLD]) == [-3.0]
    rm = [{"ground_truth": {"solution_text_format": KK_GOLD}, "style": "rule"}]
    assert R.kk_reward(prefix="<think>")([body], reward_model=rm, solution=[[True, True, False]]) == [3.0]
    assert R.kk_reward(scoring="warmup", gold_field="answer")([body], answer=[KK_GOLD]) == [2.0]
    assert R.kk_reward(format_reward=0.5)([body], solution_text_format=[KK_GOLD]) == [-2.5]
    with pytest.raises(ValueError, match="solution_text_format"):
        R.kk_reward()([body], solution=[[True, True, False]])
    with pytest.raises(ValueError, match="scoring"):
        R.kk_reward(scoring="strict")


# ---------------------------------------------------------------------------------------------
# warmup_math: the warm-up paper's MATH reward [safal312/warmup-before-you-train train/dataset_loader.py
# load_math reward_correct]. Completions start after the prompt's pre-filled "<think>". Expected values
# follow the paper's formula by hand: -2 unless </think>, <answer>, </answer> occur once each and the
# text matches `.+</think>\s*<answer>(.+)</answer>\s*$`; -1 if the answer block has no closed \boxed{}
# (or \fbox{}); else +2 if verify(parse(last box), parse(gold box)), -0.5 if not.

LAST_BOXED_CASES = [
    ("a " + B + "{1} b " + B + "{\\frac{1}{2}} c", B + "{\\frac{1}{2}}"),
    ("x " + B + "{{1}{2}}", B + "{{1}{2}}"),
    ("\\fbox{3}", "\\fbox{3}"),
    (B + "{a} then \\fbox{b}", B + "{a}"),  # \boxed wins over a later \fbox
    (B + "{3", None),  # never closes
    ("no box here", None),
    ("", None),
    (B + " 5$ and " + B + "{6}", B + " 5"),  # the space form wins wherever it is, cut at "$"
    (B + "{6} then " + B + " 7", B + " 7"),
    (B + "x}{1}", None),  # "}" before any "{": the brace count never returns to 0
]


def test_last_boxed_only_string():
    for text, want in LAST_BOXED_CASES:
        assert R.last_boxed_only_string(text) == want, text


WM_CASES = [
    # (completion, gold answer field, expected)
    ("reasoning</think><answer>" + B + "{7}</answer>", "7", 2.0),
    ("reasoning</think>\n\n<answer> The answer is $" + B + "{7}$. </answer>\n", "7", 2.0),
    ("reasoning</think> <answer> so " + B + "{8} </answer>", "7", -0.5),
    ("r</think><answer>" + B + "{\\frac{14}{2}}</answer>", "7", 2.0),
    ("r</think><answer>" + B + "{0.5}</answer>", "\\frac{1}{2}", 2.0),
    ("r</think><answer>" + B + "{3} no, " + B + "{7}</answer>", "7", 2.0),  # the last box counts
    ("r</think><answer>" + B + "{7} no, " + B + "{3}</answer>", "7", -0.5),
    ("r</think><answer>" + B + "{54.60}</answer>", " \\$ 54.60", 2.0),
    # the argument order: verify(answer, gold); math-verify accepts x<2 for the gold (-inf, 2), not the reverse
    ("r</think><answer>" + B + "{x<2}</answer>", "(-\\infty,2)", 2.0),
    ("r</think><answer>" + B + "{(-\\infty,2)}</answer>", "x<2", -0.5),
    # no closed box in the answer block: -1
    ("r</think><answer>7</answer>", "7", -1.0),
    ("r</think><answer> </answer>", "7", -1.0),  # one space is an answer block
    ("r</think><answer>" + B + "{7</answer>", "7", -1.0),
    (B + "{7} r</think><answer>7</answer>", "7", -1.0),  # a box outside the answer block does not count
    # bad format: -2
    ("r</think><answer>" + B + "{7}</answer> and more", "7", -2.0),
    ("r<answer>" + B + "{7}</answer>", "7", -2.0),
    ("</think><answer>" + B + "{7}</answer>", "7", -2.0),  # nothing before </think>
    ("r</think><answer></answer>", "7", -2.0),  # empty answer block
    ("a</think>b</think><answer>" + B + "{7}</answer>", "7", -2.0),
    ("r</think><answer>a</answer><answer>" + B + "{7}</answer>", "7", -2.0),
    ("r</think>x<answer>" + B + "{7}</answer>", "7", -2.0),  # text between </think> and <answer>
    ("r</think><answer>" + B + "{7}", "7", -2.0),
    ("", "7", -2.0),
]


def test_warmup_math_table(pool):
    fn = R.warmup_math_reward(pool=pool, timeout=30)
    assert fn.__name__ == "warmup_math" and fn.correct_at == 2.0
    got = fn([c for c, _, _ in WM_CASES], answer=[g for _, g, _ in WM_CASES], unused=[0] * len(WM_CASES))
    assert got == [w for _, _, w in WM_CASES], [(c, g, w) for (c, _, w), g in zip(WM_CASES, got) if g != w]


def test_warmup_math_matches_math_verify_called_as_the_paper_did(pool):
    """Well-formatted completions score 2 exactly when math-verify, called as the paper's reward called it
    (``verify(parse(last box), parse(gold box))``, default configurations), says equal; -0.5 otherwise."""
    from math_verify import parse, verify

    pairs = [  # (answer box content, gold answer)
        ("7", "7"), ("007", "7"), ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("0.75", "\\frac34"), ("1, 2", "2, 1"),
        ("(1,2]", "(1, 2]"), ("[1,2]", "(1, 2]"), ("\\sqrt{8}", "2\\sqrt{2}"), ("x=2", "2"), ("2", "x = 2"),
        ("50\\%", "0.5"), ("\\text{A,C}", "\\text{A,C}"), ("A,C", "\\text{A,C}"), ("-3", "3"),
        ("(3,-2,-9)", "(3,-2,-9)"), ("x^2+4x+1", "x^2 + 4x + 1"), ("\\pi", "3.14"), ("1/2", "\\frac12"),
    ]
    want = [2.0 if verify(parse(B + "{" + a + "}"), parse(B + "{" + g + "}")) else -0.5 for a, g in pairs]
    assert 3 <= want.count(-0.5) <= len(pairs) - 3  # the oracle separates right from wrong here
    fn = R.warmup_math_reward(pool=pool, timeout=30)
    got = fn([f"r</think><answer>{B}{{{a}}}</answer>" for a, _ in pairs], answer=[g for _, g in pairs])
    assert got == want, [(p, g, w) for p, g, w in zip(pairs, got, want) if g != w]


def test_warmup_math_gold_fields(pool, caplog):
    fn = R.warmup_math_reward(pool=pool, timeout=30)
    right = "r</think><answer>" + B + "{\\frac{1}{2}}</answer>"
    # a MATH solution: its last box is the gold (the paper's last_boxed_only_string(solution))
    sol = "First $" + B + "{3}$ is not it; in the end $" + B + "{\\dfrac{1}{2}}$."
    assert fn([right], solution=[sol], answer=["3"]) == [2.0]  # solution wins over answer, as in accuracy
    assert R.warmup_math_reward(pool=pool, timeout=30, gold_field="answer")([right], solution=[sol],
                                                                            answer=["3"]) == [-0.5]
    assert fn([right], answer=[0.5]) == [2.0]  # numbers are read as text
    assert R.warmup_math_gold("7") == B + "{7}"
    assert R.warmup_math_gold(sol, "solution") == B + "{\\dfrac{1}{2}}"
    with caplog.at_level(logging.WARNING, logger="tina_jax.rewards.warmup"):
        assert fn([right, "r</think><answer>x</answer>"], solution=[B + "{1"] * 2) == [-0.5, -1.0]
    assert any("no closed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="'solution'.*'answer'"):
        fn([right], problem=["p"])
    with pytest.raises(ValueError, match="field 'target', which is missing"):
        R.warmup_math_reward(gold_field="target")([right], answer=["1"])
    with pytest.raises(ValueError, match="one entry per completion|entries for"):
        fn([right, right], answer=["1"])


def test_warmup_math_check_that_times_out_scores_wrong(pool):
    fn = R.warmup_math_reward(pool=pool, timeout=TIMEOUT)
    pool.start(wait=True)
    slow = "r</think><answer>" + B + "{" + "1+" * 1_500_000 + "1}</answer>"
    got, dt = _timed(fn, [slow, "r</think><answer>" + B + "{2}</answer>"], answer=["5", "2"])
    assert got == [-0.5, 2.0]
    assert dt < 2 * TIMEOUT + SLACK


# ---------------------------------------------------------------------------------------------
# The checker pool under adversarial input.


def _raising_checker(completion, gold, mode, step, boxed):
    raise RuntimeError("checker exploded")


def _sleeping_checker(completion, gold, mode, step, boxed):
    if completion == "hang":
        time.sleep(60)  # the parent must kill the worker
    return R.CORRECT


def _timed(fn, *args, **kwargs):
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t


@pytest.mark.parametrize(
    "name, completion",
    [
        ("power tower", B + "{9^{9^{9^{9^{9}}}}}"),
        ("10k nested braces", B + "{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"),
        ("3 MB of text", ("Let us think about x^2 + y^2 = z^2 again. " * 75_000)[:3_000_000] + B + "{7}"),
        ("3 MB inside one box", B + "{" + "1+" * 1_500_000 + "1}"),
    ],
)
def test_adversarial_completion_scores_zero_within_timeout(pool, name, completion):
    acc = R.accuracy_reward("open_r1", timeout=TIMEOUT, pool=pool)
    pool.start(wait=True)  # replacements of workers killed by earlier tests: not part of the timing
    got, dt = _timed(acc, [completion], solution=["$5$"])
    assert got == [0.0], name
    assert dt < TIMEOUT + SLACK, (name, dt)


def test_checker_that_raises_scores_zero_with_warning(pool, caplog):
    pool.start(wait=True)
    with caplog.at_level(logging.WARNING, logger="tina_jax.rewards.pool"):
        out, dt = _timed(R.answer_verdicts, ["\\boxed{1}", "x"], ["$1$", "$1$"], timeout=TIMEOUT, pool=pool,
                         checker=_raising_checker)
    assert out == [R.WRONG, R.WRONG]
    assert dt < TIMEOUT + SLACK
    assert sum("checker exploded" in r.getMessage() for r in caplog.records) == 2


def test_stuck_worker_is_killed_and_pool_stays_usable(pool, caplog):
    pool.start(wait=True)
    before = set(pool.worker_pids)
    with caplog.at_level(logging.WARNING, logger="tina_jax.rewards.pool"):
        out, dt = _timed(R.answer_verdicts, ["ok", "hang", "ok", "ok"], ["g"] * 4, timeout=TIMEOUT, pool=pool,
                         checker=_sleeping_checker)
    assert out == [R.CORRECT, R.WRONG, R.CORRECT, R.CORRECT]  # results stay in their slots
    assert dt < TIMEOUT + SLACK
    assert any("timed out" in r.getMessage() for r in caplog.records)
    assert set(pool.worker_pids) != before  # the stuck worker was replaced
    # the replacement serves real checks
    acc = R.accuracy_reward(timeout=30, pool=pool)
    assert acc([B + "{0.5}", B + "{2}", B + "{\\frac12}"] * 2, solution=["$\\frac{1}{2}$"] * 6) == [1.0, 0.0, 0.0] * 2


def test_pool_validation_and_default_pool():
    with pytest.raises(ValueError, match="num_workers"):
        CheckerPool(num_workers=0)
    p = CheckerPool(num_workers=1)
    with pytest.raises(ValueError, match="timeout"):
        p.map(R.check_answer, [], timeout=0, fallback=None)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.map(R.check_answer, [], timeout=1, fallback=None)
    # the default pool is created lazily (no processes until used) and replaced after shutdown
    R.shutdown()  # earlier tests may have used (and so started) the current default pool
    a = R.get_pool()
    assert R.get_pool() is a and a.worker_pids == []
    assert 1 <= a.num_workers <= 4
    R.shutdown()
    assert R.get_pool() is not a
    R.shutdown()


# ---------------------------------------------------------------------------------------------
# Registry and combine.


def test_get_reward_registry():
    assert set(R.REWARD_NAMES) == {"accuracy", "format", "tag_count", "cosine", "length", "reasoning_steps",
                                   "repetition_penalty", "gsm8k_strict", "kk", "warmup_math"}
    for name in R.REWARD_NAMES:
        assert R.get_reward(name).__name__ == name
    assert R.get_reward("cosine", max_len=3584, length_unit="chars", clamp=True).__name__ == "cosine"
    with pytest.raises(ValueError, match="unknown reward 'accuracy_reward'"):
        R.get_reward("accuracy_reward")
    with pytest.raises(ValueError, match="takes no parameters"):
        R.get_reward("format", strict=True)
    with pytest.raises(ValueError, match="bad parameters for reward 'cosine'"):
        R.get_reward("cosine", max_length=10)


def test_combine_weights_nan_and_columns(pool):
    def const(name, values):
        def fn(completions, **fields):
            return list(values)
        fn.__name__ = name
        return fn

    comb = R.combine([(const("a", [1.0, NAN, 0.5, None]), 2.0), (const("b", [0.5, 1.0, NAN, None]), 1.0)])
    total, cols = comb(["w", "x", "y", "z"], solution=["1"] * 4)
    assert total == [2.5, 1.0, 1.0, 0.0]  # NaN / None: no contribution
    assert cols["a"][0] == 1.0 and math.isnan(cols["a"][1]) and math.isnan(cols["a"][3])
    assert list(cols) == ["a", "b"]
    # Tina's Open-RS2 recipe: format (1) + accuracy (2)
    comb = R.combine([(R.format_reward, 1.0), (R.accuracy_reward(pool=pool), 2.0)])
    texts = ["x\n</think>\n" + B + "{5}", "x\n</think>\n" + B + "{4}", B + "{5}", "\n</think>\n" + B + "{5}"]
    total, cols = comb(texts, solution=["$5$", "$5$", "$5$", "no math"])
    assert total == [3.0, 1.0, 2.0, 1.0]
    assert cols["format"] == [1.0, 1.0, 0.0, 1.0]
    assert cols["accuracy"][:3] == [1.0, 0.0, 1.0] and math.isnan(cols["accuracy"][3])
    with pytest.raises(ValueError, match="two rewards are named 'format'"):
        R.combine([(R.format_reward, 1.0), (R.format_reward, 2.0)])
    with pytest.raises(ValueError, match="finite number"):
        R.combine([(R.format_reward, "1")])
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        R.combine([(const("c", [1.0]), 1.0)])(["a", "b"])


# ---------------------------------------------------------------------------------------------
# Reference details of the answer check (issue 10).


def test_cosine_and_length_check_with_open_r1s_boxed_true_config():
    """open-r1's cosine/len rewards parse the answer with NormalizationConfig(boxed=True), its accuracy with
    boxed="all"; with latex2sympy2_extended >= 1.0.6 True means "leave \\boxed/\\fbox in place", which
    changes verdicts (math-verify run in-process here, as a worker runs it)."""
    gold = "$\\frac{1}{2}$"
    fbox, nested = "so the answer is $\\fbox{1/2}$", "the final answer is $\\frac{1}{\\boxed{2}}$"
    assert R.check_answer(fbox, gold, "open_r1", boxed="all") == R.CORRECT
    assert R.check_answer(fbox, gold, "open_r1", boxed=True) == R.WRONG
    assert R.check_answer(nested, gold, "open_r1", boxed="all") == R.WRONG
    assert R.check_answer(nested, gold, "open_r1", boxed=True) == R.CORRECT
    # the rewards use it: correct at length L -> 0.5 + 0.25 (1 + cos(pi L / max_len)), wrong -> -0.25 (1 - cos)
    got = R.cosine_reward(max_len=100)([fbox, nested], solution=[gold, gold])
    want = [R.cosine_value(len(fbox), False, max_len=100), R.cosine_value(len(nested), True, max_len=100)]
    assert got == pytest.approx(want, abs=1e-12)
    assert R.accuracy_reward("open_r1")([fbox, nested], solution=[gold, gold]) == [1.0, 0.0]


def test_tina_accuracy_is_nan_when_verify_raises_or_times_out(pool, monkeypatch):
    """Tina's accuracy_reward wrapped verify in try/except and returned None (TRL: NaN, left out of the nansum
    over reward functions); the open_r1 flavour caught it as 0.0."""
    import math_verify

    def boom(*a, **k):
        raise RuntimeError("verify exploded")

    monkeypatch.setattr(math_verify, "verify", boom)
    assert R.check_answer(B + "{1}", "$1$", "tina") == R.VERIFY_FAILED
    monkeypatch.undo()
    assert R.check_answer(B + "{1}", "$1$", "tina") == R.CORRECT
    pool.start(wait=True)
    out = R.answer_verdicts(["ok", "hang"], ["g", "g"], mode="tina", timeout=TIMEOUT, pool=pool,
                            checker=_sleeping_checker)
    assert out == [R.CORRECT, R.VERIFY_FAILED]
    out = R.answer_verdicts(["ok", "hang"], ["g", "g"], mode="open_r1", timeout=TIMEOUT, pool=pool,
                            checker=_sleeping_checker)
    assert out == [R.CORRECT, R.WRONG]
    # downstream: a NaN reward contributes nothing to the weighted total (TRL's nansum over functions)
    nan_acc = lambda completions, **f: [float("nan"), 1.0]  # noqa: E731
    nan_acc.__name__ = "accuracy"
    total, per = R.combine([(R.format_reward, 1.0), (nan_acc, 2.0)])(["a\n</think>\nb", "x"])
    assert total == [1.0, 2.0] and math.isnan(per["accuracy"][0])


def test_default_timeouts_are_math_verifys_own():
    import inspect

    import math_verify

    from tina_jax.rewards.math import _limits

    assert inspect.signature(math_verify.parse).parameters["parsing_timeout"].default == R.MATH_VERIFY_TIMEOUT
    assert inspect.signature(math_verify.verify).parameters["timeout_seconds"].default == R.MATH_VERIFY_TIMEOUT
    assert _limits(None) == (R.MATH_VERIFY_TIMEOUT, 4.0 * R.MATH_VERIFY_TIMEOUT)
    assert inspect.signature(R.accuracy_reward).parameters["timeout"].default is None
    assert inspect.signature(R.check_answer).parameters["step_timeout"].default == R.MATH_VERIFY_TIMEOUT


def test_length_reward_is_normalised_per_group_in_a_run():
    """Kimi-1.5 length reward: TRL called reward functions per device micro-batch (one group of G in the paper
    recipes), so L_min/L_max are per group. Two groups of 2: 'x'*10 vs 'x'*30 and 'y'*100 vs 'y'*20."""
    from types import SimpleNamespace

    spec = SimpleNamespace(name="length", weight=1.0, params={})
    texts = [B + "{1}" + "x" * 10, B + "{2}" + "x" * 30, B + "{1}" + "y" * 100, B + "{1}" + "y" * 20]
    total, _ = R.build([spec], group_size=2)(texts, solution=["$1$"] * 4)
    # per group: shortest -> 0.5, longest -> -0.5; wrong answers -> min(0, lambda)
    assert total == pytest.approx([0.5, -0.5, -0.5, 0.5])
    whole, _ = R.build([spec])(texts, solution=["$1$"] * 4)  # one range over all 4 (open-r1 on a whole batch)
    lo, hi = min(map(len, texts)), max(map(len, texts))
    assert whole == pytest.approx([0.5 - (len(texts[0]) - lo) / (hi - lo), min(0.0, 0.5 - (len(texts[1]) - lo) / (hi - lo)),
                                   0.5 - (len(texts[2]) - lo) / (hi - lo), 0.5 - (len(texts[3]) - lo) / (hi - lo)])
