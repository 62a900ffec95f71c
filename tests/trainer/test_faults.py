"""Fault injection: a fault fires at the end of its phase of its step and nowhere else; the phase wrapper of the
Trainer times a phase and runs its boundary hook once, after the phase."""

from __future__ import annotations

import signal

import jax.numpy as jnp
import numpy as np
import pytest

from capojax.trainer import faults
from capojax.trainer.loop import StepClock, phase


@pytest.fixture
def configure():
    yield faults.configure
    faults.configure("")


def test_unknown_phase_or_kind_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown phase 'advantages' in 'nan@advantages:2'; use one of rollout, reward"):
        faults.configure("nan@advantages:2")
    with pytest.raises(ValueError, match="unknown fault kind 'hup'"):
        faults.configure("hup@rollout:1")
    with pytest.raises(ValueError, match="expected KIND@PHASE:STEP"):
        faults.configure("kill-rollout-3")


def test_configure_reads_the_environment_by_default(configure, monkeypatch):
    monkeypatch.setenv(faults.ENV, "kill@checkpoint:4")
    configure()
    assert faults.should("kill", "checkpoint", 4) and not faults.should("kill", "checkpoint", 3)


def test_nan_fault_poisons_the_float_outputs_of_its_phase_and_step_only(configure):
    configure("nan@advantage:2")
    out = {"adv": jnp.ones(3), "ids": jnp.arange(3)}
    assert faults.after_phase("advantage", 1, out) is out  # another step
    assert faults.after_phase("update", 2, out) is out  # another phase
    poisoned = faults.after_phase("advantage", 2, out)
    assert np.isnan(np.asarray(poisoned["adv"])).all()
    np.testing.assert_array_equal(poisoned["ids"], [0, 1, 2])  # integer arrays untouched


def test_signal_fault_sends_its_signal_at_its_step(configure):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        configure("term@update:3")
        faults.after_phase("update", 2)
        assert received == []
        assert faults.after_phase("update", 3, "out") == "out"
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Phases:
    def __init__(self):
        self.ran = []

    @phase("advantage")
    def advantage(self, clock, x):
        self.ran.append(("advantage", np.isnan(np.asarray(x)).any()))
        return x * 2

    @phase("sync")
    def sync(self, clock):
        return {"timing/sync": 0.25, "sync/bytes": 10.0}


def test_the_phase_wrapper_times_the_phase_then_runs_its_hook_once(configure):
    configure("nan@advantage:2")
    obj, clock = _Phases(), StepClock(1)
    np.testing.assert_array_equal(obj.advantage(clock, jnp.ones(2)), [2.0, 2.0])
    assert clock.timings["timing/advantage"] >= 0
    clock2 = StepClock(2)
    out = obj.advantage(clock2, jnp.ones(2))
    assert np.isnan(np.asarray(out)).all()
    assert obj.ran == [("advantage", False), ("advantage", False)]  # the phase itself saw clean inputs
    # a phase that measured itself reports timing/<phase>: it replaces the wall clock and leaves the metrics
    assert obj.sync(clock) == {"sync/bytes": 10.0} and clock.timings["timing/sync"] == 0.25
