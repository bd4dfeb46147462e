"""launch/*.sh and slurm.sbatch print the commands they would run with --dry-run (no cloud, no GPU needed)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dry(script: str, *args: str, **env: str) -> list[list[str]]:
    out = subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=60, check=True).stdout
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def test_tpu_pod_dry_run_lists_create_install_train_delete():
    cmds = _dry("tpu_pod.sh", "--dry-run", "all", "--", "--config", "configs/tina_open_rs2.yaml", "train.max_steps=5",
                ACCELERATOR="v6e-16", ZONE="europe-west4-a", TPU_NAME="t1", RUN_DIR="/mnt/shared/run")
    assert [c[:5] for c in cmds] == [["gcloud", "compute", "tpus", "tpu-vm", s] for s in ("create", "ssh", "ssh", "delete")]
    create, install, train, delete = cmds
    assert "--accelerator-type=v6e-16" in create and "--version=v2-alpha-tpuv6e" in create
    assert "--zone=europe-west4-a" in create and create[5] == "t1"
    assert "--worker=all" in install and "pip install" in install[-1]
    # the training command runs on every worker with the recipe, overrides and shared run dir, quoted intact
    remote = shlex.split(train[-1].split("=", 1)[1])
    assert remote[remote.index("python3"):] == ["python3", "launch/train.py", "--config", "configs/tina_open_rs2.yaml",
                                                "train.max_steps=5", "train.run_dir=/mnt/shared/run"]
    assert "--quiet" in delete
    assert _dry("tpu_pod.sh", "--dry-run", "create", ACCELERATOR="v4-32")[0][-1] == "--version=tpu-ubuntu2204-base"


def test_tpu_pod_rejects_unknown_stage():
    p = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "--dry-run", "crate"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "unknown argument 'crate'" in p.stderr


def test_multi_gpu_and_slurm_dry_runs():
    (cmd,) = _dry("multi_gpu.sh", "--dry-run", "--gpus", "4", "--mesh", "1,4,1", "--config", "configs/open_rs3_full.yaml")
    assert cmd[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3"]
    assert cmd[-4:] == ["launch/train.py", "--config", "configs/open_rs3_full.yaml", "mesh.shape=[1,4,1]"]
    (cmd,) = _dry("slurm.sbatch", "--dry-run", "--config", "configs/tina_open_rs3.yaml", MESH="-1,2,1")
    assert cmd[0] == "srun" and cmd[-3:] == ["--config", "configs/tina_open_rs3.yaml", "mesh.shape=[-1,2,1]"]
