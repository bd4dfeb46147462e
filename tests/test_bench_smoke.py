"""Every bench script runs on a tiny model (``--smoke`` / ``--model DIR``), so a refactor of the library cannot
silently break them; the scripts that take longer than ~30 s on 2 cores are marked slow."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _script(name: str):
    """bench/<name>.py as a module (its ``main(argv)`` runs it in this process: no second JAX import)."""
    return importlib.import_module(f"bench.{name}")


def _run(name: str, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _last_json(out: str):
    return json.loads([line for line in out.splitlines() if line.startswith(("{", "["))][-1])


def test_device_suite_smoke(tmp_path):
    out = tmp_path / "suite.json"
    _run("device_suite", "--smoke", "--repeats", "1", "--out", str(out))
    res = json.loads(out.read_text())
    assert set(res["workloads"]) == {"rollout", "grpo_step", "tinylora_7b"}
    assert res["workloads"]["tinylora_7b"]["trainable_params"] == 1  # 2 tiny layers x 7 modules, n_tie=16
    assert all(w["step_s" if "step_s" in w else "rollout_s"] > 0 for w in res["workloads"].values())


def test_common_w1_prompts_and_compile_counter():
    import jax
    import jax.numpy as jnp

    from bench import common

    import random

    msgs = common.w1_messages()
    random.seed(0)  # how W1's prompts were drawn before bench/common.py (the recorded figures used them)
    want = [f"What is {random.randint(10, 99)} + {random.randint(10, 99)}? Give the final answer as a number."
            for _ in range(8)]
    assert [m[0]["content"] for m in msgs] == want and want[0] == "What is 59 + 63? Give the final answer as a number."
    assert common.w1_messages(2) == msgs[:2]  # the first prompts do not depend on how many are drawn
    f = jax.jit(lambda x: x * 3 + 1)
    x, y = common.block((jnp.ones(7), jnp.ones(9)))
    with common.CompileCounter() as cc:
        common.block((f(x), f(x)))
    assert cc.count == 1 and cc.seconds > 0  # one shape, one compilation
    with common.CompileCounter() as cc:
        common.block((f(x), f(y)))
    assert cc.count == 1  # only the new shape compiles
    first, steady, times = common.timed(lambda i: f(jnp.ones(3) * i), 2)
    assert len(times) == 2 and steady > 0 and first > 0
    assert common.peak_rss_bytes() >= (common.rss_bytes() or 0) > 0
    assert common.field_lists([{"prompt_ids": [1], "solution": "4", "answer": 4}], 2) == {
        "solution": ["4", "4"], "answer": [4, 4]}


def test_step_breakdown_smoke(tiny_chat_model_dir, tmp_path):
    """The default recipe's step (two updates per rollout: an old-logprob pass) on a tiny model: every phase is
    timed, the parts add up to the step, the warm-up compiles and a timed step that repeats a shape does not."""
    sb = _script("step_breakdown")
    out = tmp_path / "sb.json"
    assert sb.main(["--smoke", "--model", str(tiny_chat_model_dir), "--steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ph = res["phases"]
    assert set(sb.PHASES) <= set(ph) and res["updates_per_rollout"] == 2 and res["rows"] == 8
    assert ph["rollout"]["median_s"] > 0 and ph["update"]["median_s"] > 0 and ph["rewards"]["median_s"] > 0
    assert ph["old logprobs"]["median_s"] > 0 and ph["ref logprobs"]["median_s"] == 0  # beta 0: no reference
    for s in res["steps"]:
        sec = s["seconds"]
        assert abs(sum(sec[k] for k in sb.TOP) + sec["unaccounted"] - sec["step"]) < 1e-9
        assert abs(sec["update: forward"] + sec["update: optimizer"] + sec["update: backward (derived)"]
                   - sec["update"]) < 1e-9 or sec["update: backward (derived)"] == 0
        assert 0.0 <= s["metrics"]["reward/mean"] <= 1.0 and s["metrics"]["batch/completion_width"] <= 8
    assert res["warmup_steps"][0]["compiles"] > 0
    seen = set()
    for s in res["steps"]:  # a shape seen before in a timed step compiles nothing the second time
        shape = (s["metrics"]["batch/prompt_width"], s["metrics"]["batch/completion_width"])
        if shape in seen:
            assert s["compiles"]["update"] == 0, s
        seen.add(shape)
    assert "update: backward (derived)" in res["table"]


def test_bench_grpo_step_smoke(capsys):
    assert _script("bench_grpo_step").main(["--smoke", "--repeats", "1", "--micro-batch", "4"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["model"] == "tiny" and res["rows"] == 8 and res["step_s"] > 0 and res["tokens_per_s"] > 0


def test_bench_sampling_smoke(tiny_chat_model_dir, capsys):
    """W1's sampling comparison (tina_jax and the transformers runner) and the decode-step breakdown."""
    assert _script("bench_sampling").main(["--smoke", "--model", str(tiny_chat_model_dir), "--repeats", "1",
                                           "--breakdown"]) == 0
    res = _last_json(capsys.readouterr().out)
    t = res["tina_jax"]
    assert (t["rows"], t["new_tokens"]) == (4, 8) and t["slots_per_s"] > 0
    assert res["transformers"]["slots_per_s"] > 0 and res["speedup_median"] > 0
    b = res["breakdown"]
    assert b["step_ms"] > 0 and b["step_lm_head_ms"] > 0 and b["step_choose_ms"] > 0


def test_bench_forward_smoke(tiny_chat_model_dir, capsys):
    assert _script("bench_forward").main(["--model", str(tiny_chat_model_dir), "--keep-cache", "--batch", "2",
                                          "--seq", "16", "--repeats", "1"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["tokens_per_s"] > 0 and res["batch"] == 2


def test_kk_warmup_eval_base_smoke(tiny_chat_model_dir, tmp_path):
    out = tmp_path / "kk.json"
    assert _script("kk_warmup_eval").main([
        "--config", str(ROOT / "configs" / "smollm2_kk_sft_cpu.yaml"), "--base", "--n", "1", "--batch", "4",
        "--out", str(out), f"model.source={tiny_chat_model_dir}", "rollout.max_new_tokens=4"]) == 0
    res = json.loads(out.read_text())
    assert set(res["by_people"]) == {"2", "3"} and all(v["n"] == 1 for v in res["by_people"].values())
    assert res["accuracy"] == 0.0  # a random tiny model writes no K&K answer


@pytest.mark.slow  # ~40 s: two programs compiled for 2 fake devices
def test_memory_plan_smoke(tiny_chat_model_dir, tmp_path):
    out = tmp_path / "mp.json"
    _run("memory_plan", "--recipes", "smollm2_arith_cpu", "--devices", "2", "--out", str(out),
         f"model.source={tiny_chat_model_dir}", "rollout.max_new_tokens=8", "adapter.r=4")
    (row,) = json.loads(out.read_text())
    assert row["devices"] == 2 and row["grpo_step"]["total"] > 0 and row["rollout"]["total"] > 0


@pytest.mark.slow  # two subprocesses, each loading the model and compiling a train step
def test_bench_adapters_smoke(tiny_chat_model_dir):
    r = _run("bench_adapters", "--model", str(tiny_chat_model_dir), "--batch", "2", "--seq", "16", "--steps", "1",
             "--rank", "4")
    res = _last_json(r.stdout)["results"]
    lora, full = res
    assert (lora["mode"], full["mode"]) == ("lora", "full") and lora["trainable_params"] < full["trainable_params"]
    assert all(len(x["losses"]) == 2 and x["peak_rss_gib"] > 0 for x in res)


@pytest.mark.slow  # bf16 sampling compiled for two adapter decodings
def test_bench_adapter_decoding_smoke(tiny_chat_model_dir, capsys):
    assert _script("bench_adapter_decoding").main(["--model", str(tiny_chat_model_dir), "--prompts", "2",
                                                   "--samples", "2", "--new-tokens", "4",
                                                   "--magnitudes", "0,1e-2"]) == 0
    rows = _last_json(capsys.readouterr().out)
    assert [(r["v"], r["mode"]) for r in rows] == [(0.0, "merged"), (0.0, "factored"), (0.01, "merged"),
                                                   (0.01, "factored")]
    assert all(r["gap_max"] < 0.1 for r in rows)


@pytest.mark.slow  # a training run (1 step) through trainer.train
def test_learning_parity_tina_side_smoke(tiny_chat_model_dir, tmp_path):
    out = tmp_path / "lp.json"
    _run("learning_parity", "--smoke", "--only", "tina", "--steps", "1", "--model", str(tiny_chat_model_dir),
         "--out", str(out))
    res = json.loads(out.read_text())
    assert len(res["tina_jax"]["reward"]) == 1 and res["summary"]["tina_jax"]["peak_rss_gb"] > 0


@pytest.mark.slow  # trains a 1-step run, then reads its checkpoint back twice
def test_kk_scripts_on_a_trained_run(tiny_chat_model_dir, tmp_path):
    from tina_jax import config as config_lib, trainer

    run = tmp_path / "run"
    cfg = config_lib.load_config(ROOT / "configs" / "smollm2_kk_sft_cpu.yaml", [
        f"model.source={tiny_chat_model_dir}", f"train.run_dir={run}", "train.max_steps=1", "train.save_every=1",
        "train.eval_every=0", "data.n_train=8", "data.n_eval=2", "sft.batch_size=2", "sft.micro_batch_size=2",
        "optim.lr=1e-2", "adapter.r=4", "train.plot=false", "train.tensorboard=false",
        "train.time_limit_minutes=null"])
    trainer.train(cfg, console=lambda s: None)
    d, info = _script("kk_weight_change").max_change(str(run), "base")
    assert info["checkpoint"] == 1 and d > 0
    out = tmp_path / "kk.json"
    assert _script("kk_warmup_eval").main([
        "--config", str(ROOT / "configs" / "smollm2_kk_sft_cpu.yaml"), "--run", str(run), "--n", "1", "--batch", "4",
        "--out", str(out), "rollout.max_new_tokens=4"]) == 0
    assert json.loads(out.read_text())["model"].endswith("@1")


# random text has varied character lengths, so cosine rewards differ within a group: parameters move
_COSINE = "rewards=[{name: cosine, weight: 1.0, params: {max_len: 300}}, {name: accuracy, weight: 1.0}]"


@pytest.mark.slow  # two runs of the default recipe, 2 steps x 4 updates, on a tiny model
def test_step_breakdown_is_the_trainers_step(tiny_chat_model_dir, tmp_path):
    """Oracle: the per-step rewards, losses and gradient norms step_breakdown measures with its own explicit loop
    of grpo_step calls (2 mini-batches x 2 iterations over the old logprobs) are those trainer.train logs for
    the same config: the trainer's multi-update path is that loop, and the breakdown times nothing else."""
    from tina_jax import config as config_lib, trainer

    sb = _script("step_breakdown")
    out = tmp_path / "sb.json"
    assert sb.main(["--smoke", "--model", str(tiny_chat_model_dir), "--warmup", "0", "--steps", "2",
                    "--out", str(out), "grpo.num_iterations=2", "optim.lr=0.05", "train.max_steps=2", _COSINE]) == 0
    res = json.loads(out.read_text())
    assert res["updates_per_rollout"] == 4
    got = res["steps"]
    over = sb.SMOKE_OVERRIDES + [f"model.source={tiny_chat_model_dir}", "train.eval_every=0", "train.max_steps=2",
                                 f"train.run_dir={tmp_path / 'run'}", "train.plot=false", "train.tensorboard=false",
                                 "train.sample_every=0", "grpo.num_iterations=2", "optim.lr=0.05", _COSINE]
    trainer.train(config_lib.load_config(ROOT / "configs" / "smollm2_arith_cpu.yaml", over), console=lambda s: None)
    want = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    want = [w for w in want if "loss" in w]
    assert len(want) == len(got) == 2
    for g, w in zip(got, want):
        for k in ("reward/mean", "loss", "grad_norm", "clip_fraction", "lr", "completion/mean_length"):
            assert abs(g["metrics"][k] - w[k]) <= 1e-6 * max(1.0, abs(w[k])), (k, g["metrics"][k], w[k])
    assert all(g["metrics"]["grad_norm"] > 0 for g in got), "the parameters must move for this test to bite"
