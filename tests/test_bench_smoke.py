"""The accelerator suite's smoke mode runs on CPU (so a refactor cannot silently break it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_suite_smoke(tmp_path):
    out = tmp_path / "suite.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "device_suite.py"), "--smoke", "--repeats", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["workloads"]) == {"rollout", "grpo_step", "tinylora_7b"}
    assert res["workloads"]["tinylora_7b"]["trainable_params"] == 1  # 2 tiny layers x 7 modules, n_tie=16
    assert all(w["step_s" if "step_s" in w else "rollout_s"] > 0 for w in res["workloads"].values())
