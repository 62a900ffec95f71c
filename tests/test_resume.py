"""Kill -9 in the middle of a tiny run; rerunning the same command resumes and the metrics trajectory matches an
uninterrupted run step for step (deterministic on the CPU). A half-written checkpoint is never picked up."""

import math

import pytest

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
