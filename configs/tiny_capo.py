"""CAPO on the CPU: the SFT'd tiny Qwen model on the synthetic arithmetic task (minutes on 2 cores)."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    config = base.tiny(base.get_base_config())
    config.algo.name = "capo"  # objective from capojax.objectives.ALGORITHMS
    config.algo.tau = 0.6  # surrogate temperature (paper 1.5B value)
    config.algo.ref_high = 2.5  # lucky-guess filter
    config.algo.ref_low = 1.05  # near-miss filter
    return config
