"""The benchmarks of the four papers: one table row each (file, id field, question field, gold, checker).

    problems = load_benchmark("aime24", limit=10)   # list[Problem]

Files live in the repository's ``data/`` (``data/SOURCES.md`` gives origin, licence and sha256); a
``data_dir`` argument (``--data-dir`` on the command line) points elsewhere, e.g. at a copy on a pod's
shared disk. Golds are read exactly as the papers' harnesses read them:

- AIME24 / AMC23: ``answer`` (a string with leading zeros / a float), parsed as an expression
  (lighteval's ``expr_gold_metric``, Tina ``scripts/eval/run_eval_custom_tasks.py``);
- MATH-500 / Minerva: ``solution`` (its ``\\boxed{}``), parsed as LaTeX (``latex_gold_metric``);
- OlympiadBench: ``final_answer[0]`` (every record of the shipped set has exactly one), LaTeX;
- GSM8K test: the number after ``####`` in ``answer`` (verl's gold; an expression for math-verify);
- K&K 3-7 people: ``solution_text_format`` (Logic-RL's gold).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Literal

__all__ = ["Benchmark", "Problem", "BENCHMARKS", "get_benchmark", "load_benchmark", "default_data_dir"]

GoldKind = Literal["latex", "expr", "gsm8k", "kk"]


def default_data_dir() -> Path:
    """``data/`` of the repository checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "data"


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) else x


def _gsm8k_gold(answer: str) -> str:
    from tina_jax.rewards.math import gsm8k_gold

    return gsm8k_gold(answer)


def _str_gold(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(x)  # "27.0": math-verify's expression parser reads it as 27.0 == 27
    return str(x)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One evaluation set.

    Attributes:
      name: the ``--benchmarks`` name.
      files: JSONL files under the data directory, read in order (K&K has one per number of people).
      id_field: the record field that identifies a problem (``None``: the line index).
      question_field: the record field holding the question text.
      gold: record -> gold text for the checker.
      gold_kind: how the checker reads the gold: ``latex`` / ``expr`` (math-verify extraction, as
        lighteval's latex_gold_metric / expr_gold_metric), ``gsm8k`` (a plain number), ``kk``.
      source: where the paper's harness read it from.
    """

    name: str
    files: tuple[str, ...]
    id_field: str | None
    question_field: str
    gold: Callable[[dict], str]
    gold_kind: GoldKind
    source: str
    group_field: str | None = None  # a field to break results down by (K&K: number of people)

    @property
    def family(self) -> str:
        """``math`` (math-verify graded), ``gsm8k`` or ``kk``."""
        return {"latex": "math", "expr": "math"}.get(self.gold_kind, self.gold_kind)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("aime24", ("aime24/test.jsonl",), "id", "problem", lambda r: str(r["answer"]), "expr",
              "HuggingFaceH4/aime_2024 (same 30 problems); Tina/Open-RS lighteval expr_gold_metric"),
    Benchmark("amc23", ("amc23/test.jsonl",), "id", "problem", lambda r: _str_gold(r["answer"]), "expr",
              "knoveleng/AMC-23 (same 40 problems); Tina/Open-RS lighteval expr_gold_metric"),
    Benchmark("math500", ("math500/test.jsonl",), "unique_id", "problem", lambda r: r["solution"], "latex",
              "HuggingFaceH4/MATH-500; lighteval latex_gold_metric on `solution`"),
    Benchmark("minerva", ("minerva_math/test.jsonl",), "idx", "problem", lambda r: r["solution"], "latex",
              "knoveleng/Minerva-Math; lighteval latex_gold_metric on `solution`"),
    Benchmark("olympiadbench", ("olympiadbench/test.jsonl",), "id", "question",
              lambda r: str(_first(r["final_answer"])), "latex",
              "knoveleng/OlympiadBench (675 English text-only open-ended); latex_gold_metric on the answer"),
    Benchmark("gsm8k", ("gsm8k/test.jsonl",), None, "question", lambda r: _gsm8k_gold(r["answer"]), "gsm8k",
              "openai/grade-school-math test; verl gsm8k gold (number after ####)"),
    Benchmark("kk", tuple(f"kk/{n}ppl_test.jsonl" for n in range(3, 8)), "index", "quiz",
              lambda r: r["solution_text_format"], "kk",
              "Logic-RL data/kk/instruct/{3..7}ppl/test (K&K, Xie et al. 2024)", group_field="num_people"),
]}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a benchmark: ``id`` (a string, unique within the benchmark), ``question``,
    ``gold`` (what the checker compares with), ``group`` (a breakdown key or None), ``record``."""

    benchmark: str
    id: str
    question: str
    gold: str
    group: str | None
    record: dict


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or a ValueError naming the nearest known ``what``."""
    if name not in table:
        import difflib

        near = difflib.get_close_matches(name, list(table), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown {what} {name!r}; {hint}known: {', '.join(table)}")
    return table[name]


def get_benchmark(name: str) -> Benchmark:
    return lookup(BENCHMARKS, name, "benchmark")


def load_benchmark(name: str, limit: int | None = None, data_dir: str | Path | None = None) -> list[Problem]:
    """The first ``limit`` problems of a benchmark (all when None), in file order."""
    from tina_jax.data.pipeline import read_jsonl  # lazily: the data pipeline imports grain

    b = get_benchmark(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    problems: list[Problem] = []
    for rel in b.files:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {name!r}: {path} not found; the sets ship in the repository's "
                                    "data/ (see data/SOURCES.md), or pass --data-dir")
        for lineno, rec in read_jsonl(path):
            try:
                pid = str(rec[b.id_field]) if b.id_field else str(len(problems))
                question, gold = rec[b.question_field], b.gold(rec)
            except (KeyError, IndexError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: benchmark {name!r} needs fields {b.id_field!r}, "
                                 f"{b.question_field!r} and its gold ({type(e).__name__}: {e})") from None
            group = None
            if b.group_field == "num_people":  # K&K indices repeat across sizes: "3ppl-1000"
                group = f"{len(rec['names'])}ppl"
                pid = f"{group}-{pid}"
            problems.append(Problem(name, pid, question, gold, group, rec))
            if limit is not None and len(problems) >= limit:
                return problems
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {name!r}: ids in field {b.id_field!r} are not unique")
    return problems
