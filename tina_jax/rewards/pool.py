"""A small pool of checker processes with a hard per-item timeout.

Answer checking (math-verify: LaTeX parsing plus SymPy comparison) can take unbounded time on
adversarial completions: ``\\boxed{9^{9^{9^{9^{9}}}}}``, thousands of nested braces, megabytes
of text. Python cannot interrupt a thread stuck in C code, and math-verify's own
``signal.alarm`` timeouts only work in the main thread and cannot interrupt C code either. So
every check runs in a worker *process*; the parent waits at most ``timeout`` seconds per item,
then kills the worker (SIGKILL), scores the item with a fallback value, logs a warning and starts
a replacement. A worker whose check raises scores the fallback too (with a warning) and stays.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot cancel one running task, and a
stuck task blocks its worker forever. This pool keeps one process plus one duplex
``multiprocessing`` pipe per worker, so each worker can be killed and replaced on its own.

Each worker is a fresh interpreter (``python -c``, started with ``subprocess``), like the
``"spawn"`` start method and never ``fork``: JAX in the parent is multithreaded and must not be
forked. Unlike multiprocessing's spawn and forkserver, this does not re-import the caller's
``__main__`` module in every worker (for a training script that would load JAX and transformers
into each checker and make every replacement slow). The worker gets the parent's ``sys.path``
through ``PYTHONPATH``, so checkers defined in any importable module work. Workers run in their
own session (a terminal's Ctrl-C goes to the parent only), exit when the parent dies, and see
``JAX_PLATFORMS=cpu`` and no CUDA devices, so they can never take accelerator memory.

The module keeps one lazily created pool per process (:func:`get_pool`), with
``min(4, usable CPUs)`` workers; :func:`shutdown` stops it (also registered with ``atexit``).
POSIX only.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

__all__ = ["CheckerPool", "default_num_workers", "get_pool", "shutdown"]

# How long a fresh worker may take to import its modules and report ready.
_STARTUP_TIMEOUT_S = 120.0
# A freshly started worker that dies before reporting ready this many times in a row means the
# worker cannot start at all (broken environment): raise instead of restarting forever.
_MAX_START_FAILURES = 3
_WORKER_CMD = "from tina_jax.rewards.pool import _worker_entry; _worker_entry()"


def default_num_workers() -> int:
    """``min(4, number of CPUs this process may run on)``, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _warm_up() -> None:
    """Runs once in each worker before it reports ready.

    Imports math-verify (so the first check does not pay the import) and quiets two loggers that
    would otherwise flood stderr from every worker: latex2sympy2's deprecation warning for
    ``NormalizationConfig(equations=True)`` (open-r1's configuration, kept on purpose) and
    math-verify's timeout warnings, which print the whole (possibly megabyte) input. The parent
    logs its own, truncated, warning for every item that fails.
    """
    for name in ("latex2sympy2_extended", "math_verify"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import math_verify  # noqa: F401
    except ImportError:  # the pool also runs other checkers; math.py reports the missing package
        pass


def _exit_with_parent(parent_pid: int) -> None:
    """Watchdog thread: ends the worker once its parent is gone, even if the main thread is stuck
    in C code (os._exit does not wait for it)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_entry() -> None:
    """Entry point of ``python -c``: ``argv = [-c, connection fd, parent pid]``."""
    conn = mp_connection.Connection(int(sys.argv[1]))
    threading.Thread(target=_exit_with_parent, args=(int(sys.argv[2]),), daemon=True).start()
    _worker_main(conn)


def _worker_main(conn: mp_connection.Connection) -> None:
    """Worker loop: receive ``(fn, args)``, reply ``("ok", result)`` or ``("err", message)``."""
    _warm_up()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - any failure of a check is reported, not fatal
            reply = ("err", f"{type(e).__name__}: {_short(str(e))}")
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            conn.send(("err", f"result could not be pickled: {type(e).__name__}: {_short(str(e))}"))
        except (BrokenPipeError, OSError):
            return


def _short(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, for log lines about (possibly huge) inputs."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text)} chars]"


class _Worker:
    """One worker process, the parent's end of its pipe, and its state."""

    def __init__(self) -> None:
        parent_conn, child_conn = mp.Pipe(duplex=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        # Importing tina_jax imports JAX. Should anything initialise a JAX backend in a worker,
        # it must be the CPU: a checker must never take accelerator memory.
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        fd = child_conn.fileno()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CMD, str(fd), str(os.getpid())],
                pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            child_conn.close()  # the parent must not hold the child's end: EOF shows a death
        self.conn = parent_conn
        self.pid = self.process.pid
        self.ready = False
        self.started_at = time.monotonic()
        self.task: tuple[int, float] | None = None  # (item index, deadline)

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        """Kills the process (SIGKILL: works even when it is stuck in C code) and reaps it."""
        try:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            logger.warning("reward checker worker %s did not exit after SIGKILL", self.pid)
        finally:
            self.conn.close()

    def stop(self) -> None:
        """Asks an idle worker to exit, then makes sure it did (a busy or starting one is killed)."""
        if not self.ready or self.task is not None:
            self.kill()
            return
        try:
            self.conn.send(None)
            self.process.wait(timeout=1.0)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class CheckerPool:
    """Worker processes that run picklable functions with a hard per-item timeout.

    Args:
      num_workers: number of worker processes; default :func:`default_num_workers`.

    The workers start lazily, on the first :meth:`map` (or :meth:`start`). One :meth:`map` runs at
    a time (a lock serialises callers). Use :meth:`close` (or the context manager) to stop them.
    """

    def __init__(self, num_workers: int | None = None) -> None:
        if num_workers is None:
            num_workers = default_num_workers()
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        self.num_workers = num_workers
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        # Kill the workers when the pool is garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._pid)

    # -- public API --------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the current worker processes (empty before the first :meth:`map`)."""
        return [w.pid for w in self._workers]

    def start(self, wait: bool = True) -> None:
        """Starts missing workers; with ``wait``, blocks until every worker has reported ready
        (at most the start-up limit, then RuntimeError)."""
        self._check_usable()
        with self._lock:
            self._fill()
            if not wait:
                return
            deadline = time.monotonic() + _STARTUP_TIMEOUT_S
            while not all(w.ready for w in self._workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"reward checker workers did not start within {_STARTUP_TIMEOUT_S:.0f} s")
                starting = [w for w in self._workers if not w.ready]
                for conn in mp_connection.wait([w.conn for w in starting], timeout=left):
                    w = next(w for w in starting if w.conn is conn)
                    try:
                        kind, _ = w.conn.recv()
                    except (EOFError, OSError):
                        raise RuntimeError(
                            f"a reward checker worker died on start-up (exit code {w.exitcode}); check "
                            "that tina_jax and math-verify import in a fresh interpreter"
                        ) from None
                    w.ready = kind == "ready"

    def map(
        self,
        fn: Callable[..., Any],
        arg_tuples: Sequence[tuple],
        *,
        timeout: float,
        fallback: Any,
    ) -> list[Any]:
        """Returns ``[fn(*args) for args in arg_tuples]``, computed in the workers.

        Args:
          fn: a module-level (picklable) function.
          arg_tuples: one argument tuple per item.
          timeout: seconds one item may run, counted from when a ready worker receives it.
            An item past it gets ``fallback``; its worker is killed and replaced.
          fallback: the value for an item that times out, raises, or whose worker dies.

        Each failure is logged with ``logging.warning``.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._check_usable()
        with self._lock:
            return self._map(fn, list(arg_tuples), float(timeout), fallback)

    def close(self) -> None:
        """Stops all workers. The pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for w in self._workers:
                w.stop()
            self._workers.clear()
            self._finalizer.detach()

    def __enter__(self) -> "CheckerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("a CheckerPool cannot be used from a forked child; create a new one")
        if self._closed:
            raise RuntimeError("this CheckerPool has been closed; create a new one")

    def _fill(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker())

    def _map(self, fn: Callable[..., Any], items: list[tuple], timeout: float, fallback: Any) -> list[Any]:
        n = len(items)
        results: list[Any] = [fallback] * n
        if n == 0:
            return results
        self._fill()
        pending = deque(range(n))
        start_failures = 0
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            while pending or any(w.task is not None for w in self._workers):
                now = time.monotonic()
                # 1. Hand items to ready, idle workers.
                for w in self._workers:
                    if w.ready and w.task is None and pending:
                        i = pending.popleft()
                        try:
                            w.conn.send((fn, items[i]))
                        except (pickle.PicklingError, TypeError, AttributeError) as e:
                            logger.warning("reward check %s: item %d could not be sent to a worker "
                                           "(%s); scored %r", name, i, e, fallback)
                            continue
                        except (BrokenPipeError, OSError):
                            pending.appendleft(i)  # the worker died while idle: replace it below
                            self._replace(w, reason="died while idle")
                            continue
                        w.task = (i, time.monotonic() + timeout)
                # 2. Wait for a reply, a worker death, or the next deadline.
                waits = [w.task[1] - now for w in self._workers if w.task is not None]
                waits += [w.started_at + _STARTUP_TIMEOUT_S - now for w in self._workers if not w.ready]
                wait_s = max(0.0, min(waits)) if waits else 0.0
                ready_conns = mp_connection.wait([w.conn for w in self._workers], timeout=wait_s)
                # 3. Read replies.
                for w in list(self._workers):
                    if w.conn not in ready_conns:
                        continue
                    try:
                        kind, value = w.conn.recv()
                    except (EOFError, OSError):
                        if not w.ready:
                            start_failures += 1
                            if start_failures >= _MAX_START_FAILURES:
                                raise RuntimeError(
                                    f"reward checker workers die on start-up (exit code "
                                    f"{w.exitcode}); check that tina_jax and math-verify "
                                    "import in a fresh interpreter"
                                )
                        elif w.task is not None:
                            i = w.task[0]
                            logger.warning("reward check %s: worker %s died (exit code %s) on item %d "
                                           "%s; scored %r", name, w.pid, w.exitcode, i,
                                           _short(repr(items[i])), fallback)
                        self._replace(w, reason="died")
                        continue
                    if kind == "ready":
                        w.ready = True
                        start_failures = 0
                    elif w.task is not None:
                        i = w.task[0]
                        w.task = None
                        if kind == "ok":
                            results[i] = value
                        else:
                            logger.warning("reward check %s raised on item %d %s: %s; scored %r",
                                           name, i, _short(repr(items[i])), value, fallback)
                # 4. Kill workers past their deadline (or stuck starting up).
                now = time.monotonic()
                for w in list(self._workers):
                    if w.task is not None and now >= w.task[1]:
                        i = w.task[0]
                        logger.warning("reward check %s timed out after %.3g s on item %d %s; "
                                       "scored %r, worker replaced", name, timeout, i,
                                       _short(repr(items[i])), fallback)
                        self._replace(w, reason="timed out")
                    elif not w.ready and now >= w.started_at + _STARTUP_TIMEOUT_S:
                        raise RuntimeError(
                            f"a reward checker worker did not start within {_STARTUP_TIMEOUT_S:.0f} s"
                        )
        except BaseException:
            # Interrupted (KeyboardInterrupt, start-up failure): workers still busy hold stale
            # tasks whose replies would be read by the next call. Kill and forget them.
            for w in list(self._workers):
                if w.task is not None or not w.ready:
                    w.kill()
                    self._workers.remove(w)
            raise
        return results

    def _replace(self, w: _Worker, reason: str) -> None:
        """Kills ``w`` and starts a fresh worker in its place (it reports ready later)."""
        logger.debug("replacing reward checker worker %s (%s)", w.pid, reason)
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()


def _kill_all(workers: list[_Worker], owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        for w in workers:
            w.kill()


_POOL: CheckerPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> CheckerPool:
    """The process-wide default pool (created on first use, again after :func:`shutdown` or in a
    new process)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid() or _POOL._closed:
            _POOL = CheckerPool()
        return _POOL


def shutdown() -> None:
    """Stops the default pool's workers (a later :func:`get_pool` starts a new pool)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool._pid == os.getpid():
        pool.close()


atexit.register(shutdown)
