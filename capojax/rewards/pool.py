"""A pool of grader worker processes that survives hung and crashed workers.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot cancel a running task, and one dead
worker breaks the whole pool. Here each worker is a plain subprocess (``python -m
capojax.rewards._worker``) that grades one task at a time in its main thread (so math-verify's signals
and our soft deadline work). The parent sends a task, and if no answer arrives by the hard deadline
(``2 * timeout + 1`` s: the soft deadline failed, e.g. stuck in C code) it kills the worker, records a
timeout and starts a replacement; a worker that dies mid-task is recorded as a crash and replaced.

Workers are subprocesses rather than ``multiprocessing`` children on purpose: the trainer process runs
JAX (multithreaded, so ``fork`` is unsafe), and ``spawn`` would re-import the user's ``__main__`` (e.g.
the whole trainer) in every worker. A subprocess imports only math-verify and this package's rewards.
Each worker caps its address space (``memory_limit_mb``) so a sympy blow-up is a MemoryError, not an
out-of-memory kill of the machine.
"""

from __future__ import annotations

import atexit
import logging
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait

from capojax.rewards.result import GradeResult

__all__ = ["GraderPool", "default_pool", "shared_pool", "hard_deadline"]

logger = logging.getLogger("capojax.rewards")

_STARTUP_TIMEOUT = 120.0  # seconds for a worker to import math-verify (slow on a loaded 2-core box)


def hard_deadline(timeout: float) -> float:
    """Seconds after which a busy worker is killed: the soft deadline plus as much again and 1 s of slack."""
    return 2.0 * timeout + 1.0


class _Worker:
    def __init__(self, memory_limit_mb: int | None):
        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        pkg_root = str(pathlib.Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        args = [sys.executable, "-m", "capojax.rewards._worker", str(task_r), str(res_w)]
        args.append(str(memory_limit_mb or 0))
        try:
            self.proc = subprocess.Popen(
                args, pass_fds=(task_r, res_w), stdin=subprocess.DEVNULL, env=env, close_fds=True
            )
        finally:
            os.close(task_r)
            os.close(res_w)
        self.send_conn = Connection(task_w, readable=False)
        self.recv_conn = Connection(res_r, writable=False)
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None  # index of the task in flight
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.close_conns()

    def close_conns(self) -> None:
        for c in (self.send_conn, self.recv_conn):
            try:
                c.close()
            except OSError:
                pass


class GraderPool:
    """``n`` grader worker processes; :meth:`grade` and :meth:`equivalent` spread tasks over them.

    Safe to call from any thread (calls are serialised). Use as a context manager or call
    :meth:`close`; pools from :func:`default_pool` are closed at interpreter exit.
    """

    def __init__(self, workers: int | None = None, *, memory_limit_mb: int | None = 4096):
        n = workers if workers is not None else min(8, os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"GraderPool needs workers >= 1, got {workers}")
        self.n = n
        self.memory_limit_mb = memory_limit_mb
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0  # workers replaced after a hard timeout or crash, over the pool's life

    # ---------------------------------------------------------------- lifecycle
    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n:
            self._workers.append(_Worker(self.memory_limit_mb))

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._workers.append(_Worker(self.memory_limit_mb))
        self.restarts += 1

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                w.close_conns()  # EOF on the task pipe makes an idle worker exit
            for w in self._workers:
                try:
                    w.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    w.kill()
            self._workers = []

    def __enter__(self) -> "GraderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pids(self) -> list[int]:
        """Process ids of the current workers (starting them if needed); for monitoring and tests."""
        with self._lock:
            self._ensure_workers()
            return [w.proc.pid for w in self._workers]

    # ---------------------------------------------------------------- scheduling
    def _run(self, tasks: list[tuple], timeout: float) -> list[tuple[str, object]]:
        """Run tasks; returns per task ("ok", result) | ("timeout", None) | ("crash", None)."""
        results: list[tuple[str, object] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        hard = hard_deadline(timeout)
        with self._lock:
            self._ensure_workers()
            try:
                self._loop(tasks, results, pending, hard)
            except BaseException:
                # (startup failure, KeyboardInterrupt, ...) a worker still busy would later deliver a stale
                # answer into the next call: drop every busy worker before re-raising.
                for w in [w for w in self._workers if w.task is not None]:
                    self._workers.remove(w)
                    w.kill()
                raise
        return results  # type: ignore[return-value]

    def _loop(self, tasks: list[tuple], results: list, pending: deque, hard: float) -> None:
        while pending or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            # dispatch to idle ready workers
            for w in list(self._workers):
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    try:
                        w.send_conn.send(tasks[i])
                    except OSError:  # died while idle: replace, retry the task elsewhere
                        pending.appendleft(i)
                        self._replace(w)
                        continue
                    w.task, w.deadline = i, time.monotonic() + hard
            # wait for answers, ready signals or the nearest deadline
            waiting = [w for w in self._workers if w.task is not None or not w.ready]
            deadlines = [w.deadline if w.ready else w.started + _STARTUP_TIMEOUT for w in waiting]
            wait_for = max(0.0, min(deadlines) - now) if deadlines else 0.0
            ready_conns = wait([w.recv_conn for w in waiting], timeout=wait_for)
            by_conn = {id(w.recv_conn): w for w in waiting}
            for conn in ready_conns:
                w = by_conn[id(conn)]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is None:  # the worker died
                    if w.task is not None:
                        results[w.task] = ("crash", None)
                        try:
                            w.proc.wait(timeout=0.5)  # so the log shows its exit code / signal
                        except subprocess.TimeoutExpired:
                            pass
                        logger.warning(
                            "grader worker died on task %d (exit code %s); counted wrong, worker replaced",
                            w.task,
                            w.proc.poll(),
                        )
                    elif not w.ready:
                        rc = w.proc.wait()
                        self._workers.remove(w)
                        w.close_conns()
                        raise RuntimeError(
                            f"grader worker failed to start (exit code {rc}); check that "
                            f"`{sys.executable} -m capojax.rewards._worker` runs and math-verify is installed"
                        )
                    self._replace(w)
                    continue
                if msg == "ready":
                    w.ready = True
                    continue
                results[w.task] = ("ok", msg)
                w.task = None
            # enforce hard deadlines
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now > w.deadline:
                    results[w.task] = ("timeout", None)
                    logger.warning(
                        "grader worker busy past the hard deadline (%.1fs) on task %d; killed and replaced",
                        hard,
                        w.task,
                    )
                    self._replace(w)
                elif not w.ready and now > w.started + _STARTUP_TIMEOUT:
                    self._workers.remove(w)
                    w.kill()
                    raise RuntimeError(f"grader worker did not start within {_STARTUP_TIMEOUT:.0f}s")

    def grade(
        self,
        responses: Sequence[str],
        golds: Sequence[tuple[str, ...]],
        *,
        timeout: float,
        require_boxed: bool = False,
    ) -> GradeResult:
        """Grade ``responses[i]`` against normalised ``golds[i]`` (see ``grading.normalize_gold``)."""
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        tasks = [("grade", r, tuple(g), float(timeout), bool(require_boxed)) for r, g in zip(responses, golds)]
        out = self._run(tasks, timeout)
        correct, extracted, timed_out, crashes = [], [], [], 0
        for status, res in out:
            if status == "ok":
                c, e, t = res
                correct.append(bool(c))
                extracted.append(e)
                timed_out.append(bool(t))
            else:
                correct.append(False)
                extracted.append(None)
                timed_out.append(status == "timeout")
                crashes += status == "crash"
        return GradeResult(
            correct=correct, extracted=extracted, timeouts=sum(timed_out), crashes=crashes, timed_out=timed_out
        )

    def equivalent(self, pairs: Sequence[tuple[str, str]], *, timeout: float) -> list[bool]:
        """``answers_equivalent`` for each pair, in the workers."""
        out = self._run([("equiv", a, b, float(timeout)) for a, b in pairs], timeout)
        return [bool(res[0]) if status == "ok" else False for status, res in out]


_POOLS: dict[int | None, GraderPool] = {}
_POOLS_LOCK = threading.Lock()


def default_pool(workers: int | None = None) -> GraderPool:
    """The process-wide pool with this many workers (created on first use, closed at exit)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = GraderPool(workers)
        return pool


def shared_pool() -> GraderPool:
    """Any existing default pool (to avoid starting more processes), else a one-worker one.

    Used when a single grade has to leave the calling thread (signals need the main thread).
    """
    with _POOLS_LOCK:
        if _POOLS:
            return next(iter(_POOLS.values()))
    return default_pool(1)


@atexit.register
def _close_default_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()
    _POOLS.clear()
