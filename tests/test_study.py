"""capojax.study: the grid, the window summary, the comparisons, and the figure (no training here; the CLI run is
in test_study_cli.py)."""

import math

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import roc_auc_score

from capojax import metrics, plots, study
from configs import study_calibration


def test_auc_mean_and_n_mixed_match_sklearn_on_a_hand_made_case():
    # 4 prompts x 4 samples: two mixed prompts (one with a tie), one all-correct, one all-wrong.
    scores = np.array([[0.9, 0.8, 0.1, 0.2],
                       [0.5, 0.5, 0.7, 0.1],
                       [0.3, 0.2, 0.9, 0.4],
                       [0.1, 0.2, 0.3, 0.4]], np.float32)
    correct = np.array([[1, 1, 0, 0],
                        [1, 0, 1, 0],
                        [1, 1, 1, 1],
                        [0, 0, 0, 0]], bool)
    expected = np.mean([roc_auc_score(correct[i], scores[i]) for i in (0, 1)])
    summary = metrics.calibration_summary(scores, correct)
    assert summary["n_mixed"] == 2.0
    assert summary["auc_mean"] == pytest.approx(expected, abs=1e-6)
    masked = np.ones_like(correct)
    masked[1, [0, 2]] = False  # prompt 1 loses its correct samples: no longer mixed
    assert metrics.calibration_summary(scores, correct, masked)["n_mixed"] == 1.0


def _curve(steps, **series):
    return [{"step": s, **{k: v[i] for k, v in series.items()}} for i, s in enumerate(steps)]


def test_window_mean_takes_the_last_evaluations_and_skips_nan():
    curve = _curve([0, 10, 20, 30], **{"val/auc_mean": [0.9, 0.1, float("nan"), 0.7]})
    assert study.window_mean(curve, 2, "val/auc_mean") == pytest.approx(0.7)  # 20 is NaN, 30 counts
    assert study.window_mean(curve, 3, "val/auc_mean") == pytest.approx(0.4)  # step 0 is the base, never in a window
    assert math.isnan(study.window_mean(curve[:1], 1, "val/auc_mean"))


def test_summarize_is_the_seed_mean_and_sd_of_window_means():
    cells = {
        "grpo-s0": {"variant": "grpo", "seed": 0, "curve": _curve([0, 10, 20], **{"val/auc_mean": [0.8, 0.7, 0.6]})},
        "grpo-s1": {"variant": "grpo", "seed": 1, "curve": _curve([10, 20], **{"val/auc_mean": [0.5, 0.6]})},
        "capo-s0": {"variant": "capo", "seed": 0, "curve": _curve([10, 20], **{"val/auc_mean": [0.9, 0.9]})},
    }
    s = study.summarize(cells, window=2)
    assert s["base"]["val/auc_mean"] == 0.8
    g = s["variants"]["grpo"]["val/auc_mean"]
    assert g["per_seed"] == pytest.approx([0.65, 0.55])
    assert g["mean"] == pytest.approx(0.6) and g["sd"] == pytest.approx(np.std([0.65, 0.55], ddof=1))
    c = s["variants"]["capo"]["val/auc_mean"]
    assert c["n"] == 1 and math.isnan(c["sd"])
    lines = study.comparisons(s)
    assert any(line.startswith("grpo: val/auc_mean 0.600 vs base 0.800 (diff -0.200") for line in lines)
    assert any(line.startswith("capo - grpo: val/auc_mean +0.300") for line in lines)
    md = study.summary_markdown(s, meta={"cells": 3})
    assert "| base (step 0) |" in md and "| grpo | 0,1 | " in md


def test_plan_cells_applies_variants_and_seeds(tmp_path):
    config = study_calibration.get_config()
    cells = study.plan_cells(config, tmp_path)
    assert [c.name for c in cells[:5]] == ["grpo-s0", "drgrpo-s0", "capo-s0", "capo_nomask-s0", "dcpo-s0"]
    assert len(cells) == 15
    by_name = {c.name: c for c in cells}
    assert by_name["capo_nomask-s2"].config.algo.name == "capo"
    assert by_name["capo_nomask-s2"].config.algo.use_ref_mask is False
    assert by_name["dcpo-s1"].config.train.seed == 1 and by_name["dcpo-s1"].config.data.shuffle_seed == 1
    assert [c.config.log.val_at_start for c in cells].count(True) == 1  # the base is evaluated once
    assert all(c.config.data.template == "dcpo" for c in cells)  # one base, one template for every variant


def test_a_shared_setting_of_one_algorithm_reaches_only_its_cells(tmp_path):
    """run.algo.tau is CAPO's: the CAPO cells train with it, the others get the default back instead of refusing to
    start with a key their algorithm does not read (capojax.trainer.settings.check_algo_keys)."""
    from capojax.trainer.settings import check_algo_keys

    config = study_calibration.get_config()
    config.run.algo.tau = 0.3
    config.run.algo.lam = 0.7
    cells = {c.name: c for c in study.plan_cells(config, tmp_path)}
    assert cells["capo-s0"].config.algo.tau == 0.3 and cells["capo-s0"].config.algo.lam == 0.5
    assert cells["dcpo-s0"].config.algo.lam == 0.7 and cells["dcpo-s0"].config.algo.tau == 0.6
    assert (cells["grpo-s0"].config.algo.tau, cells["grpo-s0"].config.algo.lam) == (0.6, 0.5)
    for cell in cells.values():
        check_algo_keys(cell.config.algo)


def test_quick_study_is_two_variants_one_seed_few_steps():
    config = study_calibration.get_config()
    config.quick = True
    quick = study.effective_config(config)
    cells = study.plan_cells(quick, "w")
    assert [c.name for c in cells] == ["grpo-s0", "dcpo-s0"]
    assert quick.run.train.steps == 4 and quick.run.model.tiny_base.steps == config.quick_base_steps


@pytest.mark.parametrize("field,value,message", [
    ("algorithms", "grpo,gpro", "unknown variant"),
    ("seeds", "0,x", "config.seeds"),
    ("seeds", "", "empty"),
    ("window", 0, "window"),
])
def test_bad_study_config_is_a_clear_error(field, value, message, tmp_path):
    config = study_calibration.get_config()
    config[field] = value
    with pytest.raises(study.StudyConfigError, match=message):
        study.plan_cells(config, tmp_path)


def test_set_dotted_refuses_a_field_the_training_config_lacks():
    config = study_calibration.study_run_config()
    with pytest.raises(study.StudyConfigError, match="no field 'tua'"):
        study.set_dotted(config, "algo.tua", 0.5)


def test_study_figure_survives_a_cell_without_mixed_prompts(tmp_path):
    nan = float("nan")
    base = {"step": 0, "val/accuracy": 0.5, "val/auc_mean": 0.8, "val/ece": 0.2, "val/entropy": 0.3}
    cells = {
        "grpo-s0": {"variant": "grpo", "seed": 0, "curve": _curve([10, 20], **{
            "val/accuracy": [0.6, 1.0], "val/auc_mean": [0.7, nan], "val/ece": [0.1, 0.0], "val/entropy": [0.2, 0.1]})},
        "capo-s0": {"variant": "capo", "seed": 0, "curve": _curve([10, 20], **{
            "val/accuracy": [0.0, 0.0], "val/auc_mean": [nan, nan], "val/ece": [0.3, 0.3], "val/entropy": [0.4, 0.4]})},
    }
    path = plots.save_study_figure(cells, tmp_path / "study.png", base=base)
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] > 1000 and image[..., :3].std() > 0.05


def test_seed_band_is_nan_aware():
    cells = [{"curve": _curve([10], **{"m": [0.2]})}, {"curve": _curve([10], **{"m": [float("nan")]})},
             {"curve": _curve([10], **{"m": [0.4]})}]
    steps, mean, sd = plots._seed_band(cells, "m")
    assert steps.tolist() == [10.0] and mean[0] == pytest.approx(0.3) and sd[0] == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_a_bad_variant_is_one_line_on_the_cli(tmp_path):
    import subprocess
    import sys

    from e2e import ROOT

    proc = subprocess.run([sys.executable, "-m", "capojax.study", "--config=configs/study_calibration.py",
                           "--config.algorithms=grpo,gpro", f"--workdir={tmp_path / 'w'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown variant(s) ['gpro']" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
    misspelt = subprocess.run([sys.executable, "-m", "capojax.study", "--config=configs/study_calibration.py",
                               "--config.run.algo.tua=0.5", f"--workdir={tmp_path / 'w'}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert misspelt.returncode == 2 and "tau" in misspelt.stderr and "Traceback" not in misspelt.stderr
