"""SIGTERM / SIGINT are recorded, not obeyed at once; a second SIGINT exits at once; handlers are restored. (The
loop's use of them, with checkpoints and resume, is tested end to end in tests/test_resume.py and
tests/test_multihost.py.)"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from capojax.errors import INTERRUPTED_EXIT_CODE
from capojax.trainer import faults
from capojax.trainer.preemption import StopSignals


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)  # Python runs the handler at the next bytecode boundary in the main thread


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_recorded_and_the_handlers_are_restored(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stop:
        assert not stop.requested and not stop.agreed() and stop.name == ""
        _deliver(sig)  # no KeyboardInterrupt, no exit
        assert stop.requested and stop.agreed() and stop.name == sig.name
        _deliver(signal.SIGTERM)  # a later SIGTERM changes nothing: the run is already stopping
        assert stop.name == sig.name
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_sigint_exits_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from capojax.trainer.preemption import StopSignals
        with StopSignals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT_CODE and "not reached" not in proc.stdout
    assert "SIGINT received" in proc.stderr and "second SIGINT: exiting now" in proc.stderr


def test_signal_faults_parse():
    assert faults._parse("term@rollout:3, int@update:5,kill@checkpoint:2") == {
        ("term", "rollout", 3), ("int", "update", 5), ("kill", "checkpoint", 2)}
    with pytest.raises(ValueError, match="unknown fault kind 'hup'"):
        faults._parse("hup@rollout:1")
