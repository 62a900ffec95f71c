"""ALGORITHMS / ADVANTAGE_ESTIMATORS: every algorithm runs end to end under jit through one code path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capojax.objectives import (
    ADVANTAGE_ESTIMATORS,
    ALGORITHMS,
    AdvantageInputs,
    AlgorithmSpec,
    capo_advantages,
    compute_advantages,
    get_algorithm,
    grpo_advantages,
    lpm,
    register_advantage_estimator,
)

B, G, T = 2, 4, 6


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    correct = rng.random((B, G)) < 0.5
    correct[0, :2] = [True, False]  # at least one mixed group
    lengths = rng.integers(2, T + 1, (B, G))
    response = np.arange(T) < lengths[..., None]
    confidence = (np.arange(T) >= lengths[..., None] - 2) & response
    old = rng.uniform(-2, -0.01, (B, G, T)).astype(np.float32)
    return AdvantageInputs(
        rewards=jnp.asarray(correct, jnp.float32),
        response_mask=jnp.asarray(response),
        correct=jnp.asarray(correct),
        lpm=lpm(old, response),
        ref_ppl=jnp.asarray(rng.uniform(1.0, 3.0, (B, G)), jnp.float32),
        confidence=jnp.asarray(np.where(rng.random((B, G)) < 0.2, np.nan, rng.random((B, G))), jnp.float32),
        confidence_mask=jnp.asarray(confidence),
    ), old


def test_registries_hold_the_documented_names():
    assert set(ALGORITHMS) == {"grpo", "drgrpo", "gspo", "capo", "dcpo"}
    assert {"grpo", "capo", "dcpo", "pairwise"} <= set(ADVANTAGE_ESTIMATORS)
    assert ALGORITHMS["gspo"].ratio_level == "sequence"
    assert all(ALGORITHMS[n].ratio_level == "token" for n in ("grpo", "drgrpo", "capo", "dcpo"))
    assert ALGORITHMS["drgrpo"].advantage_hparams["scale"] == "none"


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_runs_end_to_end_under_jit(name):
    """The same jitted step for every algorithm: advantages -> objective -> gradient, no name branching."""
    spec = get_algorithm(name)
    inputs, old = _inputs()
    objective = spec.objective(norm_len=T, kl_coef=0.01, entropy_coef=0.001)

    @jax.jit
    def step(inputs, logp, entropy):
        adv = spec.advantages(inputs)
        batch = {
            "old_logp": old.reshape(B * G, T),
            "ref_logp": old.reshape(B * G, T) - 0.1,
            "advantages": adv.reshape(B * G, T),
            "response_mask": inputs.response_mask.reshape(B * G, T),
        }
        (loss, metrics), grad = jax.value_and_grad(objective, has_aux=True)(logp, entropy, batch)
        return adv, loss, metrics, grad

    logp = jnp.asarray(old.reshape(B * G, T)) + 0.05
    adv, loss, metrics, grad = step(inputs, logp, jnp.ones((B * G, T)))
    assert adv.shape == (B, G, T) and adv.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(adv)[~np.asarray(inputs.response_mask)], 0.0)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    for key in ("pg_loss", "clip_frac/low", "clip_frac/high", "ratio/mean", "ratio/max", "ratio/min", "kl",
                "entropy", "loss/kl", "loss/total"):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert float(metrics["kl"]) > 0


def test_spec_advantages_match_the_direct_functions():
    inputs, _ = _inputs(1)
    mask = np.asarray(inputs.response_mask)
    grpo = ALGORITHMS["grpo"].advantages(inputs)
    np.testing.assert_allclose(grpo, np.where(mask, grpo_advantages(inputs.rewards)[..., None], 0.0), rtol=1e-6)
    capo = ALGORITHMS["capo"].advantages(inputs, tau=0.5)
    direct = capo_advantages(inputs.correct, inputs.lpm, tau=0.5, ref_ppl=inputs.ref_ppl)
    np.testing.assert_allclose(capo, np.where(mask, direct[..., None], 0.0), rtol=1e-6)
    unmasked = compute_advantages("capo", inputs, tau=0.5, use_ref_mask=False)
    np.testing.assert_allclose(unmasked, np.where(mask, capo_advantages(inputs.correct, inputs.lpm, tau=0.5)[..., None], 0.0), rtol=1e-6)
    hinge = compute_advantages("pairwise", inputs, surrogate="hinge", margin=0.1)
    assert hinge.shape == (B, G, T)


def test_gspo_objective_uses_one_ratio_per_sequence():
    inputs, old = _inputs(2)
    mask = np.asarray(inputs.response_mask).reshape(B * G, T)
    logp = jnp.asarray(old.reshape(B * G, T)) + jnp.linspace(-0.05, 0.05, T)
    batch = {"old_logp": old.reshape(B * G, T), "advantages": jnp.ones((B * G, T)), "response_mask": mask}
    _, token_metrics = ALGORITHMS["grpo"].objective()(logp, None, batch)
    _, seq_metrics = ALGORITHMS["gspo"].objective()(logp, None, batch)
    seq_ratio = np.exp(np.sum(np.where(mask, logp - old.reshape(B * G, T), 0), -1) / mask.sum(-1))
    np.testing.assert_allclose(seq_metrics["ratio/max"], seq_ratio.max(), rtol=1e-6)
    assert float(token_metrics["ratio/max"]) > float(seq_metrics["ratio/max"])


def test_clear_errors():
    inputs, _ = _inputs()
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages("ppo", inputs)
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_algorithm("reinforce")
    with pytest.raises(ValueError, match=r"needs AdvantageInputs\.lpm"):
        ALGORITHMS["capo"].advantages(AdvantageInputs(rewards=inputs.rewards, response_mask=inputs.response_mask,
                                                      correct=inputs.correct))
    with pytest.raises(ValueError, match=r"needs AdvantageInputs\.confidence"):
        ALGORITHMS["dcpo"].advantages(AdvantageInputs(rewards=inputs.rewards, response_mask=inputs.response_mask,
                                                      correct=inputs.correct))
    with pytest.raises(ValueError, match="unknown loss overrides"):
        ALGORITHMS["grpo"].objective(clip=0.1)
    batch = {"old_logp": jnp.zeros((2, 3)), "advantages": jnp.zeros((2, 3)), "response_mask": jnp.ones((2, 3), bool)}
    with pytest.raises(ValueError, match="norm_len"):
        ALGORITHMS["drgrpo"].objective()(jnp.zeros((2, 3)), None, batch)
    with pytest.raises(ValueError, match="ref_logp"):
        ALGORITHMS["grpo"].objective(kl_coef=0.1)(jnp.zeros((2, 3)), None, batch)
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda inputs: inputs.rewards)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        AlgorithmSpec(name="x", advantage="nope", ratio_level="token", advantage_hparams={}, loss_hparams={})


def test_which_algorithms_read_the_reference():
    """The trainer loads a reference model only for estimators that declare they read ref_ppl (or for KL)."""
    assert get_algorithm("capo").reads_reference()
    assert not get_algorithm("capo").reads_reference(use_ref_mask=False)
    assert not any(get_algorithm(name).reads_reference() for name in ("grpo", "drgrpo", "gspo", "dcpo"))
    # and the flag is what the mask does: without it CAPO's advantages ignore ref_ppl
    inputs, _ = _inputs()
    inputs = inputs.replace(ref_ppl=jnp.full((B, G), 3.0))  # above ref_high: the mask drops every correct sample
    capo = get_algorithm("capo")
    masked = capo.advantages(inputs, tau=0.6)
    unmasked = capo.advantages(inputs, tau=0.6, use_ref_mask=False)
    np.testing.assert_allclose(np.asarray(unmasked), np.asarray(capo.advantages(inputs.replace(ref_ppl=None), tau=0.6)))
    assert not np.allclose(np.asarray(masked), np.asarray(unmasked))


def test_the_reference_ppl_mask_works_with_any_estimator():
    """The CAPO paper's mask-only ablation (GRPO advantages, reference-PPL mask): the mask is a step after the
    estimator, so any algorithm can turn it on; it then needs the reference model."""
    inputs, _ = _inputs(3)
    mask = np.asarray(inputs.response_mask)
    keep = np.where(np.asarray(inputs.correct), np.asarray(inputs.ref_ppl) <= 2.5, np.asarray(inputs.ref_ppl) >= 1.05)
    assert not keep.all() and keep.any()
    for name in ("grpo", "dcpo", "gspo"):
        spec = get_algorithm(name)
        assert not spec.reads_reference() and spec.reads_reference(use_ref_mask=True)
        plain = np.asarray(spec.advantages(inputs))
        masked = np.asarray(spec.advantages(inputs, use_ref_mask=True))
        np.testing.assert_array_equal(masked, np.where(keep[..., None], plain, 0.0))
    grpo = np.asarray(ALGORITHMS["grpo"].advantages(inputs, use_ref_mask=True, ref_high=10.0, ref_low=0.0))
    np.testing.assert_array_equal(grpo, np.asarray(ALGORITHMS["grpo"].advantages(inputs)))  # thresholds reach it
    # CAPO through the shared mask equals the direct function with its mask
    direct = capo_advantages(inputs.correct, inputs.lpm, tau=0.6, ref_ppl=inputs.ref_ppl)
    np.testing.assert_allclose(ALGORITHMS["capo"].advantages(inputs), np.where(mask, direct[..., None], 0.0),
                               rtol=1e-6)


def test_capo_default_tau_is_the_papers():
    """Both papers train CAPO with tau 0.6 (1.5B) / 0.5 (7B); the spec's built-in default is 0.6, not 0.1."""
    assert get_algorithm("capo").advantage_hparams["tau"] == 0.6
    assert get_algorithm("capo").advantage_hparams["use_ref_mask"] is True
    assert all(get_algorithm(n).advantage_hparams["use_ref_mask"] is False for n in ("grpo", "drgrpo", "gspo", "dcpo"))
