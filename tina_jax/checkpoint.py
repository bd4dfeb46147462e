"""Checkpoints: one thin wrapper over an Orbax ``CheckpointManager``.

A checkpoint at step ``s`` is the directory ``<directory>/<s>/`` with three items:

- ``arrays``: a pytree of ``jax.Array`` / ``np.ndarray`` leaves (the trainer passes
  ``{"trainable", "opt_state", "rng": jax.random.key_data(rng), "step"}``; never the frozen base weights),
  written with ``ocp.args.StandardSave`` (tensorstore, one file set per array, sharded arrays written
  shard by shard);
- ``meta``: a JSON dict (data-loader position, config hash, wall time, ...), ``ocp.args.JsonSave``;
- ``metrics``: the JSON scalars passed to :meth:`Checkpointer.save`, written by Orbax itself and used
  to pick the best checkpoint.

Retention keeps the ``keep_last`` newest checkpoints plus the single best one by
``metrics[best_metric]`` (even if older). Orbax writes each step into ``<s>.orbax-checkpoint-tmp-*``
and renames it when complete, so a process killed mid-save leaves the previous checkpoints intact;
stray temporary directories are ignored when listing steps and removed when a ``Checkpointer`` opens
the directory.

Example::

    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=3)
    ckpt.save(step, {"trainable": p, "opt_state": o, "rng": jax.random.key_data(k), "step": s},
              meta={"loader": loader.get_state()}, metrics={"eval/greedy_accuracy": 0.41})
    arrays, meta = ckpt.restore(None, like=arrays)   # latest step, same tree and shardings as `like`
    ckpt.close()
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["Checkpointer", "KeepBest", "abstract_like"]

_ARRAYS = "arrays"
_META = "meta"


def _metric_value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    """``metrics[key]`` as a finite float, or None when absent / not finite."""
    if not metrics or key not in metrics:
        return None
    try:
        v = float(metrics[key])
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _best_index(metrics_list: Sequence[Mapping[str, Any] | None], key: str, mode: str) -> int | None:
    """Index of the best entry by ``metrics[key]`` (``mode`` "max" or "min"); ties go to the latest.

    Entries without a finite ``key`` are never best; None if no entry has it.
    """
    best, best_i = None, None
    for i, m in enumerate(metrics_list):
        v = _metric_value(m, key)
        if v is None:
            continue
        if best is None or (v >= best if mode == "max" else v <= best):
            best, best_i = v, i
    return best_i


@dataclasses.dataclass
class KeepBest(ocm.PreservationPolicy):
    """Orbax preservation policy: keep the single checkpoint with the best ``metrics[key]``.

    Unlike ``ocm.BestN`` it ignores checkpoints whose metrics lack ``key`` (instead of raising in the
    metric function), and keeps nothing when no checkpoint has it.
    """

    key: str
    mode: Literal["max", "min"] = "max"

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        i = _best_index([c.metrics for c in checkpoints], self.key, self.mode)
        return [j == i for j in range(len(checkpoints))]


def abstract_like(tree: Any) -> Any:
    """The restore target for ``tree``: ``jax.Array`` leaves become ``jax.ShapeDtypeStruct`` with the
    same shape, dtype and sharding (so a multi-device restore places each shard directly); other
    leaves (``ShapeDtypeStruct``, ``np.ndarray``, Python scalars) are kept as they are.
    """

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


def _json_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str):
            raise ValueError(f"metrics keys must be strings, got {k!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metrics[{k!r}] = {v!r:.80} is not a scalar number; pass only scalars "
                             "(call float() / .item() on arrays)") from None
    return out


class Checkpointer:
    """Save / restore training checkpoints under one directory (see the module docstring).

    Args:
      directory: where the step directories live (created if missing).
      keep_last: how many of the newest checkpoints to keep (>= 1).
      keep_best: also keep the best checkpoint by ``metrics[best_metric]``, however old.
      best_metric: the metric key ranking checkpoints; saves without it are never "best".
      best_mode: "max" (higher is better) or "min".
      async_save: write in a background thread (``save`` returns once arrays are copied to host;
        call :meth:`wait` before reading the directory or exiting). Default False: ``save`` returns
        when the checkpoint is committed.
    """

    def __init__(self, directory: str | Path, keep_last: int = 3, keep_best: bool = True,
                 best_metric: str = "eval/greedy_accuracy", best_mode: Literal["max", "min"] = "max",
                 async_save: bool = False):
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1 (the checkpoint to resume from), got {keep_last!r}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = Path(directory).expanduser().resolve()
        self.keep_last, self.keep_best = keep_last, keep_best
        self.best_metric, self.best_mode = best_metric, best_mode
        policies: list[Any] = [ocm.LatestN(n=keep_last)]
        if keep_best:
            policies.append(KeepBest(key=best_metric, mode=best_mode))
        options = ocp.CheckpointManagerOptions(
            # Orbax writes the metrics item only when `best_fn` is set; retention is decided by
            # `preservation_policy` alone (it may not be combined with max_to_keep & co).
            best_fn=self._score,
            best_mode=best_mode,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options)
        # Orbax removes half-written `<step>.orbax-checkpoint-tmp-*` directories in a background future;
        # wait for it so a caller never sees (or races with) a stray one.
        cleanup = getattr(self._mgr, "_cleanup_tmp_directory_future", None)
        if cleanup is not None and hasattr(cleanup, "result"):
            cleanup.result()

    def _score(self, metrics: Mapping[str, Any] | None) -> float:
        v = _metric_value(metrics, self.best_metric)
        if v is None:
            return -math.inf if self.best_mode == "max" else math.inf
        return v

    # ----------------------------------------------------------------------------------- queries
    def all_steps(self) -> list[int]:
        """Committed checkpoint steps, ascending."""
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None if there is none."""
        return self._mgr.latest_step()

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with ``step`` (None if none were)."""
        return self._mgr.metrics(step)

    def best_step(self) -> int | None:
        """The kept step with the best ``metrics[best_metric]`` (ties: the latest), or None if no kept
        checkpoint has that metric."""
        steps = self.all_steps()
        i = _best_index([self._mgr.metrics(s) for s in steps], self.best_metric, self.best_mode)
        return None if i is None else steps[i]

    # ------------------------------------------------------------------------------- save/restore
    def save(self, step: int, arrays: Any, meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Write checkpoint ``step``; returns False (nothing written) if ``step`` already exists, or if
        it is not newer than the latest step and ``force`` is False.

        Args:
          step: the training step (int >= 0).
          arrays: pytree of ``jax.Array`` / ``np.ndarray`` / scalar leaves. Typed PRNG keys must be
            passed as ``jax.random.key_data(key)`` (uint32).
          meta: JSON-serialisable dict stored next to the arrays.
          metrics: scalar metrics of this step; ``metrics[best_metric]`` ranks checkpoints.
          force: save even if ``step`` <= the latest saved step.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for leaf in jax.tree.leaves(arrays):
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                raise ValueError("arrays holds a typed PRNG key; save jax.random.key_data(key) instead and "
                                 "rebuild it with jax.random.wrap_key_data after restore")
        try:
            meta_json = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta must be a JSON-serialisable dict: {e}") from None
        if step in self._mgr.all_steps():
            return False
        return bool(self._mgr.save(
            step,
            args=ocp.args.Composite(**{_ARRAYS: ocp.args.StandardSave(arrays),
                                       _META: ocp.args.JsonSave(meta_json)}),
            metrics=_json_metrics(metrics),
            force=force,
        ))

    def restore(self, step: int | None, like: Any) -> tuple[Any, dict]:
        """Read checkpoint ``step`` (None: the latest) as ``(arrays, meta)``.

        ``like`` gives the tree structure (namedtuples, empty optax states, ...), shapes, dtypes and
        placement: a pytree of ``jax.Array`` (restored onto the same shardings), ``jax.ShapeDtypeStruct``
        (with ``sharding=...`` for a mesh; without, the default device), ``np.ndarray`` or scalars.
        Orbax casts to ``like``'s dtypes. ``like=None`` restores the saved tree as Orbax sees it (dicts
        and lists; namedtuples are not rebuilt).

        Raises:
          ValueError: no checkpoint (at ``step``), or ``like`` does not match the saved tree/shapes.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise ValueError(f"no checkpoint to restore in {self.directory}")
        step = int(step)
        if step not in self._mgr.all_steps():
            raise ValueError(f"no checkpoint for step {step} in {self.directory}; "
                             f"available: {self.all_steps()}")
        target = None if like is None else abstract_like(like)
        out = self._mgr.restore(step, args=ocp.args.Composite(**{
            _ARRAYS: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}))
        return out[_ARRAYS], dict(out[_META])

    def restore_latest_intact(self, like: Any, console=print) -> tuple[int, Any, dict] | None:
        """``(step, arrays, meta)`` of the newest checkpoint that restores; None if there is none.

        A checkpoint that fails to restore (truncated arrays, missing metadata, ...) is moved aside to
        ``damaged-<step>`` in the same directory (kept for inspection, never deleted) with a message, and the
        next older one is tried. A mismatch with ``like`` in every checkpoint (a changed model or adapter)
        raises the last error instead of discarding them all.
        """
        import shutil

        steps = self.all_steps()
        errors = []
        for step in reversed(steps):
            try:
                arrays, meta = self.restore(step, like)
                if errors:
                    console(f"resuming from step {step}, the newest intact checkpoint")
                return step, arrays, meta
            except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds for damaged files
                errors.append(e)
                src = self.directory / str(step)
                if not src.is_dir():
                    raise
                dst = self.directory / f"damaged-{step}"
                n = 1
                while dst.exists():
                    n += 1
                    dst = self.directory / f"damaged-{step}.{n}"
                shutil.move(str(src), dst)
                console(f"checkpoint {step} in {self.directory} is damaged ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); moved it to {dst.name}")
                self._mgr.reload()
        if errors and len(errors) == len(steps):
            raise ValueError(f"no checkpoint in {self.directory} restores (last error: {type(errors[-1]).__name__}: "
                             f"{str(errors[-1]).splitlines()[0][:300] if str(errors[-1]) else ''}); the damaged ones "
                             "were moved to damaged-<step>") from errors[-1]
        return None

    # -------------------------------------------------------------------------------- lifecycle
    def wait(self) -> None:
        """Block until pending (async) saves are committed and old checkpoints are deleted."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager's resources."""
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpointer({str(self.directory)!r}, keep_last={self.keep_last}, keep_best={self.keep_best}, "
                f"best_metric={self.best_metric!r}, best_mode={self.best_mode!r})")
