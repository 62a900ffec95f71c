"""Kill -9 in the middle of a tiny run; rerunning the same command resumes and the metrics trajectory matches an
uninterrupted run step for step (deterministic on the CPU). A half-written checkpoint is never picked up.
SIGTERM (preemption) and SIGINT (Ctrl-C) save the last completed step before exiting, even between checkpoints."""

import math

import pytest

from capojax.errors import STOPPED_EXIT_CODE
from e2e import FAST, read_metrics, run_cli

pytestmark = pytest.mark.slow

ARGS = [*FAST, "--config.train.steps=4", "--config.log.val_every=0"]
VOLATILE = ("timing/", "tokens_per_s", "sync/gbps")


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def assert_same_trajectory(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        sa, sb = _stable(ra), _stable(rb)
        assert sa.keys() == sb.keys()
        for k in sa:
            x, y = sa[k], sb[k]
            if x is None or y is None:
                assert x == y, (ra["step"], k, x, y)
            else:
                assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7), (ra["step"], k, x, y)


@pytest.fixture(scope="module")
def reference(tiny_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    run_cli("tiny_grpo", workdir, f"--config.model.path={tiny_base}", *ARGS)
    return read_metrics(workdir)


@pytest.mark.parametrize("fault", ["kill@rollout:3", "kill@checkpoint:2"])
def test_killed_run_resumes_to_the_same_trajectory(fault, reference, tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *ARGS]
    killed = run_cli("tiny_grpo", tmp_path, *args, env_extra={"CAPOJAX_FAULTS": fault}, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    steps_dir = tmp_path / "checkpoints"
    finalized = sorted(int(p.name) for p in steps_dir.iterdir() if p.name.isdigit())
    assert max(finalized) < 3  # killed before step 3 was saved
    run_cli("tiny_grpo", tmp_path, *args)
    assert_same_trajectory(read_metrics(tmp_path), reference)
    assert not [p for p in steps_dir.iterdir() if "tmp" in p.name]  # leftovers of the killed save are gone


SIGNAL_ARGS = [*FAST, "--config.train.steps=6", "--config.log.val_every=0", "--config.checkpoint.every=100"]


@pytest.fixture(scope="module")
def reference_6_steps(tiny_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference6")
    run_cli("tiny_grpo", workdir, f"--config.model.path={tiny_base}", *SIGNAL_ARGS)
    return read_metrics(workdir)


@pytest.mark.parametrize("fault, signal_name, saved_step", [
    ("term@rollout:3", "SIGTERM", 2),  # mid-rollout: the rollout of step 3 is abandoned
    ("int@update:5", "SIGINT", 5),  # mid-update: step 5 is finished
])
def test_signal_saves_the_last_completed_step_and_resumes(fault, signal_name, saved_step, reference_6_steps,
                                                          tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *SIGNAL_ARGS]
    stopped = run_cli("tiny_grpo", tmp_path, *args, env_extra={"CAPOJAX_FAULTS": fault}, check=False)
    assert stopped.returncode == STOPPED_EXIT_CODE, stopped.stderr[-3000:]
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line == (f"stopped by {signal_name} at step {saved_step}; checkpoint saved in {tmp_path}/checkpoints; "
                         "rerun the same command to resume")
    assert "Traceback" not in stopped.stderr
    steps_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in steps_dir.iterdir()) == [str(saved_step)]  # checkpoint.every=100: only the stop
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, saved_step + 1))
    assert not (tmp_path / "hf").exists()  # nothing exported from an unfinished run
    resumed = run_cli("tiny_grpo", tmp_path, *args)
    assert "done: 6 steps" in resumed.stdout
    assert_same_trajectory(read_metrics(tmp_path), reference_6_steps)
