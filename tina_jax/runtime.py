"""Process-level settings applied before anything compiles: JAX's persistent compilation cache.

A CPU run of the default recipe compiles ~30 programs (~2 minutes on 2 cores) before its first step; with the
cache on, a second run of the same recipe (or a resumed one) loads them from disk instead. The cache is
JAX's own (``jax_compilation_cache_dir``); programs that compile in under a second are not stored.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache"]


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
