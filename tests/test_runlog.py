"""tina_jax.runlog: metrics.jsonl + TensorBoard, plots, progress bar, samples, cost line."""
from __future__ import annotations

import io
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from tina_jax.runlog import (MetricsWriter, ProgressBar, _run_figure, cost_line, format_postfix,
                              format_samples, plot_run, read_metrics)


def _tb_scalars(tb_dir):
    """{tag: [(step, value), ...]} from every tensorboardX event file (TFRecord framing parsed here)."""
    from tensorboardX.proto import event_pb2

    out = {}
    purge = []
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if ev.HasField("session_log"):
                purge.append(ev.step)
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out, purge


def test_metrics_writer_append_read_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(1, {"reward/mean": 0.5, "kl": np.float32(0.25), "n": 3, "loss": jnp.asarray(1.5)})
    w.write(2, {"reward/mean": float("nan"), "note": "hi"})
    # flushed per line: readable while the writer is open
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "reward/mean": 0.5, "kl": 0.25, "n": 3, "loss": 1.5},
                    {"step": 2, "reward/mean": None, "note": "hi"}]
    assert read_metrics(tmp_path) == rows  # a run directory works too
    with pytest.raises(ValueError, match="scalar"):
        w.write(3, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="step"):
        w.write(3, {"step": 3})
    w.close()
    scalars, _ = _tb_scalars(tmp_path / "tb")
    assert scalars["reward/mean"][0] == (1, 0.5) and math.isnan(scalars["reward/mean"][1][1])
    assert scalars["kl"] == [(1, 0.25)] and scalars["n"] == [(1, 3.0)] and scalars["loss"] == [(1, 1.5)]
    assert "note" not in scalars
    with pytest.raises(ValueError, match="closed"):
        w.write(4, {"a": 1.0})


def test_truncate_after_and_reopen(tmp_path):
    with MetricsWriter(tmp_path) as w:
        for s in range(1, 6):
            w.write(s, {"reward/mean": s / 10})
    # a killed run resumes from its step-3 checkpoint
    w = MetricsWriter(tmp_path)
    assert w.truncate_after(3) == 2
    w.write(4, {"reward/mean": 0.44})
    w.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.44)]
    _, purge = _tb_scalars(tmp_path / "tb")
    assert purge == [4]  # TensorBoard hides the old events from step 4 on


def test_read_metrics_partial_and_corrupt_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "a": 1.0}\n\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
    assert read_metrics(p) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    p.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(p)
    with pytest.raises(ValueError, match="no metrics file"):
        read_metrics(tmp_path / "missing.jsonl")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def _texts(fig):
    return [[t.get_text() for t in ax.texts] for ax in fig.axes]


def test_plot_run_with_and_without_eval(tmp_path):
    with MetricsWriter(tmp_path / "full", tensorboard=False) as w:
        for s in range(1, 21):
            m = {"reward/mean": s / 20, "completion/mean_length": 100 + s}
            if s % 5 == 0:
                m.update({"eval/greedy_accuracy": s / 40, "eval/sampled_accuracy": s / 50})
            w.write(s, m)
    out = plot_run(tmp_path / "full" / "metrics.jsonl", tmp_path / "plots" / "full.png")
    assert out == tmp_path / "plots" / "full.png"
    (wd, ht), nbytes = _png_size(out)
    assert (wd, ht) == (1500, 400) and nbytes > 10_000
    fig = _run_figure(read_metrics(tmp_path / "full"))
    assert _texts(fig) == [[], [], []]
    acc_ax = fig.axes[1]
    assert [ln.get_label() for ln in acc_ax.lines] == ["greedy", "sampled"]
    np.testing.assert_array_equal(acc_ax.lines[0].get_xdata(), [5, 10, 15, 20])
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [0.125, 0.25, 0.375, 0.5])

    with MetricsWriter(tmp_path / "noeval", tensorboard=False) as w:
        for s in range(1, 6):
            w.write(s, {"reward/mean": s / 5})
    out = plot_run(tmp_path / "noeval" / "metrics.jsonl", tmp_path / "noeval.png")
    (wd, ht), nbytes = _png_size(out)
    assert (wd, ht) == (1500, 400) and nbytes > 10_000
    assert _texts(_run_figure(read_metrics(tmp_path / "noeval"))) == [[], ["no data"], ["no data"]]


def test_progress_bar_line_mode_and_tqdm():
    m = {"reward/mean": 0.5, "reward/accuracy": 0.25, "kl": 0.0012, "completion/mean_length": 123.4,
         "time/step_s": 2.13, "throughput/tokens_per_s": 512.0, "other": 9}
    assert format_postfix(m) == "reward=0.5 acc=0.25 kl=1.20e-03 len=123 s/step=2.13 tok/s=512"
    assert format_postfix({"kl": 0.0, "completion/mean_length": 45.67}) == "kl=0 len=45.7"
    buf = io.StringIO()
    with ProgressBar(total=5, log_every=2, file=buf, interactive=False) as pb:
        for s in range(1, 6):
            pb.update(s, m)
    lines = buf.getvalue().splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["train step 2/5", "train step 4/5", "train step 5/5"]
    assert lines[0].split(" | ")[1] == format_postfix(m)
    assert lines[0].split(" | ")[2].startswith("elapsed 0:00:0")
    # StringIO is not a TTY: auto mode picks line mode
    assert ProgressBar(total=3, file=io.StringIO()).interactive is False
    buf = io.StringIO()
    with ProgressBar(total=4, initial=1, file=buf, interactive=True) as pb:
        pb.update(2, m)
        pb.update(4, m)
    text = buf.getvalue()
    assert "4/4" in text and "reward=0.5" in text and "tok/s=512" in text


def test_format_samples_truncates():
    long = "Q" * 300 + "MIDDLE" + "A" * 300
    s = format_samples(12, ["p0", long, "p2"], ["c0 \\boxed{4}", long, "c2"], [1.0, 0.0, 0.5], k=2,
                       max_chars=100)
    lines = s.splitlines()
    assert lines[0] == "=== samples at step 12 (2 of 3) ==="
    assert lines[1:4] == ["--- [0] reward=1.000", "prompt: p0", "completion: c0 \\boxed{4}"]
    assert lines[5] == "prompt: " + "Q" * 50 + " [... 506 chars ...] " + "A" * 50
    assert "MIDDLE" not in s and "p2" not in s and len(lines) == 7 and s.endswith("A" * 50 + "\n")
    with pytest.raises(ValueError, match="same length"):
        format_samples(0, ["a"], ["b", "c"], [1.0])


def test_cost_line():
    assert cost_line(1512, 1, "cpu", 1.0) == "cost: 0.42 device-hours x $1.00/h (cpu) = $0.42"
    assert cost_line(3600, 8, "H100", 2.5) == "cost: 8.00 device-hours x $2.50/h (8x H100) = $20.00"
    assert cost_line(9, 1, "cpu", 1.0) == "cost: 0.0025 device-hours x $1.00/h (cpu) = $0.00"
    with pytest.raises(ValueError):
        cost_line(10, 0, "cpu", 1.0)


def test_sft_runs_plot_loss_and_held_out_accuracy_and_the_bar_shows_the_loss(tmp_path):
    from tina_jax.runlog import SFT_PANELS, SFT_POSTFIX

    with MetricsWriter(tmp_path / "sft", tensorboard=False) as w:
        for s in range(1, 7):
            w.write(s, {"loss": 2.0 / s, "time/step_s": 1.5, **({"eval/greedy_accuracy": s / 10} if s % 3 == 0 else {})})
    out = plot_run(tmp_path / "sft" / "metrics.jsonl", tmp_path / "sft.png", panels=SFT_PANELS)
    (wd, ht), _ = _png_size(out)
    assert (wd, ht) == (1000, 400)  # two panels: no empty reward or length panel
    fig = _run_figure(read_metrics(tmp_path / "sft"), SFT_PANELS)
    assert [ax.get_title() for ax in fig.axes] == ["training loss (per target token)", "held-out accuracy"]
    assert _texts(fig) == [[], []]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2.0 / s for s in range(1, 7)])
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xdata(), [3, 6])
    m = {"loss": 0.4321, "reward/mean": 0.5, "time/step_s": 2.0, "throughput/tokens_per_s": 100.0}
    assert format_postfix(m, SFT_POSTFIX) == "loss=0.432 s/step=2 tok/s=100"
    buf = io.StringIO()
    with ProgressBar(total=2, log_every=1, file=buf, interactive=False, keys=SFT_POSTFIX) as pb:
        pb.update(1, m)
        pb.write("step 1: held-out greedy accuracy 0.500")
    assert buf.getvalue().splitlines()[0].split(" | ")[1] == "loss=0.432 s/step=2 tok/s=100"
    assert buf.getvalue().splitlines()[1] == "step 1: held-out greedy accuracy 0.500"
