"""Multi-process training (jax.distributed): 2 processes x 4 CPU devices train exactly as 1 process x 8.

Both processes run ``launch/train.py --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I`` on a
tiny random chat model. Oracle: the same recipe in one process with 8 devices. Checked: every per-step
metric (the final benchmark evaluation's too) and the trained parameters (<= 1e-5) on meshes (8,1,1) and
(2,4,1), and that killing both processes mid-run (SIGKILL) and starting them again resumes to the same
metrics and parameters.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, TRAIN, assert_same_metrics, comparable, metric_rows as _rows, save_tiny_chat_model
from helpers import start_train, train_env

STEPS = 3


@pytest.fixture(scope="module")
def peaked_chat_model_dir(tmp_path_factory):
    """``tiny_chat_model_dir``'s model with larger random weights (init std 0.5, not 0.02): its next-token
    distributions are peaked, not uniform, so completions' gradients differ and the group-centred GRPO
    gradient is not a near-total cancellation that rounding (another reduction order) could swing."""
    return save_tiny_chat_model(tmp_path_factory.mktemp("peaked_chat"), initializer_range=0.5)


def _overrides(model_dir: Path, run_dir: Path, mesh: str) -> list[str]:
    return [f"model.source={model_dir}", f"train.run_dir={run_dir}", f"train.max_steps={STEPS}",
            "train.save_every=1", "train.eval_every=0", "train.eval_samples=0", "data.n_eval=4",
            "rollout.num_samples=4", "grpo.prompts_per_step=8", "rollout.max_new_tokens=12", "adapter.r=8",
            # eps=1: Adam's update stays nearly linear in the gradient (with eps=1e-8 its first steps are
            # g/|g|, which turns rounding-level differences of near-zero gradients into O(lr) ones)
            "optim.lr=0.05", "optim.eps=1.0", "train.plot=false",
            # one update per rollout (the default recipe's second, clipped update amplifies reduction-order
            # rounding between 1 and 2 processes beyond 1e-5 through the sampled tokens)
            "grpo.mini_batches=1", "grpo.micro_batch_size=null", "optim.schedule=constant",
            # the eval harness at the end: generation over all devices, grading split over processes
            "eval.benchmarks=[gsm8k]", "eval.limit=4", "eval.max_new_tokens=8", "train.tensorboard=false", f"mesh.shape={mesh}",
            # random text has varied character lengths, so cosine rewards differ: parameters move
            "rewards=[{name: cosine, weight: 1.0, params: {max_len: 300}}, {name: accuracy, weight: 1.0}]"]


def _env(devices: int, cache: Path) -> dict:
    # the resumed processes compile the same programs again: share them
    return train_env(devices, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return start_train(ROOT / "configs" / "smollm2_arith_cpu.yaml", args, env)


def _start_pair(overrides: list[str], cache: Path) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start([*overrides, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                   _env(4, cache)) for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]


def _metrics(run_dir: Path) -> dict[int, dict]:
    return comparable(_rows(run_dir))


def _trained(run_dir: Path) -> list[np.ndarray]:
    """The trainable parameters of the last checkpoint, read onto this (1-device) process as NumPy."""
    import jax
    import orbax.checkpoint as ocp

    from tina_jax.checkpoint import Checkpointer

    with ocp.StandardCheckpointer() as c:
        saved = c.metadata(run_dir / "checkpoints" / str(STEPS) / "arrays")
    like = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(getattr(saved, "item_metadata", saved)))
    with Checkpointer(run_dir / "checkpoints") as ck:
        arrays, meta = ck.restore(STEPS, like=like)
    assert meta["step"] == STEPS
    return jax.tree.leaves(arrays["trainable"])


def _assert_same(got_dir: Path, want: dict, want_params: list[np.ndarray]) -> None:
    assert_same_metrics(_metrics(got_dir), want)
    params = _trained(got_dir)
    assert len(params) == len(want_params)
    for a, b in zip(params, want_params):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_two_processes_train_as_one_and_resume_after_kill(peaked_chat_model_dir, tmp_path):
    cache = tmp_path / "xla_cache"
    # Oracle: one process with 8 devices.
    ref_dir = tmp_path / "ref"
    ref = _start(_overrides(peaked_chat_model_dir, ref_dir, "[8,1,1]"), _env(8, cache))
    _finish([ref])
    want, want_params = _metrics(ref_dir), _trained(ref_dir)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert want[1]["grad_norm"] > 0 and len({round(want[s]["entropy"], 5) for s in want}) > 1, \
        "parameters must move for this test to bite"

    # 2 processes x 4 devices, data parallel over all 8.
    dp_dir = tmp_path / "dp"
    _finish(_start_pair(_overrides(peaked_chat_model_dir, dp_dir, "[8,1,1]"), cache))
    _assert_same(dp_dir, want, want_params)
    # Only process 0 writes the run's logs; the final benchmark evaluation ran and was logged.
    assert (dp_dir / "summary.json").is_file() and sum("loss" in r for r in _rows(dp_dir)) == STEPS
    assert (dp_dir / "eval" / f"step_{STEPS}" / "results.json").is_file()
    assert "eval/gsm8k/avg@1" in want[STEPS], sorted(want[STEPS])

    # Mesh (2,4,1): fsdp inside each process, data across them; both processes are killed mid-run.
    run_dir = tmp_path / "fsdp"
    procs = _start_pair(_overrides(peaked_chat_model_dir, run_dir, "[2,4,1]"), cache)
    t0 = time.time()
    while not (run_dir / "checkpoints" / "1").is_dir():  # step 1 committed (Orbax renames when complete)
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
        assert time.time() - t0 < 600, "training did not progress"
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()
    assert len([r for r in _rows(run_dir) if "loss" in r]) < STEPS, "the kill came too late to test a resume"
    procs = _start_pair(_overrides(peaked_chat_model_dir, run_dir, "[2,4,1]"), cache)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    assert "resumed from" in outs[0] and "resumed from" not in outs[1]  # process 1 prints nothing
    _assert_same(run_dir, want, want_params)


def test_two_processes_run_sft_as_one(peaked_chat_model_dir, tmp_path):
    """The SFT stage (``algorithm: sft``, full-parameter) on 2 processes x 4 devices, mesh (2,4,1) with the
    weights sharded inside each process, gives the metrics and weights of 1 process x 8 devices."""
    cache = tmp_path / "xla_cache"
    cfg = str(ROOT / "configs" / "smollm2_kk_sft_cpu.yaml")

    def overrides(run_dir: Path, mesh: str) -> list[str]:
        return ["--config", cfg, f"model.source={peaked_chat_model_dir}", f"train.run_dir={run_dir}",
                f"train.max_steps={STEPS}", "train.save_every=1", "train.eval_every=0", "data.n_train=40",
                "data.n_eval=2", "sft.batch_size=8", "sft.micro_batch_size=8", "rollout.max_new_tokens=8",
                "optim.lr=1e-3", "optim.eps=1.0", "train.plot=false", "train.tensorboard=false",
                "train.time_limit_minutes=null", "adapter.kind=none", f"mesh.shape={mesh}"]  # full-parameter

    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.Popen([sys.executable, str(TRAIN), *overrides(ref_dir, "[8,1,1]")], env=_env(8, cache),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _finish([ref])
    want = _metrics(ref_dir)
    assert sorted(want) == list(range(1, STEPS + 1)) and want[1]["grad_norm"] > 0
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(TRAIN), *overrides(run_dir, "[2,4,1]"), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=_env(4, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    _finish(procs)
    _assert_same(run_dir, want, _trained(ref_dir))
