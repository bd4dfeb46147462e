"""The training loop: exact resume after SIGKILL, checkpoint on SIGTERM, outputs a user sees."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, assert_same_metrics, comparable as _comparable, metric_rows as _rows, start_train
from helpers import train_steps as _train_steps, wait_for_steps as _wait_for

RECIPE = ROOT / "configs" / "smollm2_arith_cpu.yaml"


def _overrides(model_dir: Path, run_dir: Path) -> list[str]:
    return [f"model.source={model_dir}", f"train.run_dir={run_dir}", "train.max_steps=5", "train.save_every=1",
            "train.eval_every=2", "data.n_eval=4", "train.eval_samples=2", "rollout.num_samples=4",
            "grpo.prompts_per_step=2", "grpo.micro_batch_size=4", "rollout.max_new_tokens=12", "adapter.r=8",
            "optim.lr=0.05",
            "train.plot=false", "train.tensorboard=false",
            # random text has varied character lengths, so cosine rewards differ: parameters move
            "rewards=[{name: cosine, weight: 1.0, params: {max_len: 300}}, {name: accuracy, weight: 1.0}]"]


def _start(args: list[str]) -> subprocess.Popen:
    return start_train(RECIPE, args)


def test_killed_run_resumes_to_identical_metrics(tiny_chat_model_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _start(_overrides(tiny_chat_model_dir, ref_dir))
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]
    want = _comparable(_rows(ref_dir))
    assert sorted(want) == [0, 1, 2, 3, 4, 5]
    assert len({round(want[s]["entropy"], 5) for s in range(1, 6)}) > 1 and want[1]["grad_norm"] > 0, "parameters must move for this test to bite"

    # 1) SIGKILL mid-run (no chance to save): the next start resumes from the last checkpoint.
    p = _start(_overrides(tiny_chat_model_dir, run_dir))
    _wait_for(p, run_dir, 2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # 2) SIGTERM: the run finishes its step, saves a checkpoint and exits with 130.
    p = _start(_overrides(tiny_chat_model_dir, run_dir))
    already = _train_steps(run_dir)
    _wait_for(p, run_dir, already + 1)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 130, out[-3000:]
    assert "checkpoint saved" in out
    assert "resumed from" in out
    # 3) resume to the end
    p = _start(_overrides(tiny_chat_model_dir, run_dir))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]

    assert_same_metrics(_comparable(_rows(run_dir)), want)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()
    assert "cost:" in json.loads((run_dir / "summary.json").read_text())["cost"]


def test_unknown_key_fails_before_loading_anything(tmp_path):
    p = _start(["grpo.loss.aggregaton=seq_sum_const"])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2
    assert "unknown config key 'grpo.loss.aggregaton'; did you mean 'aggregation'" in out


def test_run_ends_cleanly_when_the_data_runs_out(tiny_chat_model_dir, tmp_path):
    """5 synthetic problems, 2 prompts per step, 1 epoch -> the data allows 2 steps of the 5 asked for: the
    run ends at step 2 with a checkpoint, a final evaluation and summary.json (exit 0); a rerun resumes
    there and ends at once; the dry run reports the 2 steps."""
    run_dir = tmp_path / "run"
    extra = ["data.n_train=5", "data.num_epochs=1", "train.eval_every=10", "train.save_every=10", "data.n_eval=2",
             "train.eval_samples=0", "rewards=[{name: accuracy, weight: 1.0, params: {flavour: lenient}}]"]
    replaced = {e.split("=", 1)[0] for e in extra}  # an override may be given once only
    args = [o for o in _overrides(tiny_chat_model_dir, run_dir) if o.split("=", 1)[0] not in replaced] + extra
    p = _start(args)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "data exhausted at step 2" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["data_exhausted"] is True
    assert "eval/greedy_accuracy" in summary, "the final evaluation runs at the last step"
    from tina_jax.checkpoint import Checkpointer

    ck = Checkpointer(run_dir / "checkpoints")
    assert ck.latest_step() == 2
    ck.close()
    assert _train_steps(run_dir) == 2
    p = _start(args)  # resume at the end of the data: nothing left to do, still a clean exit
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from" in out and "data exhausted at step 2" in out
    assert _train_steps(run_dir) == 2
    p = _start(args + ["--dry-run"])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "data allows 2 steps (2 batches of 2 prompts per epoch x 1 epochs); the run ends at step 2" in out
