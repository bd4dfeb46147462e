"""bench/param_sweep.py: its configurations train the parameter counts they claim, its outputs are
written, and the whole sweep runs end to end (1 step per configuration on a tiny model)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sweep_module():
    spec = importlib.util.spec_from_file_location("param_sweep", ROOT / "bench" / "param_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(mod, *extra):
    class A:
        config = str(mod.BASE_CONFIG)
        model = None
        smoke = False
        n_eval = 200
        override: list = []
    a = A()
    for k, v in extra:
        setattr(a, k, v)
    return a


def test_configs_train_the_advertised_parameter_counts():
    from tina_jax import adapters
    from tina_jax.models import load_config as load_model_config

    mod = _sweep_module()
    mcfg = load_model_config("smollm2-135m-instruct")
    want = {"tinylora_1": 1, "tinylora_13": 13, "tinylora_105": 105, "lora_xs_r8": 210 * 64,
            "lora_r1": 30 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)), "lora_r32": 9_768_960}
    for name, n in want.items():
        a = mod._load(name, _args(mod)).adapter
        hp = {"u": a.u, "n_tie": a.n_tie, "tie_mode": a.tie_mode} if a.kind == "tinylora" else {}
        assert adapters.count_trainable(a.kind, mcfg, a.target_modules, r=a.r, alpha=a.alpha, **hp) == n, name
    assert mod._load("full", _args(mod)).adapter.kind == "none"
    # the shared recipe is pinned over the default config's (a budgeted run has no known step count)
    cfg = mod._load("lora_r32", _args(mod))
    assert cfg.optim.schedule == "constant" and cfg.grpo.prompts_per_step == 4 and cfg.optim.lr == 1e-4


def test_outputs_table_and_log_x_plot(tmp_path):
    mod = _sweep_module()
    rows = [dict(name=n, trained_params=p, lr=1e-3, steps=3, median_step_s=2.0, accuracy=acc, reward_last3=0.5,
                 entropy_last3=0.3) for n, p, acc in [("lora_r32", 9_768_960, 0.6), ("tinylora_1", 1, 0.2)]]
    mod.write_outputs({"base_accuracy": 0.115, "budget_minutes": 5, "configs": rows},
                      tmp_path / "t.md", tmp_path / "p.png")
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].startswith("| base model") and "11.5%" in lines[2]
    assert lines[3].startswith("| tinylora_1 | 1 |") and "**20.0%**" in lines[3]  # sorted by parameters
    assert lines[4].startswith("| lora_r32 | 9,768,960 |")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # 7 training processes (~15 s each on 2 cores)
def test_smoke_sweep_runs_every_configuration(tiny_chat_model_dir, tmp_path):
    import subprocess

    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "param_sweep.py"), "--smoke", "--model",
                        str(tiny_chat_model_dir), "--out", str(out), "--budget-minutes", "5"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    res = json.loads((out / "results.json").read_text())
    mod = _sweep_module()
    assert [r["name"] for r in res["configs"]] == list(mod.SWEEP)
    for r in res["configs"]:
        assert r["steps"] == 1 and r["ckpt_step"] == 1 and 0.0 <= r["accuracy"] <= 1.0, r
    assert (out / "param_sweep.md").is_file() and (out / "param_sweep.png").is_file()
