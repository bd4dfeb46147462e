"""K&K generator, solver, trace writer and answer format (tina_jax/data/kk.py)."""
import itertools
import json
import os
import re

import pytest

from tina_jax.data import kk
from tina_jax.rewards import kk_reward
from tina_jax.rewards.puzzles import kk_score_logic_rl, kk_score_warmup, parse_kk_answer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KK_DATA = os.path.join(_ROOT, "data", "kk")  # the K&K test sets shipped with the project
SEEDS = 1000


def _oracle_solutions(statements) -> list[tuple[bool, ...]]:
    """An independent brute force: each statement compiled to a Python boolean expression over x[i]."""
    def expr(s):
        op = s[0]
        if op == "telling-truth":
            return f"x[{s[1]}]"
        if op == "lying":
            return f"(not x[{s[1]}])"
        if op == "not":
            return f"(not {expr(s[1])})"
        if op in ("and", "or"):
            return "(" + f" {op} ".join(expr(t) for t in s[1:]) + ")"
        if op == "->":
            return f"((not {expr(s[1])}) or {expr(s[2])})"
        assert op == "<=>"
        return f"({expr(s[1])} == {expr(s[2])})"

    fns = [eval(f"lambda x: {expr(s)}") for s in statements]  # noqa: S307 - test oracle on our own tuples
    return [x for x in itertools.product((True, False), repeat=len(statements))
            if all(f(x) == x[i] for i, f in enumerate(fns))]


def _depth(s) -> int:
    return 0 if s[0] in ("telling-truth", "lying") else 1 + max(_depth(t) for t in s[1:])


@pytest.mark.parametrize("n", range(2, 9))
def test_generated_puzzles_have_one_solution_and_traces_reach_it(n):
    seen = set()
    for seed in range(SEEDS):
        p = kk.make_puzzle(n, seed)
        st = kk.parse_statements(p["statements"])
        assert len(st) == n and all(_depth(s) <= 2 for s in st)
        assert all(s[0] in ("telling-truth", "lying", "not", "and", "or", "->", "<=>") for s in st)
        sols = _oracle_solutions(st)
        assert sols == [tuple(p["solution"])], (n, seed)
        seen.add(p["statements"])
        trace = kk.reasoning_trace(p, compact=seed % 2 == 1)
        answer = re.search(r"<answer>(.*?)</answer>", trace, re.DOTALL).group(1)
        assert parse_kk_answer(answer, p["names"]) == {
            name: "knight" if k else "knave" for name, k in zip(p["names"], p["solution"])}
    if n >= 4:  # (2-3 people have few distinct statement sets)
        assert len(seen) > 0.9 * SEEDS  # seeds give different puzzles


def test_make_puzzle_is_deterministic_and_worded_like_the_dataset():
    a, b = kk.make_puzzle(4, 7), kk.make_puzzle(4, 7)
    assert a == b and kk.make_puzzle(4, 8) != a
    assert a["quiz"].startswith("A very special island is inhabited only by knights and knaves. Knights always "
                                "tell the truth, and knaves always lie. You meet 4 inhabitants: ")
    assert a["quiz"].endswith("So who is a knight and who is a knave?")
    assert a["solution_text_format"] == "\n".join(
        f"({i + 1}) {nm} is {'a knight' if k else 'a knave'}" for i, (nm, k) in enumerate(zip(a["names"], a["solution"])))
    with pytest.raises(ValueError, match="num_people"):
        kk.make_puzzle(9, 0)


def test_trace_scores_full_marks_with_the_kk_rewards():
    for n in (2, 3, 5):
        for seed in range(20):
            p = kk.make_puzzle(n, seed)
            full = kk.reasoning_trace(p)
            assert kk_score_logic_rl(full, p["solution_text_format"]) == 3.0
            assert kk_score_warmup(full, p["solution_text_format"]) == 2.0
            # Without the leading <think> (prompt ends with it, recipe kk_logic_rl) with the reward's prefix.
            body = kk.reasoning_trace(p, think_open=False)
            assert kk_reward(prefix="<think>")([body], solution_text_format=[p["solution_text_format"]]) == [3.0]
            wrong = [not k for k in p["solution"]]
            bad = full.split("<answer>")[0] + kk.answer_block(p["names"], wrong)
            assert kk_score_logic_rl(bad, p["solution_text_format"]) == 1.0 - 1.5


@pytest.mark.skipif(not os.path.isdir(KK_DATA), reason="data/kk not present")
def test_solver_and_wording_agree_with_the_shipped_kk_test_sets():
    n_checked = 0
    for n in range(3, 8):
        with open(os.path.join(KK_DATA, f"{n}ppl_test.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                st = kk.parse_statements(r["statements"])
                assert kk.solve(st) == [tuple(r["solution"])]
                assert kk.solution_text_format(r["names"], r["solution"]) == r["solution_text_format"]
                for s in st:
                    assert kk.format_statement(s, r["names"]) in r["quiz"]
                n_checked += 1
    assert n_checked == 500


def test_synthetic_kk_source_gives_traced_train_and_new_held_out_puzzles():
    from tina_jax.data import pipeline

    train = pipeline.load_records("synthetic:kk2-3:compact", "train", n=41, n_eval=10, seed=0)
    held = pipeline.load_records("synthetic:kk2-3:compact", "test", n=10, n_train=41, seed=0)
    assert [r["num_people"] for r in train].count(2) == 21 and [r["num_people"] for r in held].count(3) == 5
    assert all(r["completion"] == kk.reasoning_trace(r, compact=True) for r in train + held)
    assert not {r["statements"] for r in held} & {r["statements"] for r in train}
    assert pipeline.load_records("synthetic:kk4", "train", n=3, seed=1) == kk.synthetic_splits("kk4", 3, 0, 1)[0]
    with pytest.raises(ValueError, match="people"):
        pipeline.load_records("synthetic:kk1-9", "train", n=3)
    # no_think: the same traces without the leading "<think>" (prompts that end with it), options combine
    plain = pipeline.load_records("synthetic:kk2-3:compact", "train", n=4, n_eval=2, seed=3)
    bare = pipeline.load_records("synthetic:kk2-3:compact,no_think", "train", n=4, n_eval=2, seed=3)
    assert [r["completion"] for r in plain] == ["<think>\n" + r["completion"] for r in bare]
    assert all(not r["completion"].startswith("<think>") for r in bare)
    assert kk.parse_source("kk3-7:no_think") == ((3, 4, 5, 6, 7), False, False)
    for bad in ("kk3:fast", "kk3:compact,x", "kk3:,"):
        with pytest.raises(ValueError, match="options among compact, no_think"):
            kk.parse_source(bad)
