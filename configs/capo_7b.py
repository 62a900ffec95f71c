"""CAPO on Qwen2.5-Math-7B: the 1.5B recipe with tau 0.5 and 400 steps."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402
from configs import capo_1p5b  # noqa: E402


def get_config():
    config = capo_1p5b.get_config()
    base.paper_model(config, "qwen2.5-math-7b")
    config.algo.tau = 0.5  # sharper surrogate for the larger model
    config.train.steps = 400  # RL steps
    config.train.micro_batch = 32  # rows per forward/backward chunk: the largest with >= 15% headroom on 8x80 GB (dry-run plan 84%)
    config.mesh.fsdp = 4  # 4-way FSDP x 2-way tensor parallel: the 8x80 GB plan that fits
    config.mesh.tp = 2  # tensor-parallel degree
    return config
