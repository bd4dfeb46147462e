"""Helpers shared by the tests that train through ``launch/train.py`` (one copy, not one per test file):
tiny chat-model directories, starting the trainer, reading ``metrics.jsonl`` and comparing two runs' metrics."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "launch" / "train.py"
# Wall-clock keys differ between runs; everything else must match exactly (fp32 tolerance).
TIMING = ("time/", "throughput/")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def smollm2_tokenizer_files(dest: Path) -> None:
    """Copy SmolLM2's tokenizer and chat template (converted from the embedded GGUF once) into ``dest``."""
    from conftest import smollm2_tokenizer_dir

    src = smollm2_tokenizer_dir()
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, Path(dest) / f)


def save_tiny_chat_model(dest: Path, **config) -> Path:
    """A tiny random Llama (2 layers, hidden 32, SmolLM2's vocabulary) saved with SmolLM2's tokenizer files:
    a real chat model's plumbing at toy cost. ``config`` overrides LlamaConfig fields (e.g. initializer_range)."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(**{**dict(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, rope_theta=100000.0,
                                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2), **config})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(str(dest), safe_serialization=True)
    smollm2_tokenizer_files(dest)
    return Path(dest)


def train_env(devices: int | None = None, **extra: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", **extra)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def start_train(config: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``launch/train.py --config CONFIG ARGS`` in the background, stdout and stderr merged."""
    return subprocess.Popen([sys.executable, str(TRAIN), "--config", str(config), *args], env=env or train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_cli(config: Path, args: list[str], devices: int | None = None, timeout: float = 600
              ) -> subprocess.CompletedProcess:
    """``launch/train.py --config CONFIG ARGS`` to completion (stdout and stderr apart)."""
    return subprocess.run([sys.executable, str(TRAIN), "--config", str(config), *args], env=train_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def metric_rows(run_dir: Path) -> list[dict]:
    """The complete rows of ``run_dir/metrics.jsonl`` (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def train_steps(run_dir: Path) -> int:
    return sum(1 for r in metric_rows(run_dir) if "loss" in r)


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 300) -> None:
    t0 = time.time()
    while train_steps(run_dir) < steps:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < timeout, "training did not progress"
        time.sleep(0.05)


def comparable(rows: list[dict]) -> dict[int, dict]:
    """step -> every logged key but the wall-clock ones (rows of one step merged)."""
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["step"], {}).update({k: v for k, v in r.items() if not k.startswith(TIMING)})
    return out


def assert_same_metrics(got: dict[int, dict], want: dict[int, dict], rel: float = 1e-5) -> None:
    """Same steps, same keys, every finite number within ``rel`` (relative, absolute below 1), the rest equal."""
    assert sorted(got) == sorted(want), "metrics.jsonl must hold each step once"
    for step in want:
        assert set(got[step]) == set(want[step]), step
        for k, v in want[step].items():
            if isinstance(v, float) and math.isfinite(v):
                assert abs(got[step][k] - v) <= rel * max(1.0, abs(v)), (step, k, got[step][k], v)
            else:
                assert got[step][k] == v, (step, k)
