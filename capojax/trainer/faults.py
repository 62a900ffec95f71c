"""Fault injection for the crash-and-resume tests: `CAPOJAX_FAULTS="kill@rollout:3,nan@advantages:2"` makes
the trainer SIGKILL itself when it reaches the named phase of the named step, or poison that phase's output
with NaN; `term@rollout:3` / `int@update:5` send it SIGTERM / SIGINT there (a preemption, a Ctrl-C). Unset (the
normal case) it costs one set lookup per phase.

Phases: rollout (after sampling, before the loop looks at the result), update (after the first PPO mini-batch
update), checkpoint (while an async save is being written), advantages (nan only).
"""

from __future__ import annotations

import os
import signal

ENV = "CAPOJAX_FAULTS"
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def _parse(spec: str) -> set[tuple[str, str, int]]:
    faults = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            kind, rest = item.split("@")
            phase, step = rest.split(":")
            faults.add((kind, phase, int(step)))
        except ValueError:
            raise ValueError(f"{ENV}: cannot parse {item!r}; expected KIND@PHASE:STEP, e.g. kill@rollout:3") from None
        if kind not in ("nan", *SIGNALS):
            raise ValueError(f"{ENV}: unknown fault kind {kind!r} in {item!r}; use one of nan, {', '.join(SIGNALS)}")
    return faults


_FAULTS = _parse(os.environ.get(ENV, ""))


def should(kind: str, phase: str, step: int) -> bool:
    return (kind, phase, step) in _FAULTS


def maybe_signal(phase: str, step: int) -> None:
    """Sends this process the signal a `kill|term|int@phase:step` fault names, if any."""
    for kind, sig in SIGNALS.items():
        if should(kind, phase, step):
            os.kill(os.getpid(), sig)
