"""config.algo keys: each algorithm declares the keys it reads; a key set for another algorithm is a start-up error
that names the key, the algorithm that reads it and what to do; base-config defaults of other algorithms' keys are
fine. The algorithm's settings carry Dr.GRPO's norm_len."""

from __future__ import annotations

import pathlib
import sys

import pytest

from capojax.errors import ConfigError, UserError
from capojax.objectives import ALGORITHMS
from capojax.trainer.settings import (algorithm_settings, check_algo_keys, drop_foreign_algo_keys,
                                      validate_config)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root, for configs/
from configs import base, tiny_grpo  # noqa: E402


def _config(name: str, **algo):
    config = tiny_grpo.get_config()
    config.algo.name = name
    config.data.template = "dcpo"  # asks for a confidence: every algorithm may train on it
    for key, value in algo.items():
        config.algo[key] = value
    return config


def test_each_algorithm_declares_the_keys_it_reads():
    loss_keys = {"clip_low", "clip_high", "dual_clip", "loss_agg", "kl_coef", "kl_kind", "entropy_coef"}
    mask_keys = {"use_ref_mask", "ref_high", "ref_low"}  # the reference-PPL mask works with any estimator
    for spec in ALGORITHMS.values():
        assert loss_keys | mask_keys <= spec.config_keys, spec.name
        assert not {"agg", "norm_len", "name"} & spec.config_keys  # agg is config.algo.loss_agg; norm_len is not in algo
    assert "tau" in ALGORITHMS["capo"].config_keys and "lam" not in ALGORITHMS["capo"].config_keys
    assert "lam" in ALGORITHMS["dcpo"].config_keys and "tau" not in ALGORITHMS["dcpo"].config_keys
    assert not {"tau", "lam"} & ALGORITHMS["grpo"].config_keys
    assert ALGORITHMS["capo"].config_default("tau") == 0.6 and ALGORITHMS["drgrpo"].config_default("loss_agg") == \
        "seq-mean-token-sum-norm"
    with pytest.raises(KeyError, match="grpo does not read config.algo.tau"):
        ALGORITHMS["grpo"].config_default("tau")


def test_the_base_config_defaults_of_every_algorithm_are_fine_for_each():
    for name in ALGORITHMS:
        check_algo_keys(_config(name).algo)
    check_algo_keys(base.get_base_config().algo)


@pytest.mark.parametrize("name, key, value, reader", [
    ("grpo", "tau", 0.3, "capo"),
    ("drgrpo", "tau", 0.1, "capo"),
    ("capo", "lam", 0.7, "dcpo"),
    ("gspo", "lam", 0.2, "dcpo"),
    ("dcpo", "tau", 0.5, "capo"),
])
def test_a_changed_key_of_another_algorithm_is_a_clear_startup_error(name, key, value, reader):
    config = _config(name, **{key: value})
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    message = str(e.value)
    assert message.startswith(f"config.algo.{key}={value!r} is read only by {reader}, not by config.algo.name={name!r}")
    assert f"remove the {key} setting" in message and f"--config.algo.name to an algorithm that reads it ({reader})" \
        in message


def test_a_key_given_on_the_command_line_is_an_error_even_at_its_default():
    config = _config("grpo")
    check_algo_keys(config.algo)  # tau 0.6 is CAPO's default: not set
    with pytest.raises(ConfigError, match=r"config.algo.tau=0.6 is read only by capo"):
        check_algo_keys(config.algo, explicit=["tau"])
    check_algo_keys(config.algo, explicit=["clip_high", "use_ref_mask", "name"])  # keys grpo reads


def test_own_and_shared_keys_may_change():
    check_algo_keys(_config("capo", tau=0.1, ref_high=3.0, clip_high=0.28, loss_agg="token-mean").algo)
    check_algo_keys(_config("dcpo", lam=0.9, kl_coef=0.01).algo)
    check_algo_keys(_config("grpo", use_ref_mask=True, ref_low=1.1).algo)  # the mask-only ablation


def test_a_key_no_algorithm_reads_is_an_error():
    config = _config("grpo")
    config.algo.taus = 0.3  # a misspelt key added in a config file (the command line refuses unknown keys itself)
    with pytest.raises(ConfigError, match=r"config.algo.taus is read by no algorithm; remove it .*tau"):
        check_algo_keys(config.algo)


def test_drop_foreign_keys_and_switch_algorithm():
    config = _config("capo", tau=0.3, lam=0.9, clip_high=0.28)
    config.algo.name = "grpo"
    drop_foreign_algo_keys(config.algo)
    assert (config.algo.tau, config.algo.lam, config.algo.clip_high) == (0.6, 0.5, 0.28)
    check_algo_keys(config.algo)
    switched = base.switch_algorithm(_config("capo", tau=0.5), "dcpo")
    assert (switched.algo.name, switched.algo.tau) == ("dcpo", 0.6)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_settings_carry_norm_len_and_the_overrides(name):
    config = _config(name, clip_high=0.28)
    config.rollout.max_new_tokens = 77
    settings = algorithm_settings(config)
    assert settings.spec is ALGORITHMS[name]
    assert settings.loss_overrides["norm_len"] == 77 and settings.loss_overrides["clip_high"] == 0.28
    assert "agg" not in settings.loss_overrides  # loss_agg "" keeps the algorithm's own aggregation
    assert settings.agg == ALGORITHMS[name].loss_hparams["agg"]
    assert settings.needs_reference == (name == "capo")
    assert algorithm_settings(_config(name, kl_coef=0.01)).needs_reference
