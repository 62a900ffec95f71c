"""Configs load through ml_collections config_flags, take overrides, reject unknown keys, carry the paper numbers."""

import pathlib
import re

import pytest
from absl import flags
from ml_collections import config_flags

from capojax.models.resolve import ModelNotFoundError, resolve_model_path

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
NAMES = ["capo_1p5b", "capo_7b", "grpo_1p5b", "grpo_7b", "gspo_1p5b", "gspo_7b", "grpo_mask_1p5b", "dcpo_qwen3_8b",
         "tiny_grpo", "tiny_capo", "tiny_dcpo"]


def load(name, *overrides):
    argv = ["prog", f"--config={CONFIGS / (name + '.py')}", *overrides]
    fv = flags.FlagValues()
    # sys_argv: config_flags declares the --config.* override flags from the argv it will parse.
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("name", NAMES)
def test_every_config_loads_with_the_full_structure(name):
    c = load(name)
    for section in ("model", "mesh", "data", "rollout", "algo", "optim", "train", "checkpoint", "log"):
        assert section in c, section
    assert c.algo.name in ("grpo", "drgrpo", "gspo", "capo", "dcpo")
    assert c.train.prompts_per_step % c.train.ppo_mini_batch == 0
    assert c.dry_run is False


def test_override_a_key():
    c = load("tiny_capo", "--config.train.steps=7", "--config.algo.tau=0.3", "--config.data.source=x.jsonl")
    assert c.train.steps == 7 and c.algo.tau == 0.3 and c.data.source == "x.jsonl"


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(Exception, match="stepz"):
        load("tiny_capo", "--config.train.stepz=7")


def test_wrong_type_is_an_error():
    with pytest.raises(Exception, match="steps"):
        load("tiny_capo", "--config.train.steps=many")


def test_capo_paper_numbers():
    c = load("capo_1p5b")
    assert c.model.hf_name == "Qwen/Qwen2.5-Math-1.5B"
    assert (c.data.subset_size, c.data.holdout) == (20_000, 240)
    assert (c.optim.lr, c.train.prompts_per_step, c.train.ppo_mini_batch) == (1e-6, 128, 64)
    assert (c.rollout.n, c.rollout.val_n, c.rollout.temperature) == (8, 16, 1.0)
    assert (c.algo.name, c.algo.clip_low, c.algo.clip_high, c.algo.kl_coef, c.algo.entropy_coef) == ("capo", 0.2, 0.2, 0.0, 0.0)
    assert (c.algo.tau, c.algo.ref_high, c.algo.ref_low, c.train.steps) == (0.6, 2.5, 1.05, 600)
    c7 = load("capo_7b")
    assert (c7.model.hf_name, c7.algo.tau, c7.train.steps) == ("Qwen/Qwen2.5-Math-7B", 0.5, 400)
    assert load("grpo_1p5b").algo.name == "grpo" and load("grpo_7b").model.hf_name == "Qwen/Qwen2.5-Math-7B"
    assert load("gspo_1p5b").algo.name == "gspo"


def test_dcpo_paper_numbers():
    c = load("dcpo_qwen3_8b")
    assert c.model.hf_name == "Qwen/Qwen3-8B" and c.data.template == "dcpo"
    assert (c.train.prompts_per_step, c.rollout.n, c.train.ppo_mini_batch) == (256, 8, 64)
    assert (c.optim.lr, c.optim.schedule, c.optim.weight_decay, c.optim.grad_clip) == (2e-6, "constant", 0.01, 1.0)
    assert (c.data.max_prompt_len, c.rollout.max_new_tokens) == (1024, 3000)
    assert (c.algo.clip_low, c.algo.clip_high, c.algo.kl_coef, c.algo.kl_kind) == (0.2, 0.28, 0.001, "k3")
    assert (c.algo.loss_agg, c.algo.lam) == ("token-mean", 0.5)


def test_tiny_configs_use_the_synthetic_task_and_tiny_base():
    for name in ("tiny_grpo", "tiny_capo", "tiny_dcpo"):
        c = load(name)
        assert c.model.path == "tiny" and c.data.source == "synthetic" and c.rollout.engine == "jax"
    d = load("tiny_dcpo")
    assert d.data.template == d.model.tiny_base.template == "dcpo" and d.model.tiny_base.confidence


@pytest.mark.parametrize("name,hub", [("capo_1p5b", "Qwen/Qwen2.5-Math-1.5B"), ("dcpo_qwen3_8b", "Qwen/Qwen3-8B")])
def test_missing_model_path_says_where_to_get_it(name, hub, tmp_path):
    c = load(name)
    with pytest.raises(ModelNotFoundError, match=re.escape(hub)) as e:
        resolve_model_path(c.model)
    assert "--config.model.path=" in str(e.value) and "huggingface-cli download" in str(e.value)
    c = load(name, f"--config.model.path={tmp_path}")  # a folder that is not a checkpoint
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(c.model)


def test_every_base_field_has_a_comment():
    src = (CONFIGS / "base.py").read_text()
    body = src[src.index("def tiny_base_settings"): src.index("def paper_model")]  # the two field-defining functions
    fields = [l for l in body.splitlines() if re.match(r"\s+\w+(\.\w+)+ = ", l) and "ConfigDict()" not in l]
    assert len(fields) > 60
    assert not [l for l in fields if "#" not in l]


def test_dcpo_on_a_template_without_confidence_is_a_startup_error():
    """DCPO declares that it needs a stated confidence; on the plain template every calibration reward would be the
    constant "unparsed" value (GRPO plus a constant), so the trainer refuses before loading anything."""
    from capojax.trainer.loop import validate_config

    with pytest.raises(ValueError, match=r"algo.name='dcpo' needs a stated confidence.*template='qwen-math'.*dcpo"):
        validate_config(load("tiny_dcpo", "--config.data.template=qwen-math"))
    with pytest.raises(ValueError, match="needs a stated confidence"):
        validate_config(load("tiny_grpo", "--config.algo.name=dcpo"))
    validate_config(load("tiny_dcpo"))
    validate_config(load("dcpo_qwen3_8b"))


def test_grpo_on_the_dcpo_template_is_allowed_and_parses_confidence():
    """DCPO's baseline: GRPO trained on the confidence template; the confidence is parsed (logged), not rewarded."""
    from capojax.objectives import get_algorithm
    from capojax.trainer.loop import parses_confidence, validate_config

    c = load("tiny_dcpo", "--config.algo.name=grpo")
    validate_config(c)
    assert parses_confidence(get_algorithm("grpo"), c.data)
    assert parses_confidence(get_algorithm("dcpo"), c.data)
    assert not parses_confidence(get_algorithm("grpo"), load("tiny_grpo").data)
    assert get_algorithm("dcpo").needs_confidence
    assert not any(get_algorithm(n).needs_confidence for n in ("grpo", "drgrpo", "gspo", "capo"))


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_grades_training_rewards_boxed_only(name):
    """verl's math reward: the last \\boxed{} or nothing (no free extraction of "the answer is 25")."""
    assert load(name).reward.require_boxed is True


def test_paper_presets_follow_verl_where_the_papers_are_silent():
    """CAPO trained with verl: token-mean loss aggregation and AdamW weight decay 0.01 (verl's actor defaults);
    GSPO keeps its paper's sequence mean; the DCPO preset already had both."""
    for name in ("capo_1p5b", "capo_7b", "grpo_1p5b", "grpo_7b", "dcpo_qwen3_8b"):
        c = load(name)
        assert (c.algo.loss_agg, c.optim.weight_decay) == ("token-mean", 0.01), name
    g = load("gspo_1p5b")
    assert (g.algo.loss_agg, g.optim.weight_decay) == ("seq-mean-token-mean", 0.01)


def test_gspo_7b_and_the_mask_only_ablation():
    from capojax.objectives import get_algorithm
    from capojax.trainer.loop import algo_overrides

    g = load("gspo_7b")
    assert (g.model.hf_name, g.algo.name) == ("Qwen/Qwen2.5-Math-7B", "gspo")
    assert (g.algo.clip_low, g.algo.clip_high) == (3e-4, 4e-4)
    assert (g.train.steps, g.mesh.fsdp, g.mesh.tp) == (400, 4, 2)
    m = load("grpo_mask_1p5b")
    assert (m.algo.name, m.algo.use_ref_mask, m.algo.ref_high, m.algo.ref_low) == ("grpo", True, 2.5, 1.05)

    def reads_reference(c):
        spec = get_algorithm(c.algo.name)
        return spec.reads_reference(**algo_overrides(spec.advantage_hparams, c.algo))

    assert reads_reference(m) and reads_reference(load("capo_1p5b"))
    assert not reads_reference(load("grpo_1p5b"))
    assert not reads_reference(load("capo_1p5b", "--config.algo.use_ref_mask=False"))
    assert load("grpo_1p5b").algo.use_ref_mask is None  # None: the algorithm's own choice


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_passes_the_startup_checks(name):
    """Sizes, engine, algorithm vs template, and no config.algo key set for another algorithm."""
    from capojax.trainer.loop import validate_config

    validate_config(load(name))


def test_presets_on_another_algorithms_recipe_drop_its_settings():
    """grpo_7b and gspo_7b start from capo_7b, whose tau 0.5 is CAPO's: they put it back to the default instead of
    carrying a setting their algorithm would ignore (which the trainer refuses at start-up)."""
    from capojax.trainer.settings import check_algo_keys

    assert load("capo_7b").algo.tau == 0.5
    for name in ("grpo_7b", "gspo_7b", "grpo_1p5b", "gspo_1p5b"):
        assert load(name).algo.tau == 0.6, name
    with pytest.raises(ValueError, match="config.algo.tau=0.5 is read only by capo"):
        check_algo_keys(load("capo_7b", "--config.algo.name=grpo").algo)
