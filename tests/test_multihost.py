"""Two processes on localhost with 4 CPU devices each (one global 8-device mesh, gloo collectives) run the tiny
config and produce the same metrics as one process with 8 devices; SIGTERM to one of them stops both at the same
step with one checkpoint."""

import math
import os
import socket
import subprocess

import pytest

from capojax.errors import STOPPED_EXIT_CODE
from e2e import FAST, ROOT, cli_command, read_metrics, run_cli

pytestmark = pytest.mark.slow

ARGS = [*FAST, "--config.log.val_every=0", "--config.mesh.fsdp=4", "--config.mesh.tp=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, args, faults_by_rank=("", "")) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank), CAPOJAX_FAULTS=faults_by_rank[rank])
        procs.append(subprocess.Popen(cli_command("tiny_grpo", workdir, *args), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate() for p in procs]
        pytest.fail(f"the processes hung (> {timeout} s):\n" + "\n".join(err[-3000:] for _, err in outs))


def test_sigterm_to_one_process_stops_both_at_the_same_step(tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *ARGS, "--config.train.steps=4", "--config.checkpoint.every=100"]
    procs = _launch(tmp_path, args, faults_by_rank=("", "term@rollout:2"))  # only process 1 gets the signal
    outs = _wait(procs, timeout=900)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == STOPPED_EXIT_CODE, err[-5000:]
        assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM at step 1; checkpoint saved in ")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_two_processes_match_one_process(tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *ARGS]
    single = tmp_path / "single"
    run_cli("tiny_grpo", single, *args, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})

    multi = tmp_path / "multi"
    procs = _launch(multi, args)
    outs = _wait(procs, timeout=1200)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-5000:]

    a, b = read_metrics(single), read_metrics(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k.startswith(("timing/", "tokens_per_s", "sync/gbps")) or v is None:
                continue
            assert math.isclose(v, rb[k], rel_tol=1e-4, abs_tol=1e-5), (ra["step"], k, v, rb[k])
