"""The evaluation harness: greedy = transformers, verdicts = math-verify, metric formulas, resume, CLI."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tina_jax import evaluation
from tina_jax.evaluation import checkers
from tina_jax.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "launch" / "eval.py"


@pytest.fixture(scope="module")
def tiny_model(tiny_chat_model_dir):
    import tina_jax

    return tina_jax.load_model(str(tiny_chat_model_dir))


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _lighteval_direct(completion: str, gold: str, kind: str) -> int:
    """math-verify called directly, configured as Tina's lighteval custom tasks (the oracle)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    g = parse(gold, extraction_config=[LatexExtractionConfig()] if kind == "latex" else [ExprExtractionConfig()])
    p = parse(completion, extraction_config=[ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)],
              fallback_mode="first_match", extraction_mode="any_match")
    return int(bool(g) and bool(p) and verify(g, p, float_rounding=5))


# ------------------------------------------------------------------------------------------------
# Benchmarks and graders
# ------------------------------------------------------------------------------------------------
def test_every_benchmark_loads_with_unique_ids_and_golds():
    sizes = {"aime24": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiadbench": 675, "gsm8k": 1319,
             "kk": 500}
    for name, n in sizes.items():
        probs = evaluation.load_benchmark(name)
        assert len(probs) == n, name
        assert len({p.id for p in probs}) == n and all(p.gold and p.question for p in probs), name
    assert evaluation.load_benchmark("aime24")[0].gold == "204"
    assert evaluation.load_benchmark("gsm8k")[0].gold == "18"
    assert Counter(p.group for p in evaluation.load_benchmark("kk")) == {f"{k}ppl": 100 for k in range(3, 8)}
    assert len(evaluation.load_benchmark("math500", limit=7)) == 7
    with pytest.raises(ValueError, match="did you mean 'aime24'"):
        evaluation.load_benchmark("aime2024")


CASES = [  # (benchmark, completion template, expected) on the benchmark's first problem's real gold
    ("aime24", "So the answer is $\\boxed{204}$.", 1),
    ("aime24", "Therefore, the final answer is: $\\boxed{0204}$. I hope it is correct", 1),
    ("aime24", "Therefore, the final answer is: $\\boxed{205}$. I hope it is correct", 0),
    ("amc23", "Therefore, the final answer is: $\\boxed{27}$. I hope it is correct", 1),
    ("amc23", "The answer is 27.0", 1),
    ("amc23", "I do not know.", 0),
    ("math500", "Therefore, the final answer is: $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", 1),
    ("math500", "Therefore, the final answer is: $\\boxed{(3, \\pi)}$.", 0),
    ("gsm8k", "She makes 9 * 2 = $18 every day. The answer is 18.", 1),
    ("gsm8k", "#### 17", 0),
]


@pytest.mark.parametrize("bench,completion,want", CASES)
def test_math_grader_equals_math_verify_direct(bench, completion, want):
    p = evaluation.load_benchmark(bench, limit=1)[0]
    kind = evaluation.get_benchmark(bench).gold_kind
    correct, extracted, unparsed = checkers.grade("math", [completion], [p.gold], [kind])
    assert unparsed == 0
    assert correct == [want] == [_lighteval_direct(completion, p.gold, "latex" if kind == "latex" else "expr")]
    assert extracted[0] is not None or want == 0


def test_gsm8k_strict_and_kk_graders():
    assert checkers.grade("gsm8k_strict", ["so #### 1,234", "#### 12 then 1234", "1234"], ["1234"] * 3,
                          ["gsm8k"] * 3)[0] == [1, 0, 0]
    kk = evaluation.load_benchmark("kk", limit=1)[0]
    gold_lines = kk.gold
    good = f" reasoning </think> <answer> {gold_lines} </answer>"
    flipped = good.replace("knight", "KNAVEX").replace("knave", "knight").replace("KNAVEX", "knave")
    c, e, _ = checkers.grade("kk", [good, flipped, "no tags"], [kk.gold] * 3, ["kk"] * 3, prefix="<think>")
    assert c == [1, 0, 0] and e[0] == gold_lines
    # without the pre-filled <think> the structure check fails, as Logic-RL's would
    assert checkers.grade("kk", [good], [kk.gold], ["kk"])[0] == [0]


# ------------------------------------------------------------------------------------------------
# Metrics against direct formulas
# ------------------------------------------------------------------------------------------------
def test_pass_at_k_equals_enumeration_over_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            correct = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(correct, k))
                assert M.pass_at_k(n, c, k) == pytest.approx(np.mean([any(s) for s in subsets]), abs=1e-12)


def test_maj_at_k_and_seed_statistics():
    ex, ok = ["5", "7", "7", None, "5", "5"], [1, 0, 0, 0, 1, 1]
    assert M.maj_at_k(ex, ok, 1) == 1.0          # "5"
    assert M.maj_at_k(ex, ok, 3) == 0.0          # "7" twice
    assert M.maj_at_k(ex, ok, 4) == 0.0          # None does not vote
    assert M.maj_at_k(ex, ok, 6) == 1.0          # "5" three times
    assert M.maj_at_k(["7", "5"], [0, 1], 2) == 0.0  # a tie goes to the first seen
    assert M.maj_at_k([None, None], [0, 0], 2) == 0.0
    recs = [{"correct": [1, 0, 1, 1], "extracted": ["a", "b", "a", "a"], "num_tokens": [3, 5, 7, 9],
             "truncated": [0, 0, 0, 1]},
            {"correct": [0, 0, 0, 1], "extracted": ["x", "x", None, "y"], "num_tokens": [1, 1, 1, 1],
             "truncated": [0, 0, 0, 0]}]
    s = M.summarize_seed(recs)
    assert s["avg@4"] == pytest.approx((0.75 + 0.25) / 2)
    assert s["pass@2"] == pytest.approx((1 - 0 / 6 + 1 - 3 / 6) / 2)
    assert s["maj@4"] == pytest.approx(0.5) and s["pass@4"] == 1.0
    assert s["mean_length"] == pytest.approx(28 / 8) and s["truncated_frac"] == pytest.approx(1 / 8)
    agg = M.over_seeds([{"a": 0.2}, {"a": 0.4}, {"a": 0.9}])
    assert agg["a"]["mean"] == pytest.approx(0.5) and agg["a"]["std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))


def test_plan_batches_respects_the_budget_and_covers_every_problem():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 300, size=37).tolist()
    batches = evaluation.plan_batches(lengths, n=4, max_new_tokens=128, max_rows=32, batch_tokens=32 * 200)
    assert sorted(i for b in batches for i in b) == list(range(37))
    from tina_jax.sampling import prompt_bucket

    for b in batches:
        assert len(b) & (len(b) - 1) == 0 and len(b) * 4 <= 32
        assert len(b) == 1 or len(b) * 4 * (prompt_bucket(max(lengths[i] for i in b)) + 128) <= 32 * 200
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    assert [len(b) for b in evaluation.plan_batches([5] * 100, 1, 16, 64, 1 << 20)] == [64, 32, 4]


# ------------------------------------------------------------------------------------------------
# End to end on a tiny random chat model
# ------------------------------------------------------------------------------------------------
def test_greedy_harness_equals_transformers_generate(tiny_model, tiny_chat_model_dir, tmp_path):
    import torch
    import transformers

    from tina_jax.sampling import default_stop_token_ids

    res = evaluation.evaluate(tiny_model, ["gsm8k", "math500"], "greedy", limit=3, max_new_tokens=10,
                              out_dir=tmp_path, max_rows=2, progress=False, console=lambda s: None)
    rows = _rows(tmp_path / "samples.jsonl")
    assert len(rows) == 6 and res["benchmarks"]["gsm8k"]["num_problems"] == 3
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_chat_model_dir), dtype=torch.float32).eval()
    tok = tiny_model.tokenizer
    stop = list(default_stop_token_ids(tiny_model.config, tok))
    for r in rows:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=10, eos_token_id=stop, pad_token_id=0)
        new = out[0, len(ids):].tolist()
        assert r["num_tokens"] == len(new)
        assert r["completion"] == tok.decode([t for t in new if t not in stop], skip_special_tokens=True)
        kind = evaluation.get_benchmark(r["benchmark"]).gold_kind
        assert r["correct"] == _lighteval_direct(r["completion"], r["gold"], "latex" if kind == "latex" else "expr")
    assert (tmp_path / "results.md").read_text().count("|") > 10 and (tmp_path / "results.png").stat().st_size > 0
    # a rerun with other settings is refused; a protocol that does not apply names the fix
    with pytest.raises(evaluation.EvalError, match="max_new_tokens"):
        evaluation.evaluate(tiny_model, ["gsm8k"], "greedy", limit=3, max_new_tokens=11, out_dir=tmp_path,
                            progress=False, console=lambda s: None)
    with pytest.raises(evaluation.EvalError, match="does not apply"):
        evaluation.evaluate(tiny_model, ["math500"], "gsm8k_strict", limit=1, max_new_tokens=4, progress=False)
    with pytest.raises(evaluation.EvalError, match="context"):
        evaluation.evaluate(tiny_model, ["aime24"], "lighteval", limit=1, progress=False)


def _eval_cmd(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, str(EVAL), "--model", str(model_dir), "--benchmarks", "gsm8k,amc23",
            "--protocol", "lighteval", "--samples", "2", "--seeds", "2", "--limit", "4", "--max-new-tokens", "8",
            "--out", str(out), "--no-progress", "max_rows=2", "temperature=1.0"]


def _comparable(path: Path) -> dict:
    res = json.loads((path / "results.json").read_text())
    res.pop("run")
    return res


def test_killed_evaluation_resumes_to_the_same_results(tiny_chat_model_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_eval_cmd(tiny_chat_model_dir, ref), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref_rows = sorted((ref / "samples.jsonl").read_text().splitlines())
    assert len(ref_rows) == 2 * 4 * 2 * 2  # benchmarks x problems x samples x seeds
    assert len({json.loads(x)["completion"] for x in ref_rows}) > 8, "sampling must differ across samples and seeds"

    p = subprocess.Popen(_eval_cmd(tiny_chat_model_dir, run), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (run / "samples.jsonl").is_file() or len((run / "samples.jsonl").read_text().splitlines()) < 4:
        assert p.poll() is None, p.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = (run / "samples.jsonl").read_text().splitlines()
    assert 4 <= len(partial) < len(ref_rows)
    with open(run / "samples.jsonl", "a") as f:  # a torn last line, as a kill mid-write leaves
        f.write('{"benchmark": "gsm8k", "id": "0", "sam')
    again = subprocess.run(_eval_cmd(tiny_chat_model_dir, run), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    assert sorted((run / "samples.jsonl").read_text().splitlines()) == ref_rows
    assert _comparable(run) == _comparable(ref)
    cmp = subprocess.run([sys.executable, str(EVAL), "--compare", str(ref / "results.json"),
                          str(run / "results.json")], capture_output=True, text=True, env=env, timeout=120)
    assert cmp.returncode == 0 and "| gsm8k | avg@2 |" in cmp.stdout
    assert all(line.endswith("| +0.0 | no |") for line in cmp.stdout.splitlines() if line.startswith("| gsm8k"))


def test_cli_reports_bad_input_clearly(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(EVAL), "--model", "x", "--benchmarks", "gsm8k", "--config",
                        str(tmp_path / "none.yaml")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    cfg = tmp_path / "e.yaml"
    cfg.write_text("model: x\nbenchmarks: [gsm8k]\nsampels: 4\n")
    r = subprocess.run([sys.executable, str(EVAL), "--config", str(cfg)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "did you mean 'samples'" in r.stderr


@pytest.mark.slow
def test_smollm2_gsm8k_50_verdicts_equal_math_verify(tmp_path):
    import tina_jax

    model = tina_jax.load_model("smollm2-135m-instruct")
    res = evaluation.evaluate(model, ["gsm8k"], "greedy", limit=50, max_new_tokens=256, out_dir=tmp_path,
                              progress=False, console=lambda s: None)
    rows = _rows(tmp_path / "samples.jsonl")
    assert len(rows) == 50
    direct = [_lighteval_direct(r["completion"], r["gold"], "expr") for r in rows]
    assert [r["correct"] for r in rows] == direct and sum(direct) > 0
    assert res["benchmarks"]["gsm8k"]["metrics"]["avg@1"]["mean"] == pytest.approx(np.mean(direct))


def test_training_run_logs_benchmark_eval_and_its_checkpoint_evaluates_the_same(tiny_chat_model_dir, tmp_path):
    """The eval section runs inside training (every N steps and at the end, logged as
    eval/<benchmark>/<metric>), and load_run_policy restores exactly the weights it evaluated."""
    from tina_jax import trainer
    from tina_jax.config import load_config
    from tina_jax.runlog import read_metrics

    run = tmp_path / "run"
    cfg = load_config(None, [
        f"model.source={tiny_chat_model_dir}", f"train.run_dir={run}", "train.max_steps=3", "train.save_every=1",
        "train.eval_every=0", "rollout.num_samples=2", "grpo.prompts_per_step=2", "rollout.max_new_tokens=8",
        "adapter.r=4", "optim.lr=0.05", "train.plot=false", "train.tensorboard=false",
        "rewards=[{name: cosine, weight: 1.0, params: {max_len: 100}}]",
        "eval.benchmarks=[gsm8k, amc23]", "eval.protocol=greedy", "eval.limit=2", "eval.every=2",
        "eval.max_new_tokens=6", "data.n_eval=4", "data.n_train=16", "data.max_prompt_length=128"])
    summary = trainer.train(cfg, console=lambda s: None)
    rows = read_metrics(run / "metrics.jsonl")
    evals = {r["step"]: r for r in rows if "eval/gsm8k/avg@1" in r}
    assert sorted(evals) == [2, 3]  # every 2 steps, and the final weights at the end
    assert "eval/average/avg@1" in evals[3] and "eval/amc23/avg@1" in summary
    assert (run / "eval" / "step_3" / "results.json").is_file()
    model, params, info = trainer.load_run_policy(run, "last", console=lambda s: None)
    assert info["checkpoint"] == 3
    res = evaluation.evaluate(model, ["gsm8k", "amc23"], "greedy", params=params, limit=2, max_new_tokens=6,
                              seed=cfg.train.seed, out_dir=tmp_path / "again", progress=False)
    inside = sorted((r["benchmark"], r["id"], r["completion"]) for r in _rows(run / "eval" / "step_3" / "samples.jsonl"))
    again = sorted((r["benchmark"], r["id"], r["completion"]) for r in _rows(tmp_path / "again" / "samples.jsonl"))
    assert inside == again
    base = sorted((r["benchmark"], r["id"], r["completion"]) for r in _rows(run / "eval" / "step_2" / "samples.jsonl"))
    assert base != inside, "the weights must move between steps 2 and 3 for this test to bite"
    assert res["benchmarks"]["gsm8k"]["num_problems"] == 2


def test_cli_adapter_evaluates_the_exported_peft_adapter(tiny_model, tiny_chat_model_dir, tmp_path):
    """--adapter PEFT_DIR gives the same completions as evaluating the adapter from Python."""
    import jax

    from tina_jax import adapters

    ad = adapters.init("lora", tiny_model.config, tiny_model.params, jax.random.key(3), r=4, alpha=8)
    ad = ad.replace(trainable=jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.key(4), x.shape),
                                           ad.trainable))  # B = 0 at init: move it so the adapter matters
    peft_dir = adapters.export_peft(ad, tiny_model.config, tmp_path / "peft")
    evaluation.evaluate(tiny_model, ["gsm8k"], "greedy", params=adapters.apply(tiny_model.params, ad), limit=2,
                        max_new_tokens=6, out_dir=tmp_path / "py", progress=False, console=lambda s: None)
    base = evaluation.evaluate(tiny_model, ["gsm8k"], "greedy", limit=2, max_new_tokens=6, out_dir=tmp_path / "base",
                               progress=False, console=lambda s: None)
    r = subprocess.run([sys.executable, str(EVAL), "--model", str(tiny_chat_model_dir), "--adapter", str(peft_dir),
                        "--benchmarks", "gsm8k", "--limit", "2", "--max-new-tokens", "6", "--out",
                        str(tmp_path / "cli"), "--no-progress"], capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    comp = lambda d: [x["completion"] for x in sorted(_rows(d / "samples.jsonl"), key=lambda x: x["id"])]  # noqa: E731
    assert comp(tmp_path / "cli") == comp(tmp_path / "py")
    assert comp(tmp_path / "cli") != comp(tmp_path / "base"), "the adapter must change the outputs"
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["model"]["adapter"].endswith("peft")
    assert base["benchmarks"]["gsm8k"]["num_problems"] == 2
