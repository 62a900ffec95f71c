"""GSPO baseline on Qwen2.5-Math-7B (the CAPO paper reports GSPO at 7B): the CAPO-7B recipe, GSPO's objective."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402,F401
from configs import capo_7b  # noqa: E402
from configs import gspo_1p5b  # noqa: E402


def get_config():
    config = gspo_1p5b.as_gspo(capo_7b.get_config())
    config.train.micro_batch = 8  # rows per forward/backward chunk: fits 8x80 GB (see --config.dry_run=True)
    config.mesh.fsdp = 4  # 4-way FSDP x 2-way tensor parallel: the 8x80 GB plan that fits
    config.mesh.tp = 2  # tensor-parallel degree
    return config
