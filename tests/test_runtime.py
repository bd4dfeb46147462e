"""The persistent compilation cache the launchers turn on (tina_jax.runtime)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROGRAM = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp
    from tina_jax import runtime
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.monitoring.register_event_listener(lambda name, **kw: print("EVENT", name))
    print("DIR", runtime.enable_compilation_cache(sys.argv[1] if sys.argv[1] != "none" else None))
    f = jax.jit(lambda x: jnp.sin(x) @ x)
    print("OUT", float(f(jnp.ones((8, 8)))[0, 0]))
""")


def _run(tmp_path: Path, setting: str, env_dir: str | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "TINA_JAX_CACHE": str(tmp_path / "home_cache")}
    if env_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = env_dir
    out = subprocess.run([sys.executable, "-c", _PROGRAM, setting], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_auto_stores_compiled_programs_under_the_project_cache_and_a_second_process_reads_them(tmp_path):
    first = _run(tmp_path, "auto")
    xla = tmp_path / "home_cache" / "xla"
    assert f"DIR {xla}" in first
    entries = sorted(p.name for p in xla.iterdir())
    assert any(name.startswith("jit_") for name in entries), entries
    assert "EVENT /jax/compilation_cache/cache_hits" not in first
    second = _run(tmp_path, "auto")
    assert "EVENT /jax/compilation_cache/cache_hits" in second  # loaded, not compiled
    assert first.split("OUT")[1] == second.split("OUT")[1]


def test_null_turns_it_off_and_a_users_own_directory_wins(tmp_path):
    assert "DIR None" in _run(tmp_path, "none")
    assert not (tmp_path / "home_cache" / "xla").exists()
    own = tmp_path / "mine"
    assert f"DIR {own}" in _run(tmp_path, "auto", env_dir=str(own))
    assert not (tmp_path / "home_cache" / "xla").exists() and any(own.iterdir())
