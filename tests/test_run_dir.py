"""The run directory's guard (one live trainer, no mixed runs, no resume under a changed config) and the
fallback from a damaged checkpoint to the newest intact one."""
from __future__ import annotations

import shutil

import pytest
import yaml

from tina_jax.checkpoint import Checkpointer
from tina_jax.config import load_config
from tina_jax.run_dir import RunDirError, open_run_dir

from test_checkpoint import _assert_same, _train_arrays


def _cfg(run_dir, *extra):
    return load_config(None, [f"train.run_dir={run_dir}", "adapter.r=8", *extra])


def _fake_checkpoint(run_dir, step=3):
    (run_dir / "checkpoints" / str(step)).mkdir(parents=True)


def test_second_trainer_on_a_run_dir_is_refused_until_the_first_exits(tmp_path):
    g = open_run_dir(_cfg(tmp_path / "run"))
    with pytest.raises(RunDirError, match="in use by a live trainer \\(pid"):
        open_run_dir(_cfg(tmp_path / "run"))
    g.release()
    open_run_dir(_cfg(tmp_path / "run")).release()


def test_no_resume_over_checkpoints_is_refused_or_moves_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    open_run_dir(_cfg(run)).release()
    _fake_checkpoint(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="drop --no-resume .* --overwrite"):
        open_run_dir(_cfg(run), resume=False)
    g = open_run_dir(_cfg(run), resume=False, overwrite=True)
    g.release()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (run / "checkpoints").exists() and not g.resuming


def test_resume_under_a_changed_config_is_refused_and_keeps_the_saved_config(tmp_path):
    run = tmp_path / "run"
    open_run_dir(_cfg(run)).release()
    saved = (run / "config.yaml").read_text()
    _fake_checkpoint(run)
    with pytest.raises(RunDirError, match=r"adapter\.alpha: 128\.0 -> 64\.0\n  adapter\.r: 8 -> 4"):
        open_run_dir(_cfg(run, "adapter.r=4", "adapter.alpha=64"))
    with pytest.raises(RunDirError, match=r"model\.source"):
        open_run_dir(_cfg(run, "model.source=qwen2.5-1.5b-instruct"))
    assert (run / "config.yaml").read_text() == saved
    g = open_run_dir(_cfg(run, "train.max_steps=500", "eval.limit=5"))  # may change: how long, what is logged
    g.release()
    assert g.resuming and yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 500


def test_fresh_start_moves_leftovers_of_a_run_without_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    open_run_dir(_cfg(run)).release()
    prev = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(prev) == 1 and (prev[0] / "metrics.jsonl").exists() and not (run / "metrics.jsonl").exists()


@pytest.mark.parametrize("damage", ["arrays", "meta"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    arrays = _train_arrays()
    ck = Checkpointer(tmp_path / "ck")
    ck.save(1, arrays, {"i": 1})
    ck.save(2, _train_arrays(seed=1), {"i": 2})
    ck.close()
    if damage == "arrays":
        for p in sorted(p for p in (tmp_path / "ck" / "2" / "arrays").rglob("*") if p.is_file())[:3]:
            p.write_bytes(b"garbage")
    else:
        shutil.rmtree(tmp_path / "ck" / "2" / "meta")
    ck = Checkpointer(tmp_path / "ck")
    said = []
    step, out, meta = ck.restore_latest_intact(arrays, said.append)
    assert step == 1 and meta == {"i": 1}
    _assert_same(out, arrays)
    assert (tmp_path / "ck" / "damaged-2").is_dir() and ck.all_steps() == [1]
    assert any("checkpoint 2" in s and "damaged" in s for s in said)
    ck.close()


def test_second_signal_stops_at_once():
    from tina_jax.trainer import _Stop

    stop = _Stop()
    stop(2, None)
    assert stop.signal == 2
    with pytest.raises(KeyboardInterrupt, match="second signal"):
        stop(2, None)


def test_dry_run_fails_where_the_real_run_would(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    base = [sys.executable, str(root / "launch" / "train.py"), "--config", str(root / "configs" / "smollm2_arith_cpu.yaml"),
            "--dry-run", "--no-memory-plan", f"train.run_dir={tmp_path}"]
    r = subprocess.run(base + ["mesh.shape=[4,1,1]"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "needs 4 devices" in r.stderr and "xla_force_host_platform_device_count=4" in r.stderr
    r = subprocess.run(base + ["data.max_prompt_length=8000", "rollout.max_new_tokens=500"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 1 and "8500 exceeds the model's context of 8192" in r.stderr


def test_resume_of_a_run_saved_before_the_key_renames_is_accepted(tmp_path):
    """A config.yaml written before the run config took the library's names (adapter.rank, rollout.num_generations,
    grpo.beta, ...) and before keys were added is compared as today's resolved config: same run, resume accepted;
    a real change is still refused under the new key name."""
    from tina_jax.config import RENAMED

    run = tmp_path / "run"
    open_run_dir(_cfg(run)).release()
    old = yaml.safe_load((run / "config.yaml").read_text())
    for new_key, old_key in ((n, o) for o, n in RENAMED.items()):  # write it back with the old names
        *sec_new, k_new = new_key.split(".")
        node = old
        for part in sec_new:
            node = node[part]
        value = node.pop(k_new)
        sec_old, k_old = old_key.rsplit(".", 1)
        old[sec_old][k_old] = value
    del old["grpo"]["loss"], old["rollout"]["nucleus_cap"], old["adapter"]["init_std"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    _fake_checkpoint(run)
    open_run_dir(_cfg(run)).release()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(RunDirError, match=r"adapter\.r: 8 -> 4"):
        open_run_dir(_cfg(run, "adapter.r=4"))
