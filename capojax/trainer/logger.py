"""Where the numbers go: `WORKDIR/metrics.jsonl` (one JSON object per step), tensorboardX scalars, and a few
sampled completions per step as text (`WORKDIR/samples.jsonl` and tensorboard text). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import jax
import numpy as np


def _plain(value: Any) -> float | int | None:
    value = np.asarray(value).item() if not isinstance(value, (int, float)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    return value


class MetricsLogger:
    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = pathlib.Path(workdir)
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume, drops lines of steps after the restored checkpoint so the file reads as one clean run."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.workdir / name
            if not path.exists():
                continue
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in sorted(metrics.items())}}
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and value is not None:
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        with open(self.workdir / "samples.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": int(step), **row}) + "\n")
        text = "\n\n".join(
            f"**correct={row.get('correct')} reward={row.get('reward')}**\n\n```\n{row.get('response', '')}\n```" for row in rows
        )
        self._tb.add_text("samples", text, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
