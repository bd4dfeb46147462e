"""Process-level settings: JAX's persistent compilation cache, and giving freed host memory back.

A CPU run of the default recipe compiles ~30 programs before its first step; with the cache on, a second run
of the same recipe (or a resumed one) loads them from disk instead (BENCHMARKS.md section 14). The cache is
JAX's own (``jax_compilation_cache_dir``); programs that compile in under a second are not stored.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "release_free_memory"]


def enable_compilation_cache(setting: str | None = "auto") -> Path | None:
    """Turn on JAX's persistent compilation cache; returns the directory in use, or None.

    ``setting``: ``"auto"`` = ``$TINA_JAX_CACHE/xla`` (default ``~/.cache/tina_jax/xla``), a directory path,
    or None (off). A cache directory the user already chose (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config.update("jax_compilation_cache_dir", ...)``) is kept as it is.
    """
    if setting is None:
        return None
    current = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if current:
        return Path(current)
    if setting == "auto":
        from tina_jax.models.loading import cache_dir

        path = cache_dir() / "xla"
    else:
        path = Path(setting).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"train.compilation_cache: cannot create {path} ({e}); set another directory or null "
                         "to compile without the cache") from e
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_free_memory() -> bool:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim``); returns whether it ran.

    On CPU, XLA's buffers (and the compiler's working memory) come from malloc, and glibc keeps what is freed,
    so the model load's and the first compilations' freed memory stays resident and the next step's buffers land
    on top of it. The trainer calls this after setup and after every step; a call costs milliseconds to tens
    of milliseconds next to a step of seconds. A no-op where the C library is not glibc.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
