"""Evaluation on the papers' benchmarks with the papers' protocols (``launch/eval.py`` is the CLI).

    from tina_jax import evaluation
    res = evaluation.evaluate(model, ["aime24", "math500"], "lighteval", samples=4, seeds=3,
                              max_new_tokens=4096, out_dir="runs/eval/base")
    print(evaluation.results_markdown(res))

- ``benchmarks``: the table of sets shipped in ``data/`` (file, id field, question, gold, grader).
- ``protocols``: ``lighteval`` (Tina / Open-RS), ``gsm8k_strict`` (TinyLoRA), ``kk`` (Logic-RL /
  warm-up), ``greedy`` (any benchmark).
- ``checkers``: math-verify as lighteval grades, verl's strict GSM8K, Logic-RL's K&K check.
- ``metrics``: avg@n, unbiased pass@k, maj@k, mean and std over seeds.
- ``harness``: batching, seeding, the resumable ``samples.jsonl`` cache and the reports.
"""
from tina_jax.evaluation.benchmarks import BENCHMARKS, Benchmark, Problem, get_benchmark, load_benchmark
from tina_jax.evaluation.harness import EvalError, compare, evaluate, flat_metrics, plan_batches, results_markdown
from tina_jax.evaluation.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = ["BENCHMARKS", "Benchmark", "Problem", "get_benchmark", "load_benchmark", "EvalError", "compare",
           "evaluate", "flat_metrics", "plan_batches", "results_markdown", "PROTOCOLS", "Protocol", "get_protocol"]
