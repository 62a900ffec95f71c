"""Grader worker process: ``python -m capojax.rewards._worker TASK_FD RESULT_FD MEMORY_MB``.

Started by :class:`capojax.rewards.pool.GraderPool`. Reads task tuples from TASK_FD, grades each in its
main thread under the soft deadline, writes the result to RESULT_FD; exits on EOF (the parent closed
the pool or died).
"""

from __future__ import annotations

import logging
import signal
import sys
from multiprocessing.connection import Connection


def main(argv: list[str]) -> int:
    task_fd, result_fd, memory_mb = int(argv[0]), int(argv[1]), int(argv[2])
    # Ctrl-C (and a scheduler's SIGTERM) reach the whole process group; the trainer finishes its step, grading
    # included, before it stops, and a worker ends when the trainer closes its pipe (EOF), even on kill -9.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if memory_mb > 0:
        import resource

        limit = memory_mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    logging.basicConfig(level=logging.WARNING, format="[grader worker] %(levelname)s %(message)s")

    from capojax.rewards import grading

    # Import math-verify/sympy and build the LaTeX parser before saying ready, so task deadlines (soft and
    # the parent's hard one) measure grading, not startup.
    grading._warm_up()
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    results.send("ready")
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return 0
        kind = task[0]
        try:
            if kind == "grade":
                _, response, golds, timeout, require_boxed = task
                out = grading.grade_in_process(response, golds, timeout, require_boxed)
            elif kind == "equiv":
                _, a, b, timeout = task
                out = grading.equivalent_in_process(a, b, timeout)
            else:
                raise ValueError(f"unknown task kind {kind!r}")
        except MemoryError:
            logging.warning("out of memory while grading (counted as wrong)")
            out = (False, None, False) if kind == "grade" else (False, False)
        results.send(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
