"""Multi-process runs (TPU pods, multi-node GPU, several CPU processes): start-up and host <-> global arrays.

One training run is one SPMD program over every device of every process. What each process does:

- ``initialize(...)`` joins the run before any JAX computation: explicit ``--coordinator HOST:PORT
  --num-processes N --process-id I``, or what JAX itself detects (``JAX_COORDINATOR_ADDRESS`` /
  ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, SLURM, Open MPI, a Cloud TPU VM), or nothing (one process).
- Every process holds the same small host-side batch (prompt ids, sampled token ids: kilobytes); the
  rollout and the GRPO step run as global computations whose inputs are placed from it with
  ``jax.make_array_from_process_local_data``, so each device receives only its rows.
- The expensive host work, reward scoring, is split: process ``p`` scores whole prompt groups
  ``rows_of(n_groups)`` (a group of G completions never spans processes) and ``gather_rows`` assembles
  the scores on every process, so every process then computes identical metrics and advantages.
- Evaluation is split the same way: generation over all devices, grading of each process's share of the
  rows (``score_split``, ``gather_json``), results written by the primary process.
- Only the primary process (index 0) writes logs, TensorBoard, plots and samples; every process takes
  part in Orbax saves and restores.
- Weights: with a mesh, ``load_model`` reads each device's block straight from the safetensors slices,
  so a process reads only what its own devices hold.
With one process every function here is the identity, so single-process code paths do not change.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

__all__ = ["initialize", "is_primary", "rows_of", "gather_rows", "any_process", "to_host", "place",
           "detected_cluster"]


def detected_cluster() -> str | None:
    """The multi-process environment JAX would auto-detect here, or None (a plain single process)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and env.get("SLURM_JOB_ID"):
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    try:  # JAX's own check (reads /sys, no network); a pod slice initialises from the metadata server
        from jax._src.clusters.cloud_tpu_cluster import running_in_cloud_tpu_vm
    except ImportError:  # pragma: no cover - private location moved
        running_in_cloud_tpu_vm = False
    if running_in_cloud_tpu_vm and not env.get("TPU_SKIP_MDS_QUERY"):
        return "cloud_tpu"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> bool:
    """Join a multi-process run (``jax.distributed.initialize``); call before any JAX computation.

    Explicit arguments win; otherwise JAX's own detection is used when ``detected_cluster()`` finds an
    environment; otherwise nothing happens (one process). Returns True when the distributed system was
    initialised. On CPU the cross-process collectives use gloo.
    """
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ValueError("--coordinator, --num-processes and --process-id go together "
                         f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, "
                         f"process_id={process_id!r}); give all three or none")
    if coordinator is None and detected_cluster() is None:
        return False
    if num_processes is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}) and --num-processes >= 1, "
                             f"got process_id={process_id}, num_processes={num_processes}")
        if ":" not in coordinator:
            raise ValueError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU backend
    kw = {} if coordinator is None else dict(coordinator_address=coordinator, num_processes=num_processes,
                                             process_id=process_id)
    if local_device_ids is not None:
        kw["local_device_ids"] = list(local_device_ids)
    jax.distributed.initialize(**kw)
    return True


def is_primary() -> bool:
    """True on the process that writes logs, plots and samples (process 0)."""
    return jax.process_index() == 0


def rows_of(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """``[lo, hi)`` of ``n`` items (prompt groups, eval problems) that process ``index`` handles: contiguous,
    as even as possible (the first ``n % count`` processes take one more)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    q, r = divmod(n, count)
    lo = index * q + min(index, r)
    return lo, lo + q + (index < r)


def gather_rows(local: Mapping[str, Any], n: int, per_item: int = 1) -> dict[str, np.ndarray]:
    """Concatenate every process's ``rows_of(n)`` part of each array (``per_item`` rows per item, e.g.
    G rows per prompt group) into the full ``n * per_item`` rows, identical on every process."""
    local = {k: np.asarray(v) for k, v in local.items()}
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    width = -(-n // jax.process_count()) * per_item  # pad every part to the largest so shapes agree
    padded = {k: np.concatenate([v, np.zeros((width - len(v),) + v.shape[1:], v.dtype)]) for k, v in local.items()}
    stacked = multihost_utils.process_allgather(padded)  # [P, width, ...]
    out = {}
    for k, v in stacked.items():
        parts = []
        for p in range(jax.process_count()):
            lo, hi = rows_of(n, p)
            parts.append(v[p, :(hi - lo) * per_item])
        out[k] = np.concatenate(parts)
    return out


def score_split(fn: Callable[..., Any], n_items: int, per_item: int, **fields: Sequence) -> Any:
    """Call ``fn(**fields_part)`` on this process's items (rows ``rows_of(n_items)`` x ``per_item``) and
    gather the results: ``fn`` returns an array-like or a tuple ``(array-like, {name: array-like})``."""
    lo, hi = rows_of(n_items)
    part = {k: v[lo * per_item:hi * per_item] for k, v in fields.items()}
    res = fn(**part)
    if isinstance(res, tuple):
        main, extra = res
        got = gather_rows({"_": np.asarray(main, np.float32),
                           **{f"x/{k}": np.asarray(v, np.float32) for k, v in extra.items()}}, n_items, per_item)
        return got["_"], {k[2:]: v for k, v in got.items() if k.startswith("x/")}
    return gather_rows({"_": np.asarray(res)}, n_items, per_item)["_"]


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any (stop signals, time limits: all stop together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def to_host(x: Any) -> np.ndarray:
    """The full value of a (possibly multi-process) array as NumPy, on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a host array every process holds in full: each process hands over only the
    slices its own devices hold (``jax.make_array_from_process_local_data`` with the global shape)."""
    host = np.asarray(host)
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


class NullWriter:
    """Stands in for the metrics writer and the progress stream on processes other than the primary."""

    def write(self, *args, **kwargs) -> None:
        return None

    def truncate_after(self, step: int) -> int:
        return 0

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def put(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works across processes: leaves already laid out as
    asked stay; others (host or single-device arrays with the same value on every process, typed PRNG
    keys included) are placed with ``place``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sh):
        if isinstance(x, jax.Array) and x.sharding == sh:
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(place(np.asarray(jax.random.key_data(x)), sh), impl=impl)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda a: a, out_shardings=sh)(x)
        return place(np.asarray(x), sh)

    return jax.tree.map(one, tree, shardings)


def gather_json(obj: Any) -> list:
    """Every process's JSON-serialisable ``obj``, in process order, on every process (``[obj]`` alone)."""
    if jax.process_count() == 1:
        return [obj]
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([len(data)], np.int64)).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:len(data)] = data
    parts = multihost_utils.process_allgather(buf)
    return [json.loads(bytes(p[:int(n)]).decode()) for p, n in zip(parts, sizes)]


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)`` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
