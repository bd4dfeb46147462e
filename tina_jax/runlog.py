"""What a user sees during and after a run: metrics.jsonl + TensorBoard, a progress bar, plots, samples, cost.

- :class:`MetricsWriter` appends ``{"step": s, **metrics}`` lines to ``run_dir/metrics.jsonl`` and
  scalars to TensorBoard (``run_dir/tb``); :meth:`MetricsWriter.truncate_after` drops rows of a killed
  run past the checkpoint it resumes from.
- :func:`read_metrics` / :func:`plot_run` read and plot that file (reward, held-out accuracy,
  completion length against step).
- :class:`ProgressBar` shows reward, accuracy, KL, length, step time and tokens/s (the SFT loop: loss, step
  time and tokens/s; tqdm in a terminal or notebook; one compact line every ``log_every`` steps in a
  non-interactive log such as CI); :meth:`ProgressBar.write` prints a message above the bar without breaking it.
- :func:`format_samples` and :func:`cost_line` format example completions and the run's cost.

(Named ``runlog`` rather than ``logging`` so it never shadows the standard library module.)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

__all__ = [
    "MetricsWriter", "read_metrics", "plot_run", "ProgressBar", "format_postfix", "format_samples",
    "cost_line", "METRICS_FILE", "RL_POSTFIX", "SFT_POSTFIX", "RL_PANELS", "SFT_PANELS",
]

METRICS_FILE = "metrics.jsonl"

# Keys the progress bar shows: (metrics key, short label). RL runs, and supervised (SFT) runs.
RL_POSTFIX = _POSTFIX_KEYS = (
    ("reward/mean", "reward"),
    ("reward/accuracy", "acc"),
    ("kl", "kl"),
    ("completion/mean_length", "len"),
    ("time/step_s", "s/step"),
    ("throughput/tokens_per_s", "tok/s"),
)
SFT_POSTFIX = (
    ("loss", "loss"),
    ("time/step_s", "s/step"),
    ("throughput/tokens_per_s", "tok/s"),
)


def _to_json_value(key: str, v: Any) -> Any:
    """A JSON value for one metric: numbers -> int/float (NaN/inf -> null), strings kept."""
    if isinstance(v, str) or v is None:
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    try:
        f = float(v)  # Python/NumPy scalars, 0-d and size-1 arrays
    except (TypeError, ValueError):
        raise ValueError(f"metric {key!r} = {v!r:.80} is not a scalar number or string; "
                         "reduce it (e.g. float(x.mean())) before logging") from None
    return f if math.isfinite(f) else None


def _metrics_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / METRICS_FILE if p.is_dir() else p


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl file (or of ``path/metrics.jsonl`` if ``path`` is a directory).

    A truncated last line (a process killed mid-write) is skipped; a corrupt line elsewhere raises
    ValueError with its line number.
    """
    p = _metrics_path(path)
    if not p.exists():
        raise ValueError(f"no metrics file at {p}")
    lines = p.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}:{i + 1}: not a JSON line ({e})") from None
        rows.append(row)
    return rows


class MetricsWriter:
    """Append-only metrics log: ``run_dir/metrics.jsonl`` (one JSON object per line, flushed per line)
    and, if ``tensorboard``, TensorBoard scalars in ``run_dir/tb`` (tensorboardX)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self.tb_dir = self.run_dir / "tb"
        self._tensorboard = tensorboard
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")
        self._tb = self._open_tb() if tensorboard else None

    def _open_tb(self, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(self.tb_dir), purge_step=purge_step, flush_secs=30)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append ``{"step": step, **metrics}``; numeric values also go to TensorBoard.

        Values must be scalars (Python/NumPy numbers, 0-d arrays) or strings; NaN/inf are stored as
        JSON null (and as NaN/inf in TensorBoard).
        """
        if self._file is None:
            raise ValueError("MetricsWriter is closed")
        if "step" in metrics:
            raise ValueError("metrics must not contain the key 'step' (it is passed separately)")
        step = int(step)
        row = {"step": step}
        scalars = {}
        for k, v in metrics.items():
            row[k] = _to_json_value(k, v)
            if not isinstance(v, str) and v is not None:
                scalars[k] = float(v)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, global_step=step)

    def truncate_after(self, step: int) -> int:
        """Keep only rows with ``step <= step`` in metrics.jsonl (atomically); returns rows dropped.

        Used on resume so the rows a killed run wrote after its last checkpoint are not duplicated.
        TensorBoard is reopened with ``purge_step=step + 1`` so it hides the old events past ``step``.
        """
        if self._file is None:
            raise ValueError("MetricsWriter is closed")
        step = int(step)
        self._file.close()
        rows = read_metrics(self.path) if self.path.exists() else []
        keep = [r for r in rows if int(r.get("step", -1)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._tensorboard:
            if self._tb is not None:
                self._tb.close()
            self._tb = self._open_tb(purge_step=step + 1)
        return len(rows) - len(keep)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ plots
def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


# Panels of progress.png: (title, ((metrics key, legend label, line style), ...)). RL runs, and SFT runs
# (no rollouts: training loss instead of reward, no completion lengths).
_HELD_OUT = ("held-out accuracy", (("eval/greedy_accuracy", "greedy", "o-"), ("eval/sampled_accuracy", "sampled", "s--")))
RL_PANELS = _PANELS = (
    ("mean reward", (("reward/mean", "reward/mean", "-"),)),
    _HELD_OUT,
    ("mean completion length (tokens)", (("completion/mean_length", "length", "-"),)),
)
SFT_PANELS = (
    ("training loss (per target token)", (("loss", "loss", "-"),)),
    _HELD_OUT,
)


def _run_figure(rows: Sequence[Mapping[str, Any]], panels: Sequence = RL_PANELS):
    """The ``matplotlib.figure.Figure`` of :func:`plot_run`: one 500 x 400 px panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(panels), 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (title, series) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("step")
        plotted = 0
        for key, label, style in series:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=4)
                plotted += 1
        if plotted == 0:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
        elif len(series) > 1:
            ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_run(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike, panels: Sequence = RL_PANELS) -> Path:
    """Write a PNG with panels against step; ``RL_PANELS`` (default): mean reward ("reward/mean"), held-out
    accuracy ("eval/greedy_accuracy", "eval/sampled_accuracy", points and lines) and mean completion length
    ("completion/mean_length"); ``SFT_PANELS``: training loss and held-out accuracy. A panel without data
    says "no data". Returns ``Path(out_png)``.

    Uses ``matplotlib.figure.Figure`` with an Agg canvas directly, so it neither needs a display nor
    touches pyplot's state or a notebook's backend.
    """
    fig = _run_figure(read_metrics(metrics_jsonl), panels)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# ------------------------------------------------------------------------------------ progress
def _fmt_num(v: float) -> str:
    """3 significant digits for [0.01, 10), 1 decimal for [10, 100), none for [100, 1e5), else 1.23e-03."""
    a = abs(v)
    if a == 0:
        return "0"
    if 1e-2 <= a < 10:
        return f"{v:.3g}"
    if 10 <= a < 100:
        return f"{v:.1f}"
    if 100 <= a < 1e5:
        return f"{v:.0f}"
    return f"{v:.2e}"


def format_postfix(metrics: Mapping[str, Any], keys: Sequence[tuple[str, str]] = RL_POSTFIX) -> str:
    """A compact ``label=value`` string of the metrics the progress bar shows (``keys``: (metrics key,
    label) pairs; absent keys skipped), e.g. ``"reward=0.42 acc=0.4 kl=1.20e-03 len=123 s/step=2.1 tok/s=512"``."""
    parts = []
    for key, label in keys:
        v = metrics.get(key)
        if v is None or isinstance(v, str):
            continue
        parts.append(f"{label}={_fmt_num(float(v))}")
    return " ".join(parts)


def _fmt_elapsed(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class ProgressBar:
    """Training progress: a tqdm bar (terminal or notebook) whose postfix holds reward, accuracy, KL,
    completion length, step time and tokens/s; in a non-interactive stream (CI logs) it prints one
    line ``step s/total | <postfix> | elapsed h:mm:ss`` every ``log_every`` steps and at the last step.

    Args:
      total: the number of training steps.
      initial: the step the run starts (or resumes) at.
      log_every: line interval in non-interactive mode.
      file: the stream (default ``sys.stderr``).
      interactive: force tqdm (True) or line mode (False); None: tqdm in a notebook or a TTY.
      keys: the metrics shown, (metrics key, label) pairs: ``RL_POSTFIX`` (default) or ``SFT_POSTFIX``.
    """

    def __init__(self, total: int, initial: int = 0, log_every: int = 10, file: TextIO | None = None,
                 interactive: bool | None = None, desc: str = "train", keys: Sequence[tuple[str, str]] = RL_POSTFIX):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.total, self.log_every, self.desc, self.keys = int(total), int(log_every), desc, tuple(keys)
        self.file = file if file is not None else sys.stderr
        if interactive is None:
            interactive = _in_notebook() or bool(getattr(self.file, "isatty", lambda: False)())
        self.interactive = interactive
        self._start = time.monotonic()
        self._step = int(initial)
        self._bar = None
        if interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self._step, desc=desc, file=self.file,
                             dynamic_ncols=True, unit="step")

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Move to ``step`` (the number of steps done) and show ``metrics``."""
        step = int(step)
        postfix = format_postfix(metrics, self.keys)
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(step - self._step)
        elif step % self.log_every == 0 or step >= self.total:
            print(f"{self.desc} step {step}/{self.total} | {postfix} | elapsed {_fmt_elapsed(self.elapsed_s)}",
                  file=self.file, flush=True)
        self._step = step

    def write(self, text: str) -> None:
        """Print ``text`` without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------ samples & cost
def _truncate(text: str, max_chars: int) -> str:
    """``text`` if short, else its head and tail around a ``[... N chars ...]`` marker."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return f"{text[:head]} [... {len(text) - max_chars} chars ...] {text[len(text) - tail:]}"


def format_samples(step: int, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
                   k: int = 2, max_chars: int = 500) -> str:
    """A readable block (ending in a newline, ready for ``file.write``) with the first ``k``
    (prompt, completion, reward) triples of a step; texts longer than ``max_chars`` keep their head
    and tail (a prompt's question and a completion's answer are at the end)."""
    if not (len(prompts) == len(completions) == len(rewards)):
        raise ValueError(f"prompts, completions and rewards must have the same length, got "
                         f"{len(prompts)}, {len(completions)}, {len(rewards)}")
    if k < 0 or max_chars < 1:
        raise ValueError(f"need k >= 0 and max_chars >= 1, got k={k}, max_chars={max_chars}")
    lines = [f"=== samples at step {int(step)} ({min(k, len(prompts))} of {len(prompts)}) ==="]
    for i in range(min(k, len(prompts))):
        lines.append(f"--- [{i}] reward={float(rewards[i]):.3f}")
        lines.append(f"prompt: {_truncate(prompts[i], max_chars)}")
        lines.append(f"completion: {_truncate(completions[i], max_chars)}")
    return "\n".join(lines) + "\n"


def cost_line(elapsed_s: float, num_devices: int, device_kind: str, dollars_per_device_hour: float) -> str:
    """The run's cost as device-hours x $/hour (how Tina reports it), e.g.
    ``"cost: 0.42 device-hours x $1.00/h (cpu) = $0.42"`` (``(8x H100)`` for several devices)."""
    if elapsed_s < 0 or num_devices < 1 or dollars_per_device_hour < 0:
        raise ValueError(f"need elapsed_s >= 0, num_devices >= 1, dollars_per_device_hour >= 0; got "
                         f"{elapsed_s}, {num_devices}, {dollars_per_device_hour}")
    hours = elapsed_s / 3600.0 * num_devices
    dollars = hours * dollars_per_device_hour
    hw = device_kind if num_devices == 1 else f"{num_devices}x {device_kind}"
    h = f"{hours:.2f}" if hours >= 0.01 or hours == 0 else f"{hours:.2g}"
    return f"cost: {h} device-hours x ${dollars_per_device_hour:.2f}/h ({hw}) = ${dollars:.2f}"
