"""Fault injection for the crash-and-resume tests: `CAPOJAX_FAULTS="kill@rollout:3,nan@advantages:2"` makes
the trainer SIGKILL itself when it reaches the named phase of the named step, or poison that phase's output
with NaN. Unset (the normal case) it costs one dict lookup per phase.

Phases: rollout (after sampling), checkpoint (while an async save is being written), advantages.
"""

from __future__ import annotations

import os
import signal

ENV = "CAPOJAX_FAULTS"


def _parse(spec: str) -> set[tuple[str, str, int]]:
    faults = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            kind, rest = item.split("@")
            phase, step = rest.split(":")
            faults.add((kind, phase, int(step)))
        except ValueError:
            raise ValueError(f"{ENV}: cannot parse {item!r}; expected KIND@PHASE:STEP, e.g. kill@rollout:3") from None
        if kind not in ("kill", "nan"):
            raise ValueError(f"{ENV}: unknown fault kind {kind!r} in {item!r}; use kill or nan")
    return faults


_FAULTS = _parse(os.environ.get(ENV, ""))


def should(kind: str, phase: str, step: int) -> bool:
    return (kind, phase, step) in _FAULTS


def maybe_kill(phase: str, step: int) -> None:
    if should("kill", phase, step):
        os.kill(os.getpid(), signal.SIGKILL)
