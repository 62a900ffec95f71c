"""The CAPO paper's mask-only ablation on Qwen2.5-Math-1.5B: GRPO's advantage with CAPO's reference-perplexity
noise mask (lucky guesses and near-misses get advantage 0), without the logistic AUC surrogate."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402,F401
from configs import grpo_1p5b  # noqa: E402


def get_config():
    config = grpo_1p5b.get_config()
    config.algo.use_ref_mask = True  # the reference-PPL mask on GRPO's advantages (loads the reference model)
    config.algo.ref_high = 2.5  # lucky-guess filter on correct samples (CAPO's value)
    config.algo.ref_low = 1.05  # near-miss filter on wrong samples (CAPO's value)
    config.train.micro_batch = 8  # rows per forward/backward chunk: fits 8x80 GB (see --config.dry_run=True)
    return config
