"""The loop's small parts: the one console channel, hooks due every N steps and at the end."""
from __future__ import annotations

import io


def test_console_writes_above_the_open_progress_bar_and_a_callers_console_gets_every_line(capsys):
    from tina_jax.runlog import ProgressBar
    from tina_jax.trainer import Console

    buf = io.StringIO()
    say = Console(print)
    with ProgressBar(total=3, file=buf, interactive=True) as bar:
        bar.update(1, {"reward/mean": 0.5})
        say.bar = bar
        say("step 1: held-out greedy accuracy 0.250")
    assert capsys.readouterr().out == ""  # not printed through the bar's line
    assert "\nstep 1: held-out greedy accuracy 0.250\n" in "\n" + buf.getvalue().replace("\r", "\n")
    say.bar = None
    say("after")
    assert capsys.readouterr().out == "after\n"
    got = []
    own = Console(got.append)
    own.bar = ProgressBar(total=1, file=io.StringIO(), interactive=False)
    own("x")
    assert got == ["x"]
    Console(print, enabled=False)("quiet")  # processes other than the primary say nothing
    assert capsys.readouterr().out == ""


def test_hooks_are_due_every_n_steps_and_at_the_last():
    from tina_jax.trainer import Hook

    h = Hook("eval", 3, lambda run, state, step: None, at_end=True)
    assert [s for s in range(1, 11) if h.due(s, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if Hook("b", 0, h.fn, at_end=True).due(s, 10)] == [10]
    assert [s for s in range(1, 11) if Hook("s", 4, h.fn).due(s, 10)] == [4, 8]
    assert not any(Hook("never", 0, h.fn).due(s, 10) for s in range(1, 11))
