"""Knights and Knaves (K&K) puzzles: a seeded generator, a brute-force solver, the Logic-RL answer
format and a writer of step-by-step reasoning traces, so K&K SFT and RL data can be made offline.

    p = make_puzzle(3, seed=0)          # a dict with the K&K dataset's fields (quiz, names, solution, ...)
    solve(p["statements"])              # every consistent assignment (exactly one for a generated puzzle)
    reasoning_trace(p)                  # "<think>\\nSuppose Amelia is a knight ...</think>\\n<answer>..."

Puzzle logic follows the K&K dataset of Xie et al. 2024 [AlphaPav/mem-kk-logic data_prep/lib_kk.py,
MIT; re-implemented here, not copied]: person ``i``'s statement is a tree over leaves
``("telling-truth", j)`` ("j is a knight") and ``("lying", j)`` ("j is a knave") with ``not``, ``and``,
``or``, ``->`` and ``<=>`` nodes, depth <= 2 (one operator over leaves); a knight's statement is true, a
knave's false; a puzzle is kept only if exactly one of the 2^N assignments is consistent. The text uses
the dataset's wording (island preamble, the 18 saying templates, "So who is a knight and who is a
knave?") and its field names; ``statements`` is stored as the dataset stores it (a Python-literal string).

Generated puzzles do not reproduce the dataset's own records (the sampler differs); the shipped test
sets (``../shared/data/kk``, Logic-RL) remain the reference evaluation and ``solve`` agrees with them.

The Logic-RL answer format [Unakar/Logic-RL data/kk/instruct prompts; verl/utils/reward_score/kk.py]:
``<think> ... </think><answer> (1) Zoey is a knight\\n(2) Oliver is a knave </answer>``.
"""
from __future__ import annotations

import ast
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["NAMES", "TEMPLATES", "make_puzzle", "make_puzzles", "solve", "evaluate", "parse_statements",
           "format_statement", "solution_text_format", "answer_block", "reasoning_trace", "sft_record",
           "write_jsonl", "parse_source", "synthetic_splits"]

Statement = tuple

# The dataset's name pool and saying templates [mem-kk-logic lib_kk.py COMMON_NAMES, TEMPLATES].
NAMES = ("Emma", "Liam", "Olivia", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella", "William", "Mia",
         "James", "Charlotte", "Benjamin", "Amelia", "Lucas", "Harper", "Henry", "Evelyn", "Alexander",
         "Abigail", "Michael", "Emily", "Daniel", "Elizabeth", "Jacob", "Sofia", "Logan", "Avery", "Jackson",
         "Ella", "Sebastian", "Scarlett", "Jack", "Grace", "Aiden", "Chloe", "Owen", "Victoria", "Samuel",
         "Riley", "Matthew", "Aria", "Joseph", "Lily", "Luke", "Aurora", "David", "Zoey", "Oliver", "Penelope")
TEMPLATES = (
    '{name} said that {content}.', '{name} told you that {content}.', '{name} said, "{content}."',
    '{name} stated, "{content}".', 'According to {name}, "{content}".', "In {name}'s words: \"{content}\".",
    '{name} remarked, "{content}".', '"{content}," {name} declared.', '{name} was heard saying, "{content}".',
    '{name} expressed that {content}.', '"{content}" - {name}.', 'As {name} put it, "{content}".',
    '{name} asserted: "{content}".', '"{content}," {name} mentioned.', '{name} commented, "{content}".',
    'In a statement by {name}: "{content}".', '{name} noted, "{content}".', '"{content}," {name} claimed.',
)
_PREFIX = ("A very special island is inhabited only by knights and knaves. Knights always tell the truth, "
           "and knaves always lie. ")
_POSTFIX = "So who is a knight and who is a knave?"
_KNIGHT_KNAVE = {"Knave": "Knave", "Knight": "Knight", "a_knave": "a knave", "a_knight": "a knight",
                 "knave": "knave", "knight": "knight"}
MIN_PEOPLE, MAX_PEOPLE = 2, 8


# ------------------------------------------------------------------------------------------------
# Logic
# ------------------------------------------------------------------------------------------------
def evaluate(stmt: Statement, assignment: Sequence[bool]) -> bool:
    """Truth value of a statement tree under ``assignment`` (True = knight)."""
    op = stmt[0]
    if op == "telling-truth":
        return bool(assignment[stmt[1]])
    if op == "lying":
        return not assignment[stmt[1]]
    if op == "not":
        return not evaluate(stmt[1], assignment)
    if op == "and":
        return all(evaluate(s, assignment) for s in stmt[1:])
    if op == "or":
        return any(evaluate(s, assignment) for s in stmt[1:])
    if op == "->":
        return (not evaluate(stmt[1], assignment)) or evaluate(stmt[2], assignment)
    if op == "<=>":
        return evaluate(stmt[1], assignment) == evaluate(stmt[2], assignment)
    raise ValueError(f"unknown K&K statement operator {op!r} in {stmt!r}")


def solve(statements: Sequence[Statement] | str) -> list[tuple[bool, ...]]:
    """Every consistent assignment, by brute force over the 2^N knight/knave assignments (knight = True):
    person i is a knight iff their statement is true."""
    if isinstance(statements, str):
        statements = parse_statements(statements)
    n = len(statements)
    return [a for a in itertools.product((True, False), repeat=n)
            if all(evaluate(s, a) == a[i] for i, s in enumerate(statements))]


def parse_statements(text: str) -> tuple[Statement, ...]:
    """The dataset's ``statements`` field (a Python literal such as ``"(('lying', 1), ...)"``) as tuples."""
    value = ast.literal_eval(text)
    if not isinstance(value, tuple):
        raise ValueError(f"K&K statements must be a tuple literal, got {text[:80]!r}")
    return value


def _mentions(stmt: Statement) -> set[int]:
    if stmt[0] in ("telling-truth", "lying"):
        return {stmt[1]}
    return set().union(*(_mentions(s) for s in stmt[1:]))


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def _leaf(rng: random.Random, speaker: int, n: int) -> Statement:
    while True:
        kind, person = rng.choice(("telling-truth", "lying")), rng.randrange(n)
        if not (kind == "lying" and person == speaker):  # "I am a knave" has no consistent speaker
            return (kind, person)


def _statement(rng: random.Random, speaker: int, n: int) -> Statement:
    """A leaf (1/6), ``not`` leaf (1/6), ``and``/``or`` (1/3) or ``->``/``<=>`` (1/3) over two distinct leaves
    (the dataset's operator odds at depth 2, width 2)."""
    dice = rng.randrange(6)
    if dice == 0:
        return _leaf(rng, speaker, n)
    if dice == 1:
        return ("not", _leaf(rng, speaker, n))
    op = ("and", "or", "->", "<=>")[dice - 2]
    a = _leaf(rng, speaker, n)
    while (b := _leaf(rng, speaker, n)) == a:
        pass
    return (op, a, b)


def make_puzzle(num_people: int, seed: int) -> dict[str, Any]:
    """One puzzle with a unique solution, a pure function of ``(num_people, seed)``.

    Returns the K&K dataset's fields: ``quiz``, ``names``, ``knight_knave``, ``solution`` (list of bool,
    True = knight), ``solution_text``, ``solution_text_format``, ``statements`` (literal string), plus
    ``num_people`` and ``seed``.
    """
    if isinstance(num_people, bool) or not isinstance(num_people, int) or not MIN_PEOPLE <= num_people <= MAX_PEOPLE:
        raise ValueError(f"num_people must be an int in [{MIN_PEOPLE}, {MAX_PEOPLE}], got {num_people!r}")
    rng = random.Random(f"kk-{num_people}-{seed}")
    for _ in range(100_000):
        statements = tuple(_statement(rng, i, num_people) for i in range(num_people))
        sols = solve(statements)
        if len(sols) == 1:
            break
    else:  # pragma: no cover - unique puzzles are common (about 1 draw in 5 to 20)
        raise RuntimeError(f"no unique K&K puzzle found for num_people={num_people}, seed={seed}")
    names = rng.sample(NAMES, num_people)
    solution = [bool(x) for x in sols[0]]
    says = [" " + rng.choice(TEMPLATES).format(name=names[i], content=format_statement(s, names))
            for i, s in enumerate(statements)]
    quiz = (_PREFIX + f"You meet {num_people} inhabitants: " + ", ".join(names[:-1]) + ", and " + names[-1] + "."
            + "".join(says) + " " + _POSTFIX)
    parts = [f"{n} is {'a knight' if k else 'a knave'}" for n, k in zip(names, solution)]
    return {"quiz": quiz, "names": names, "knight_knave": dict(_KNIGHT_KNAVE), "solution": solution,
            "solution_text": ", ".join(parts[:-1]) + ", and " + parts[-1] + ".",
            "solution_text_format": solution_text_format(names, solution), "statements": repr(statements),
            "num_people": num_people, "seed": seed}


def make_puzzles(people: Iterable[int], n_per_size: int, seed: int = 0) -> list[dict]:
    """``n_per_size`` puzzles for each size in ``people``; puzzle k of size N uses seed ``seed * 10**6 + k``
    (so two base seeds give disjoint puzzle sets while each seed stays below 10**6 puzzles)."""
    return [make_puzzle(n, seed * 10**6 + k) for n in people for k in range(n_per_size)]


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------
def _leaf_text(stmt: Statement, names: Sequence[str], negated: bool = False) -> str:
    role = {"telling-truth": "a knight", "lying": "a knave"}[stmt[0]]
    return f"{names[stmt[1]]} is {'not ' if negated else ''}{role}"


def format_statement(stmt: Statement, names: Sequence[str]) -> str:
    """A statement in the dataset's words ("Zoey is a knight or Oliver is a knave", "If ... then ...")."""
    op = stmt[0]
    if op == "not":
        return _leaf_text(stmt[1], names, negated=True)
    if op in ("and", "or"):
        return f" {op} ".join(_leaf_text(s, names) for s in stmt[1:])
    if op == "->":
        return f"If {_leaf_text(stmt[1], names)} then {_leaf_text(stmt[2], names)}"
    if op == "<=>":
        return f"{_leaf_text(stmt[1], names)} if and only if {_leaf_text(stmt[2], names)}"
    return _leaf_text(stmt, names)


def solution_text_format(names: Sequence[str], solution: Sequence[bool]) -> str:
    """``"(1) Zoey is a knight\\n(2) Oliver is a knave"``: the gold the ``kk`` reward reads."""
    return "\n".join(f"({i + 1}) {n} is {'a knight' if k else 'a knave'}"
                     for i, (n, k) in enumerate(zip(names, solution)))


def answer_block(names: Sequence[str], solution: Sequence[bool]) -> str:
    """The Logic-RL answer: ``<answer>\\n(1) ... is a knight\\n(2) ...\\n</answer>``."""
    return "<answer>\n" + solution_text_format(names, solution) + "\n</answer>"


def _role(k: bool) -> str:
    return "a knight" if k else "a knave"


def reasoning_trace(puzzle: dict, think_open: bool = True, compact: bool = False) -> str:
    """A step-by-step solution: depth-first over the people in order, supposing each is a knight, then a
    knave; after every supposition each statement whose speaker and subjects are all decided is checked
    (a knight's must be true, a knave's false); a failed check is a contradiction that rules the supposition
    out, and when both roles of a person fail the reasoning backs up to the previous person. It ends with
    the consistent assignment, ``</think>`` and the answer block. ``think_open=False`` omits the leading
    ``<think>`` (for prompts that already end with it, e.g. recipe ``kk_logic_rl``).
    """
    names = puzzle["names"]
    statements = parse_statements(puzzle["statements"]) if isinstance(puzzle["statements"], str) \
        else tuple(puzzle["statements"])
    n = len(names)
    needs = [_mentions(s) | {i} for i, s in enumerate(statements)]
    lines = ["<think>"] if think_open else []
    if not compact:
        lines.append("Each person is either a knight, whose statement is true, or a knave, whose statement "
                      "is false. Let me suppose roles one person at a time and check every statement as soon "
                      "as the roles it depends on are decided.")
    for i, s in enumerate(statements):
        lines.append(f"- {names[i]} says: \"{format_statement(s, names)}\".")
    assign: dict[int, bool] = {}

    def check(p: int) -> bool:
        """Check the statements that became decidable when person p was assigned; write each check."""
        for i, s in enumerate(statements):
            if p not in needs[i] or not needs[i] <= assign.keys():
                continue
            value = evaluate(s, [assign.get(j, False) for j in range(n)])
            must = "true" if assign[i] else "false"
            got = "true" if value else "false"
            if compact:
                if value != assign[i]:
                    lines.append(f"Then {names[i]}'s statement is {got}, but it must be {must}. Contradiction.")
                    return False
                continue
            claim = f"{names[i]} is {_role(assign[i])}, so the statement \"{format_statement(s, names)}\" " \
                    f"must be {must}; with these roles it is {got}."
            if value != assign[i]:
                lines.append(claim + " Contradiction.")
                return False
            lines.append(claim + " Consistent.")
        return True

    def search(p: int) -> bool:
        if p == n:
            return True
        for role in (True, False):
            assign[p] = role
            lines.append(f"Suppose {names[p]} is {_role(role)}.")
            if check(p) and search(p + 1):
                return True
            if not compact:
                lines.append(f"So {names[p]} cannot be {_role(role)} here.")
            del assign[p]
        if p > 0 and not compact:
            lines.append(f"Both roles for {names[p]} fail, so I go back to {names[p - 1]}.")
        return False

    if not search(0):
        raise ValueError(f"puzzle has no consistent assignment: {puzzle['statements']}")
    solution = [assign[i] for i in range(n)]
    lines.append("Every statement is consistent, so the solution is: "
                 + ", ".join(f"{names[i]} is {_role(solution[i])}" for i in range(n)) + ".")
    return "\n".join(lines) + "\n</think>\n" + answer_block(names, solution)


def sft_record(puzzle: dict, think_open: bool = True, compact: bool = False) -> dict:
    """A training record: the puzzle's fields plus ``completion`` (its reasoning trace)."""
    return dict(puzzle, completion=reasoning_trace(puzzle, think_open, compact))


_SOURCE_OPTIONS = ("compact", "no_think")


def parse_source(task: str) -> tuple[tuple[int, ...], bool, bool]:
    """``"kk3"``, ``"kk2-3"``, ``"kk2-3:compact"`` or ``"kk3-7:no_think"`` (options joined by ``,``; the part
    after ``synthetic:``) -> (sizes, compact, think_open). ``no_think``: traces without the leading
    ``<think>``, for prompts that end with it (recipes ``warmup_kk``, ``kk_logic_rl``)."""
    body, _, opt = task.partition(":")
    opts = [o for o in opt.split(",") if o] if opt else []
    if not body.startswith("kk") or any(o not in _SOURCE_OPTIONS for o in opts) or (opt and not opts):
        raise ValueError(f"K&K source must look like synthetic:kk3, synthetic:kk2-3 or synthetic:kk2-3:<options> "
                         f"with options among {', '.join(_SOURCE_OPTIONS)} joined by ','; got synthetic:{task}")
    lo, _, hi = body[2:].partition("-")
    try:
        sizes = tuple(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"synthetic:{task}: people must be a number or a range such as 2-3") from None
    if not sizes or sizes[0] < MIN_PEOPLE or sizes[-1] > MAX_PEOPLE:
        raise ValueError(f"synthetic:{task}: people must lie in {MIN_PEOPLE}..{MAX_PEOPLE}")
    return sizes, "compact" in opts, "no_think" not in opts


def synthetic_splits(task: str, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out K&K records for ``synthetic:<task>`` (``parse_source``), sizes in equal shares
    (remainder to the smallest sizes). Train records carry ``completion`` (the reasoning trace); train puzzles
    use base seed ``2 * seed``, eval puzzles ``2 * seed + 1``, and an eval puzzle whose statements also occur
    in the train split is replaced by the next seed, so held-out puzzles are new problems (not only new names).
    """
    sizes, compact, think_open = parse_source(task)

    def shares(n):
        return [n // len(sizes) + (i < n % len(sizes)) for i in range(len(sizes))]

    train = [sft_record(make_puzzle(p, 2 * seed * 10**6 + k), think_open, compact)
             for p, m in zip(sizes, shares(n_train)) for k in range(m)]
    seen = {r["statements"] for r in train}
    evals = []
    for p, m in zip(sizes, shares(n_eval)):
        k = 0
        got = 0
        while got < m:
            if k >= 10**6:
                raise ValueError(f"synthetic:{task}: not enough {p}-person puzzles outside the train split")
            r = make_puzzle(p, (2 * seed + 1) * 10**6 + k)
            k += 1
            if r["statements"] in seen:
                continue
            evals.append(sft_record(r, think_open, compact))
            got += 1
    return train, evals


def write_jsonl(records: Iterable[dict], path: str) -> int:
    n = 0
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tina_jax.data.kk --people 2 3 --n 1000 --seed 0 --out train.jsonl [--trace]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Generate K&K puzzles (optionally with reasoning traces) as JSONL")
    ap.add_argument("--people", type=int, nargs="+", required=True, help="puzzle sizes (2..8)")
    ap.add_argument("--n", type=int, required=True, help="puzzles per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", action="store_true", help="add a 'completion' field with the reasoning trace")
    ap.add_argument("--compact", action="store_true", help="shorter traces (passing checks not written)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    recs = make_puzzles(a.people, a.n, a.seed)
    out = (sft_record(r, compact=a.compact) if a.trace else r for r in recs)
    print(f"wrote {write_jsonl(out, a.out)} puzzles to {a.out}")


if __name__ == "__main__":
    main()
