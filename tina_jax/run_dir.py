"""The run directory's guard: one live trainer per directory, never two runs mixed, no resume under a config
that makes the checkpoint meaningless, and the original ``config.yaml`` kept until a resume is accepted.

    guard = open_run_dir(cfg, resume=True)   # before anything is loaded; raises RunDirError with the fix
    ...
    guard.release()                          # at exit (the lock also dies with the process)

Rules:
- a second trainer on the same directory is refused while the first holds the lock (``fcntl.flock`` on
  ``<run_dir>/.lock``: released by the kernel when the holder exits, even on SIGKILL);
- ``--no-resume`` into a directory with checkpoints is refused unless ``overwrite`` (then the old run is
  moved aside to ``<run_dir>.replaced-<time>``, never deleted);
- a resume whose resolved config differs from the saved one in anything but :data:`MAY_CHANGE` is refused
  with the differing keys (adapter kind or rank, the model, G, the learning rate ... change what a
  checkpoint means);
- a fresh start into a directory with leftovers of a run that saved no checkpoint moves them aside to
  ``previous-<time>/`` (metrics of two runs are never interleaved).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunDirError", "RunGuard", "open_run_dir", "MAY_CHANGE", "config_diff"]

# Keys a resumed run may change: how long it runs and what it logs or evaluates, not what it trains.
MAY_CHANGE = ("train.max_steps", "train.eval_every", "train.eval_samples", "train.eval_temperature",
              "train.eval_max_new_tokens", "train.eval_batch_size", "train.save_every", "train.keep_last",
              "train.log_every", "train.sample_every", "train.plot", "train.tensorboard",
              "train.cost_per_device_hour", "train.time_limit_minutes", "eval.", "data.eval", "data.eval_split",
              "data.n_eval", "optim.schedule_steps")
_LEFTOVERS = ("metrics.jsonl", "samples.log", "tb", "progress.png", "summary.json", "data_report.json", "eval")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _may_change(key: str) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) or key.startswith(m + ".") for m in MAY_CHANGE)


def _has_checkpoints(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


@dataclasses.dataclass
class RunGuard:
    run_dir: Path
    resuming: bool
    _fd: int | None = None

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _lock(run_dir: Path) -> int:
    import fcntl

    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "another process"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by a live trainer ({holder}); wait for it or stop it, or choose "
                          "another train.run_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def open_run_dir(cfg, resume: bool = True, overwrite: bool = False, primary: bool = True) -> RunGuard:
    """Check and claim ``cfg.train.run_dir`` (see the module docstring); writes ``config.yaml`` once the run is
    accepted. Only the primary process locks and writes; the others just learn whether it resumes."""
    from tina_jax import config as config_lib

    run_dir = Path(cfg.train.run_dir)
    steps = _has_checkpoints(run_dir) if run_dir.is_dir() else []
    if not primary:
        return RunGuard(run_dir, resuming=bool(steps) and resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock(run_dir)
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if steps and not resume:
            if not overwrite:
                raise RunDirError(f"{run_dir} holds checkpoints of another run (steps {steps[:5]}"
                                  f"{'...' if len(steps) > 5 else ''}); drop --no-resume to continue it, choose another "
                                  "train.run_dir, or pass --overwrite to move the old run aside")
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
            aside.mkdir()
            for p in list(run_dir.iterdir()):
                if p.name != ".lock":
                    shutil.move(str(p), aside / p.name)
            print(f"moved the previous run in {run_dir} to {aside}")
            steps = []
        saved = run_dir / "config.yaml"
        if steps:
            if saved.is_file():
                old = yaml.safe_load(saved.read_text()) or {}
                try:  # a config saved before keys were renamed or added: compare it resolved as today's
                    old = config_lib.from_dict(config_lib.upgrade_keys(old)).to_dict()
                except config_lib.ConfigError:
                    pass
                bad = [(k, a, b) for k, a, b in config_diff(old, cfg.to_dict()) if not _may_change(k)]
                if bad:
                    lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in bad[:20])
                    raise RunDirError(
                        f"{run_dir} holds checkpoints made under a different config; resuming would continue "
                        f"them under this one:\n{lines}\nrestore these values, choose another train.run_dir, or "
                        "pass --no-resume --overwrite to start over (only train.*, eval.* and data.eval* "
                        "settings may change on resume)")
        else:
            left = [n for n in _LEFTOVERS if (run_dir / n).exists()]
            if left:  # a run that saved no checkpoint: keep its files, but never interleave two runs
                prev = run_dir / f"previous-{stamp}"
                prev.mkdir()
                for n in left:
                    shutil.move(str(run_dir / n), prev / n)
        config_lib.dump_config(cfg, saved)
    except BaseException:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return RunGuard(run_dir, resuming=bool(steps), _fd=fd)
