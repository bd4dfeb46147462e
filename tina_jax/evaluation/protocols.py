"""Evaluation protocols: prompt, sampling and grader, one small declarative entry each, with its source.

A protocol fixes how a benchmark is asked and graded; ``--samples``, ``--seeds``, ``--max-new-tokens``,
``temperature`` and ``top_p`` override its defaults (``Protocol.replace``). The prompt is a named
recipe of :mod:`tina_jax.data.prompts`, rendered with the model's own chat template.
"""
from __future__ import annotations

import dataclasses

__all__ = ["Protocol", "PROTOCOLS", "get_protocol"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How to ask and grade.

    Attributes:
      name: the ``--protocol`` name.
      prompt_recipe: a :data:`tina_jax.data.prompts.RECIPES` name (system prompt or none, user
        template); ``{kk: ...}``-style per-family overrides in ``family_recipes``.
      temperature, top_p: sampling (temperature 0 = greedy).
      max_new_tokens: the generation budget.
      samples: completions per problem (n of avg@n).
      seeds: independent sampling runs (mean and std over them).
      checker: ``math`` (math-verify as lighteval), ``gsm8k_strict`` or ``kk``; ``auto`` = the
        benchmark family's own grader (math-verify for math sets, kk for K&K, math-verify for GSM8K).
      benchmarks: the benchmark families it applies to.
      source: where it comes from.
    """

    name: str
    prompt_recipe: str
    temperature: float
    top_p: float
    max_new_tokens: int
    samples: int
    seeds: int
    checker: str
    benchmarks: tuple[str, ...]
    source: str
    family_recipes: tuple[tuple[str, str], ...] = ()

    def replace(self, **kw) -> "Protocol":
        kw = {k: v for k, v in kw.items() if v is not None}
        return dataclasses.replace(self, **kw)

    def recipe_for(self, family: str) -> str:
        return dict(self.family_recipes).get(family, self.prompt_recipe)

    def checker_for(self, family: str) -> str:
        if self.checker != "auto":
            return self.checker
        return {"kk": "kk"}.get(family, "math")

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.samples < 1 or self.seeds < 1:
            raise ValueError(f"max_new_tokens, samples and seeds must be >= 1, got {self.max_new_tokens}, "
                             f"{self.samples}, {self.seeds}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["family_recipes"] = dict(self.family_recipes)
        return d


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    # Tina / Open-RS / open-r1: lighteval, no system prompt, the math query template, T 0.6, top-p 0.95,
    # 32768 new tokens, one sample [RECIPES.md section 8; Tina scripts/eval/run_eval_custom_tasks.py
    # MATH_QUERY_TEMPLATE and *_gold_metric; eval_baselines*.sh --temperature 0.6 --top_p 0.95].
    Protocol("lighteval", "lighteval_math", 0.6, 0.95, 32768, 1, 1, "math", ("math", "gsm8k"),
             "Tina/Open-RS lighteval: MATH_QUERY_TEMPLATE, T 0.6, top-p 0.95, 32768 tokens, math-verify"),
    # TinyLoRA / verl: greedy, the instruction appended to the question, strict "#### n"
    # [jxmorris12/verl-lora examples/data_preprocess/gsm8k.py; verl reward_score/gsm8k.py].
    Protocol("gsm8k_strict", "tinylora_gsm8k", 0.0, 1.0, 4096, 1, 1, "gsm8k_strict", ("gsm8k",),
             "TinyLoRA/verl: question + \"Let's think step by step and output the final answer after "
             "\\\"####\\\".\", greedy, strict #### parsing"),
    # Logic-RL / warm-up: Logic-RL's system prompt and pre-filled "<think>", greedy (verl validation
    # does not sample), Logic-RL's answer check [Unakar/Logic-RL data/kk/instruct/*/test.parquet prompt].
    Protocol("kk", "kk_logic_rl", 0.0, 1.0, 4096, 1, 1, "kk", ("kk",),
             "Logic-RL K&K: its system prompt, <think> pre-filled, greedy, Logic-RL answer check"),
    # Any benchmark: greedy, the model's chat template with the bare question, math-verify as lighteval
    # (K&K: its own prompt and checker, since math-verify cannot grade it).
    Protocol("greedy", "plain", 0.0, 1.0, 1024, 1, 1, "auto", ("math", "gsm8k", "kk"),
             "greedy decoding, the bare question in the model's chat template, math-verify (lighteval's)",
             family_recipes=(("kk", "kk_logic_rl"),)),
]}


def get_protocol(name: str) -> Protocol:
    from tina_jax.evaluation.benchmarks import lookup

    return lookup(PROTOCOLS, name, "protocol")
