"""The quick calibration study through the real CLI: outputs, the summary recomputed from the cells' own logs, and a
rerun that trains nothing. Slow (two short training runs), so it runs in `make test-slow`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from e2e import ROOT, read_metrics

pytestmark = pytest.mark.slow


def run_study(workdir, *extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "capojax.study", "--config=configs/study_calibration.py", "--config.quick=True",
           f"--workdir={workdir}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_quick_study_writes_outputs_and_a_rerun_skips_finished_cells(tiny_base, tmp_path):
    work = tmp_path / "study"
    first = run_study(work, f"--config.run.model.path={tiny_base}")
    assert "[1/2] grpo-s0: training" in first.stdout and "[2/2] dcpo-s0: training" in first.stdout
    for name in ("study.json", "summary.md", "study.png"):
        assert (work / name).stat().st_size > 0, name
    assert (work / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    study = json.loads((work / "study.json").read_text())
    window = study["summary"]["window"]
    assert set(study["cells"]) == {"grpo-s0", "dcpo-s0"}
    for cell in ("grpo-s0", "dcpo-s0"):
        rows = read_metrics(work / "cells" / cell)
        evals = [r for r in rows if "val/accuracy" in r and r["step"] > 0]
        assert [r["step"] for r in evals] == [2, 4]
        for key in ("val/accuracy", "val/auc_mean", "val/ece", "val/entropy"):
            values = [r[key] for r in evals[-window:] if r[key] is not None]
            expected = float(np.mean(values)) if values else float("nan")
            got = study["summary"]["variants"][cell.split("-")[0]][key]["mean"]
            if np.isnan(expected):
                assert np.isnan(got), key
            else:
                assert got == pytest.approx(expected), key
        assert "val/n_mixed" in evals[-1] and "val/lpm/correct" in evals[-1]
    base_rows = [r for r in read_metrics(work / "cells" / "grpo-s0") if r["step"] == 0]
    assert study["summary"]["base"]["val/accuracy"] == pytest.approx(base_rows[0]["val/accuracy"])
    assert not [r for r in read_metrics(work / "cells" / "dcpo-s0") if r["step"] == 0]  # the base is evaluated once
    summary_md = (work / "summary.md").read_text()
    assert "| base (step 0) |" in summary_md and "| grpo | 0 |" in summary_md and "| dcpo | 0 |" in summary_md

    before = {c: (work / "cells" / c / "metrics.jsonl").read_text() for c in ("grpo-s0", "dcpo-s0")}
    (work / "summary.md").unlink()
    second = run_study(work, f"--config.run.model.path={tiny_base}")
    assert "training" not in second.stdout
    assert second.stdout.count("done earlier, skipped") == 2
    assert (work / "summary.md").read_text() == summary_md  # rebuilt from disk, same numbers
    assert {c: (work / "cells" / c / "metrics.jsonl").read_text() for c in before} == before
