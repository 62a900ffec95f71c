"""GRPO baseline on Qwen2.5-Math-7B: the CAPO-7B recipe with the GRPO advantage."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402
from configs import capo_7b  # noqa: E402


def get_config():
    config = base.switch_algorithm(capo_7b.get_config(), "grpo")  # (r - mean) / std advantage; CAPO's tau 0.5 dropped
    config.train.micro_batch = 32  # rows per forward/backward chunk: the largest with >= 15% headroom on 8x80 GB (dry-run plan 82%)
    config.mesh.fsdp = 4  # 4-way FSDP x 2-way tensor parallel: the 8x80 GB plan that fits
    config.mesh.tp = 2  # tensor-parallel degree
    return config
