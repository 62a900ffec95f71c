"""Fault injection for the crash-and-resume tests: `CAPOJAX_FAULTS="kill@rollout:3,nan@advantage:2"` makes the
trainer SIGKILL itself at the end of the named phase of the named step, or poison that phase's output with NaN;
`term@rollout:3` / `int@update:5` send it SIGTERM / SIGINT there (a preemption, a Ctrl-C).

The trainer calls `after_phase(phase, step, output)` once at the end of each phase (the `phase` decorator of
`capojax.trainer.loop` does it), so the hooks never sit inside a phase's own code. Unset (the normal case) a hook
costs one set lookup.

Phases, in the order of a step: rollout, reward, old_logp, ref_logp, advantage, update (after all PPO updates of
the step), sync, and checkpoint (while an async save is being written, after `Trainer.save` started it).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import jax.numpy as jnp

ENV = "CAPOJAX_FAULTS"
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
PHASES = ("rollout", "reward", "old_logp", "ref_logp", "advantage", "update", "sync", "checkpoint")


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
        if phase not in PHASES:
            raise ValueError(f"{ENV}: unknown phase {phase!r} in {item!r}; use one of {', '.join(PHASES)}")
    return faults


_FAULTS = _parse(os.environ.get(ENV, ""))


def configure(spec: str | None = None) -> None:
    """(Re)reads the faults from `spec`, or from $CAPOJAX_FAULTS when None (what happens at import)."""
    global _FAULTS
    _FAULTS = _parse(os.environ.get(ENV, "") if spec is None else spec)


def should(kind: str, phase: str, step: int) -> bool:
    return (kind, phase, step) in _FAULTS


def _poison(output: Any) -> Any:
    """`output` with every floating-point array (of any pytree) multiplied by NaN."""
    return jax.tree.map(lambda x: x * jnp.nan if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x,
                        output)


def after_phase(phase: str, step: int, output: Any = None) -> Any:
    """The hook at the end of `phase` of `step`: returns `output`, NaN-poisoned for a `nan@phase:step` fault, after
    sending this process the signal a `kill|term|int@phase:step` fault names."""
    if not _FAULTS:
        return output
    for kind, sig in SIGNALS.items():
        if should(kind, phase, step):
            os.kill(os.getpid(), sig)
    return _poison(output) if should("nan", phase, step) else output
