"""The README's main job as `make demo` runs it: tiny CAPO, 40 steps, and its accuracy must rise.

Slow (about 3 min to build the SFT base, which stops at a target accuracy, then about 3.5 min of RL on 2 cores),
so it runs in `make test-slow`. The one difference from `make demo`: the base is built into a temporary cache dir,
so the test needs no writable home and always measures a base built by the current code.
"""

import numpy as np
import pytest

from e2e import read_metrics, run_cli

pytestmark = pytest.mark.slow


def test_demo_accuracy_rises(tmp_path):
    """Accuracy is judged on the held-out set: 64 fixed problems x 8 samples, re-scored every 10 steps.

    Measured (seed 0) on a base built by this code (its SFT stopped at step 550, stop-set accuracy 0.49): 0.451 ->
    0.494 -> 0.520 -> 0.574 -> 0.611, base SE 0.037: steps 30-40 beat the base by 3.8 SE, the final validation by
    4.3 SE. With the previous attention layout's float rounding (the base stops at step 450): 0.395 -> 0.482 ->
    0.498 -> 0.564 -> 0.561, 4.3 SE. Before the base stopped at a target accuracy, a rounding change could leave it at
    0.68 after its fixed 600 steps, from where CAPO reached only 0.68-0.70 and this test failed. A flat or falling run
    fails. Not on the training accuracy of 10-step blocks: every seed sees the same prompt order (data.shuffle_seed),
    so block means move with the difficulty of that block's 160 prompts. A harmful update shows here: at lr 2e-4
    validation falls from 0.68 to 0.53.
    """
    run_cli("tiny_capo", tmp_path / "run", f"--config.model.cache_dir={tmp_path / 'cache'}")
    rows = read_metrics(tmp_path / "run")
    assert len([r for r in rows if r["step"] > 0]) == 40
    val = {r["step"]: r for r in rows if "val/accuracy" in r}
    assert sorted(val) == [0, 10, 20, 30, 40]
    # The base row: the same 64 x 8 held-out samples are drawn with the same key at every validation
    # (rollout.val_seed), so step 0 is the base's score and its prompt-level standard error is the noise to beat.
    base, se = val[0]["val/accuracy"], val[0]["val/accuracy_se"]
    curve = [round(val[s]["val/accuracy"], 3) for s in sorted(val)]
    assert 0.01 < se < 0.1, f"implausible standard error {se}"
    late = float(np.mean([val[30]["val/accuracy"], val[40]["val/accuracy"]]))
    assert late > base + 1.5 * se, f"steps 30-40 within 1.5 SE ({se:.3f}) of the base: {curve}"
    assert val[40]["val/accuracy"] > base + se, f"final accuracy within 1 SE ({se:.3f}) of the base: {curve}"
    # The run is calibration work too: CAPO's AUC over the validation samples must not fall apart.
    assert rows[-1]["val/auc_mean"] >= 0.6
