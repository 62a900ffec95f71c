"""GRPO baseline on Qwen2.5-Math-1.5B: the CAPO recipe with the group-normalised reward advantage."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402
from configs import capo_1p5b  # noqa: E402


def get_config():
    config = base.switch_algorithm(capo_1p5b.get_config(), "grpo")  # (r - mean) / std advantage
    config.train.micro_batch = 64  # rows per forward/backward chunk: the largest with >= 15% headroom on 8x80 GB (dry-run plan 54%)
    return config
