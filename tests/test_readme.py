"""The README's `grpo_step` example runs as written (slow: it loads the real SmolLM2)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_grpo_step_example_runs(capsys):
    exec(compile(_block_after("### Calling `grpo_step` yourself"), "README.md", "exec"), {})
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert [l.split()[0] for l in lines[-3:]] == ["0", "1", "2"]
