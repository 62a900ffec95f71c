"""GRPO on the CPU: the SFT'd tiny Qwen model on the synthetic arithmetic task (minutes on 2 cores)."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    config = base.tiny(base.get_base_config())
    config.algo.name = "grpo"  # objective from capojax.objectives.ALGORITHMS
    return config
