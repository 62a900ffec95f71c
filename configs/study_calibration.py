"""The calibration study (`python -m capojax.study --config=configs/study_calibration.py`): GRPO, Dr.GRPO, CAPO
(with and without the reference mask) and DCPO from one shared tiny base, seeds 0-2, on one fixed held-out set.

The base is built to be *confidently wrong* on part of the task: its SFT data teaches, on a share of the "trap"
problems a - (b ± c), the fluent slip "drop the parentheses and go left to right", and it states a confidence that
is informative from the start (high after the right procedure, low after the slip). Every variant runs on the DCPO
template, so GRPO is also DCPO's baseline (confidence stated, not rewarded). The seeds, the held-out set, its
sampling key and the reporting window below were fixed before any result of this config was seen.
"""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import ml_collections  # noqa: E402

from configs import base  # noqa: E402


def study_run_config() -> ml_collections.ConfigDict:
    """The training config every cell starts from (the variant sets algo.*, the cell sets the seeds)."""
    config = base.tiny(base.get_base_config())
    tb = config.model.tiny_base
    tb.template = "dcpo"  # the base learns DCPO's prompt and output format ...
    tb.confidence = True  # ... and states a confidence after its answer
    tb.confidence_mode = "informative"  # 0.7-0.9 after the right procedure, 0.3-0.5 after the slip
    tb.trap_wrong_frac = 0.6  # 60% of the SFT trap problems are solved with the fluent left-to-right slip
    tb.steps = 600  # the study's base trains a fixed 600 steps, as in rounds 1 and 2 (it predates the early stop) ...
    tb.stop_at_accuracy = 0.0  # ... without stopping at a target accuracy
    tb.openers = 0  # opening phrasings, weight 2^-i (round 2's `phrasing` base sets 8); 0 keeps the round-1 base
    tb.step_phrasings = 0  # step-line phrasings, weight 2^-i (round 2's `phrasing` base sets 6)
    config.data.template = "dcpo"
    config.rollout.max_new_tokens = 80  # room for the confidence line
    config.data.holdout = 128  # the fixed held-out set: 128 prompts ...
    config.rollout.val_n = 16  # ... x 16 samples
    config.rollout.val_temperature = 1.0  # at T = 1
    config.rollout.val_seed = 0  # one sampling key for every evaluation of every cell
    config.algo.lam = 0.5  # DCPO: calibration target mixes group accuracy and per-sample correctness
    config.optim.lr = 2e-4  # twice the tiny default: the over-optimisation regime where GRPO sharpens
    config.train.steps = 30  # RL steps per cell
    config.log.val_every = 10  # evaluate every K steps (and at the end)
    config.checkpoint.every = 10  # an interrupted study resumes from here
    config.checkpoint.keep = 1
    config.log.num_text_samples = 1
    return config


def get_config():
    config = ml_collections.ConfigDict()
    config.run = study_run_config()  # the training config of every cell (any field: --config.run.a.b=value)
    config.algorithms = "grpo,drgrpo,capo,capo_nomask,dcpo"  # variants (capojax.study.VARIANTS), comma-separated
    config.seeds = "0,1,2"  # training seeds (each sets init-free RL randomness: prompt order and sampling)
    config.window = 2  # the summary averages each cell over its last `window` evaluations
    config.quick = False  # smoke test: quick_algorithms x the first seed x quick_steps on a small eval set
    config.quick_algorithms = "grpo,dcpo"  # variants of the quick study
    config.quick_steps = 4  # RL steps of the quick study
    config.quick_base_steps = 150  # SFT steps of the quick study's (cheaper, separately cached) base
    return config
