"""Stopping a run cleanly on SIGTERM (preemption of spot GPUs / Cloud TPU) or SIGINT (Ctrl-C).

    with StopSignals() as stop:
        while ...:
            if stop.agreed():        # every process calls it at the same points of the loop
                save(); raise StoppedBySignal(...)

The handlers only record the signal; the loop decides where to stop (between steps, or right after the rollout,
abandoning it), so the checkpoint always holds a completed step. "Abandoning" means the rollout's result is
dropped instead of graded and trained on; the generate call in flight is not cut short (the JAX sampler is one
compiled call), so a signal mid-rollout costs the rest of that rollout before the save. A second SIGINT exits at once (exit code 130,
no checkpoint), for when the user does not want to wait. A second SIGTERM is ignored: the run is already stopping.

Multi-host: a signal may reach one process only (or the processes at different times), so the decision to stop
is an all-gather of the per-process flags at fixed points of the loop: every process sees the same answer at
the same point and they stop at the same step; a process without a signal does not wait for anything it would
not have waited for anyway. JAX's own `multihost_utils.reached_preemption_sync_point` was not used: it needs
`jax.distributed` (not single-process runs), reacts to SIGTERM only, and installs its own SIGTERM handler in
the coordination service.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

import jax
import numpy as np

from capojax.errors import INTERRUPTED_EXIT_CODE

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager that records SIGTERM / SIGINT while it is active (see module docstring)."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM/SIGINT keep their default behaviour (no checkpoint on stop)")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: the previous handler was installed outside Python (e.g. by a C++ library); not restorable.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received is not None:
            if sig == signal.SIGINT:
                # os.write: async-signal-safe, unlike print (the interrupted code may hold stderr's lock).
                os.write(2, b"\nsecond SIGINT: exiting now, without a checkpoint\n")
                os._exit(INTERRUPTED_EXIT_CODE)
            return
        self.received = sig
        os.write(2, f"\n{sig.name} received: stopping after the current step (or abandoning its rollout) and saving "
                    f"a checkpoint; press Ctrl-C again to exit at once\n".encode())

    @property
    def requested(self) -> bool:
        """This process received a signal (local; use `agreed()` to decide anything that other processes run)."""
        return self.received is not None

    def agreed(self) -> bool:
        """Whether any process received a signal. A collective when there are several processes: all of them must
        call it at the same points of the loop. Adopts the signal of the first process that got one."""
        mine = int(self.received or 0)
        if jax.process_count() == 1:
            return mine != 0
        from jax.experimental import multihost_utils

        everyone = np.asarray(multihost_utils.process_allgather(np.asarray(mine, np.int32))).ravel()
        first = next((int(s) for s in everyone if s), 0)
        if first and self.received is None:
            self.received = signal.Signals(first)
        return first != 0

    @property
    def name(self) -> str:
        return self.received.name if self.received is not None else ""
