"""One factory builds the step's programs for the Trainer and for the dry-run plan: both get the same algorithm
settings (overrides, norm_len, reference) for every algorithm, and the plan can now compile Dr.GRPO's update."""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
import jax.numpy as jnp
import pytest

from capojax import memory_plan as mp
from capojax.models import PRESETS
from capojax.objectives import ALGORITHMS
from capojax.sharding import make_mesh
from capojax.trainer import loop, programs

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from configs import tiny_grpo  # noqa: E402

SMALL = PRESETS["tiny-bench"].replace(num_layers=1, hidden_size=64, intermediate_size=128, num_heads=2,
                                      num_kv_heads=1, head_dim=32, vocab_size=96)


def _config(name: str, model_path="tiny"):
    config = tiny_grpo.get_config()
    config.algo.name = name
    config.data.template = "dcpo"
    config.model.path = str(model_path)
    config.data.max_prompt_len, config.rollout.max_new_tokens, config.rollout.n = 8, 8, 2
    config.train.prompts_per_step, config.train.ppo_mini_batch, config.train.micro_batch = 8, 4, 4
    config.train.ppo_epochs = 2
    config.mesh.fsdp = 4  # micro-batches of 4 rows split over fsdp in the plan
    return config


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_step_programs_of_every_algorithm(name):
    config = _config(name)
    mesh = make_mesh(4, 2, jax.devices()[:8])
    graphdef, _ = mp.abstract_model(SMALL, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=False,
                                    mesh=mesh)
    built = programs.build_step_programs(config, mesh, graphdef, ref_graphdef=graphdef)
    assert built.algorithm.spec is ALGORITHMS[name]
    assert built.algorithm.loss_overrides["norm_len"] == config.rollout.max_new_tokens
    assert (built.ref_logprob is None) == (not built.algorithm.needs_reference)
    assert built.updates_per_step == 2 * (8 // 4)  # ppo_epochs x mini-batches
    assert built.micro_batches == 4 * 2 // 4  # rows per update / micro_batch
    assert built.logprob_chunk_rows == 4
    # the optimizer's schedule covers every optimizer step of the run
    assert float(built.schedule(0)) == config.optim.lr


def test_a_reference_algorithm_needs_the_reference_graph():
    config = _config("capo")
    mesh = make_mesh(8, 1, jax.devices()[:8])
    graphdef, _ = mp.abstract_model(SMALL, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=False,
                                    mesh=mesh)
    with pytest.raises(ValueError, match="capo with these settings reads a reference model"):
        programs.build_step_programs(config, mesh, graphdef)


def _spy(monkeypatch, target) -> list:
    calls = []
    real = programs.build_step_programs

    def recording(config, mesh, graphdef, **kwargs):
        built = real(config, mesh, graphdef, **kwargs)
        calls.append(built.algorithm)
        return built

    monkeypatch.setattr(target, "build_step_programs", recording)
    return calls


@pytest.mark.parametrize("name", ["drgrpo", "capo"])
def test_trainer_and_plan_build_the_same_programs(name, tiny_base, tmp_path, monkeypatch):
    """Dr.GRPO's norm_len reached the Trainer but not the plan (whose update could not even compile, the
    seq-mean-token-sum-norm aggregation needs it); now both come from one factory with one set of settings."""
    trainer_calls = _spy(monkeypatch, loop)
    plan_calls = _spy(monkeypatch, programs)  # memory_plan imports the factory from capojax.trainer.programs
    config = _config(name, tiny_base)
    config.data.max_prompt_len, config.data.holdout = 128, 4  # the synthetic prompts fit; few held out
    trainer = loop.Trainer(config, str(tmp_path / "run"))
    trainer.close()
    plan = mp.memory_plan(config)
    assert len(trainer_calls) == len(plan_calls) == 1
    assert trainer_calls[0] == plan_calls[0]
    assert plan_calls[0].loss_overrides["norm_len"] == 8
    assert (plan.ref_logprob is not None) == trainer.needs_reference == (name == "capo")
    assert plan.update.temp > 0


def test_the_schedule_spans_every_optimizer_step_of_the_run():
    """The logged learning rate is read from this schedule; it decays over steps x updates_per_step."""
    config = _config("grpo")
    config.optim.schedule, config.train.steps = "linear", 5
    mesh = make_mesh(4, 1, jax.devices()[:4])
    graphdef, _ = mp.abstract_model(SMALL, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=False,
                                    mesh=mesh)
    built = programs.build_step_programs(config, mesh, graphdef)
    total = 5 * built.updates_per_step
    assert float(built.schedule(total // 2)) == pytest.approx(config.optim.lr / 2)
    assert float(built.schedule(total)) == 0.0


@pytest.mark.parametrize("name,epochs,mini_batch,switch,expected", [
    ("grpo", 1, 8, True, True),  # one update per step, advantages from rewards: no old-log-prob pass
    ("dcpo", 1, 8, True, True),
    ("capo", 1, 8, True, False),  # CAPO's advantages read lpm before the update
    ("grpo", 2, 8, True, False),  # a second epoch is off-policy
    ("grpo", 1, 4, True, False),  # two mini-batches: the second update is off-policy
    ("grpo", 1, 8, False, False),  # train.old_logp_from_update=False keeps the pass
])
def test_on_policy_steps_take_the_old_logprobs_from_the_update(name, epochs, mini_batch, switch, expected):
    config = _config(name)
    config.train.ppo_epochs, config.train.ppo_mini_batch = epochs, mini_batch
    config.train.old_logp_from_update = switch
    mesh = make_mesh(4, 1, jax.devices()[:4])
    graphdef, _ = mp.abstract_model(SMALL, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=False,
                                    mesh=mesh)
    built = programs.build_step_programs(config, mesh, graphdef, ref_graphdef=graphdef)
    assert built.old_logp_in_update is expected


def test_an_on_policy_step_without_the_pass_trains_and_logs_like_one_with_it(tiny_base, tmp_path):
    """The same GRPO step from the same checkpoint and seed, with and without the old-log-prob pass: the same
    parameters afterwards and the same calibration metrics, read from the log-probs the update returned."""
    results = []
    for switch in (False, True):
        config = _config("grpo", tiny_base)
        config.data.max_prompt_len, config.data.holdout = 128, 4
        config.train.ppo_epochs, config.train.ppo_mini_batch = 1, 8  # one update per step
        config.train.old_logp_from_update = switch
        trainer = loop.Trainer(config, str(tmp_path / f"run{switch}"))
        assert trainer.programs.old_logp_in_update is switch
        metrics = trainer.train_step().metrics
        results.append((jax.tree.map(jnp.copy, trainer.params), metrics))
        trainer.close()
    (params_pass, with_pass), (params_fused, fused) = results
    assert "timing/old_logp" in with_pass and "timing/old_logp" not in fused
    for key in ("accuracy", "auc_mean", "auroc", "ece", "brier", "lpm/correct", "lpm/wrong", "entropy",
                "sampler/logp_gap_mean", "loss", "grad_norm"):
        assert fused[key] == pytest.approx(with_pass[key], abs=1e-4, nan_ok=True), key
    assert fused["clip_frac"] == 0.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_fused, params_pass)
