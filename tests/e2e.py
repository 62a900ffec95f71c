"""Helpers for tests that run the real CLI in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Small enough for the default suite on 2 cores; same code path as the demo.
FAST = [
    "--config.train.steps=2", "--config.train.prompts_per_step=4", "--config.train.ppo_mini_batch=2",
    "--config.rollout.n=4", "--config.rollout.max_new_tokens=24", "--config.rollout.val_n=2",
    "--config.data.holdout=4", "--config.log.val_every=2", "--config.checkpoint.every=1",
]


def cli_command(config: str, workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capojax.train", f"--config=configs/{config}.py", f"--workdir={workdir}", *extra]


def run_cli(config: str, workdir, *extra: str, env_extra=None, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # by default the CLI runs on the one real CPU device, like a user's first run
    env.update(env_extra or {})
    cmd = cli_command(config, workdir, *extra)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


