"""The persistent compilation cache the launchers turn on (tina_jax.runtime)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
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


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc_trim")
def test_release_free_memory_gives_a_freed_heap_back():
    """A freed 400 MB of small malloc chunks stays resident under glibc until released."""
    import ctypes
    import ctypes.util

    from tina_jax import runtime

    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1e3

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KB chunks (below the mmap threshold: heap memory), each followed by a small pin that stays allocated,
    # so the freed chunks are holes inside the heap that free() never gives back on its own
    chunks, pins = [], []
    for _ in range(6400):
        chunks.append(libc.malloc(64 * 1024))
        pins.append(libc.malloc(64))
    for c in chunks:
        ctypes.memset(c, 1, 64 * 1024)  # touch: resident
    before = rss_mb()
    for c in chunks:
        libc.free(c)
    freed = rss_mb()
    assert runtime.release_free_memory()
    after = rss_mb()
    for p in pins:
        libc.free(p)
    assert freed > before - 100, (before, freed)  # glibc kept the freed chunks resident
    assert after < freed - 300, (freed, after)
