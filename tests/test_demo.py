"""The README's main job as `make demo` runs it: tiny CAPO, 40 steps, and its accuracy must rise.

Slow (about 4 min to build the 600-step SFT base, then about 3.5 min of RL on 2 cores), so it runs in
`make test-slow`. The one difference from `make demo`: the base is built into a temporary cache dir, so the
test needs no writable home and always measures a base built by the current code.
"""

import numpy as np
import pytest

from e2e import read_metrics, run_cli

pytestmark = pytest.mark.slow


def test_demo_accuracy_rises(tmp_path):
    run_cli("tiny_capo", tmp_path / "run", f"--config.model.cache_dir={tmp_path / 'cache'}")
    rows = read_metrics(tmp_path / "run")
    train = [r["accuracy"] for r in rows if r["step"] > 0]
    assert len(train) == 40
    # 10 steps x 16 prompts x 8 samples = 1280 samples per block: a standard error of ~1.3 points.
    first, last = float(np.mean(train[:10])), float(np.mean(train[-10:]))
    assert last >= first + 0.04, f"training accuracy did not rise: first 10 steps {first:.3f}, last 10 {last:.3f}"
    val = [(r["step"], r["val/accuracy"]) for r in rows if "val/accuracy" in r]
    assert [s for s, _ in val] == [0, 10, 20, 30, 40]
    assert val[-1][1] > val[0][1], f"validation accuracy did not rise: {val}"
    # The run is calibration work too: CAPO's AUC over the validation samples must not fall apart.
    assert rows[-1]["val/auc_mean"] >= 0.6
