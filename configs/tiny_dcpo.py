"""DCPO on the CPU: the SFT'd tiny Qwen model on the synthetic arithmetic task (minutes on 2 cores)."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    config = base.tiny(base.get_base_config())
    config.algo.name = "dcpo"  # objective from capojax.objectives.ALGORITHMS
    config.data.template = "dcpo"  # prompt asks for CONFIDENCE after the answer
    config.model.tiny_base.template = "dcpo"  # the SFT base learns the same prompt format ...
    config.model.tiny_base.confidence = True  # ... and to state a confidence after its answer
    config.rollout.max_new_tokens = 80  # room for the confidence line
    config.algo.lam = 0.5  # calibration target: half group accuracy, half the sample's own correctness
    config.algo.clip_high = 0.28  # clip-higher as in the DCPO recipe
    return config
