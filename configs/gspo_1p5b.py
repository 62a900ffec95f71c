"""GSPO baseline on Qwen2.5-Math-1.5B: sequence-level importance ratio (clip ranges from the GSPO paper)."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402
from configs import capo_1p5b  # noqa: E402


def as_gspo(config):
    """The GSPO objective on a CAPO recipe (shared by gspo_1p5b and gspo_7b)."""
    base.switch_algorithm(config, "gspo")  # sequence-level ratio (geometric mean of token ratios), GRPO advantage
    config.algo.clip_low = 3e-4  # GSPO clips the sequence ratio much tighter than PPO's 0.2
    config.algo.clip_high = 4e-4  # GSPO paper's asymmetric range
    config.algo.loss_agg = "seq-mean-token-mean"  # J_GSPO is a mean over the G sequences (GSPO paper)
    return config


def get_config():
    config = as_gspo(capo_1p5b.get_config())
    config.train.micro_batch = 64  # rows per forward/backward chunk: the largest with >= 15% headroom on 8x80 GB (dry-run plan 54%)
    return config
