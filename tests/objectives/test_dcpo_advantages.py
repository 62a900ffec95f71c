"""DCPO: rewards and token-level advantages, hand-computed cases and theorem 8 of issue 3."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from objectives_strategies import f32, fast

from capojax.objectives import dcpo_advantages, dcpo_rewards, grpo_advantages


def _masks(lengths, conf_spans, t):
    """response_mask / confidence_mask bool[B,G,T] from lengths [B,G] and (start, end) spans [B,G,2]."""
    pos = np.arange(t)
    response = pos < np.asarray(lengths)[..., None]
    spans = np.asarray(conf_spans)
    confidence = (pos >= spans[..., :1]) & (pos < spans[..., 1:]) & response
    return response, confidence


def test_dcpo_rewards_hand_computed():
    correct = jnp.array([[True, False, True, False]])  # group accuracy 0.5
    conf = jnp.array([[0.9, 0.2, jnp.nan, 0.5]])
    # lam = 0.5: targets = 0.25 + 0.5 * correct = [0.75, 0.25, 0.75, 0.25]
    acc, cal = dcpo_rewards(correct, conf, lam=0.5, error="squared")
    np.testing.assert_array_equal(acc, [[1.0, 0.0, 1.0, 0.0]])
    np.testing.assert_allclose(cal, [[-(0.15**2), -(0.05**2), -1.0, -(0.25**2)]], rtol=1e-5)
    _, cal_abs = dcpo_rewards(correct, conf, lam=0.5, error="absolute")
    np.testing.assert_allclose(cal_abs, [[-0.15, -0.05, -1.0, -0.25]], rtol=1e-5)
    # lam = 0: per-instance target (1 for correct, 0 for wrong); lam = 1: the group accuracy 0.5 for all.
    _, cal0 = dcpo_rewards(correct, conf, lam=0.0, error="absolute")
    np.testing.assert_allclose(cal0, [[-0.1, -0.2, -1.0, -0.5]], rtol=1e-5)
    _, cal1 = dcpo_rewards(correct, conf, lam=1.0, error="absolute")
    np.testing.assert_allclose(cal1, [[-0.4, -0.3, -1.0, 0.0]], rtol=1e-5)


def test_unparsed_confidence_gets_the_worst_reward():
    correct = jnp.array([[True, False, False]])
    # the worst a parsed confidence can do is an error of 1 (confidence 0 for target 1), reward -1; unparsed
    # gets exactly that, and out-of-range statements are clipped into [0, 1] first.
    conf = jnp.array([[0.0, jnp.nan, 7.0]])
    _, cal = dcpo_rewards(correct, conf, lam=0.0)
    np.testing.assert_allclose(cal, [[-1.0, -1.0, -1.0]])
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = rng.random((4, 6)) < 0.5
        p = rng.random((4, 6)).astype(np.float32)
        _, cal = dcpo_rewards(c, p, lam=float(rng.random()))
        assert np.all(np.asarray(cal) >= -1.0)


def test_dcpo_rejects_bad_input():
    with pytest.raises(ValueError, match="lam"):
        dcpo_rewards(jnp.array([[True]]), jnp.array([[0.5]]), lam=1.5)
    with pytest.raises(ValueError, match="error"):
        dcpo_rewards(jnp.array([[True]]), jnp.array([[0.5]]), error="huber")
    with pytest.raises(ValueError, match="confidence_mask"):
        dcpo_advantages(jnp.array([[True]]), jnp.array([[0.5]]), jnp.ones((1, 1, 4), bool), jnp.ones((1, 1, 3), bool))


def test_tokens_get_their_own_advantage_not_swapped():
    """Pins the paper's intent (the released code appears to swap them): reasoning tokens carry the accuracy
    advantage, confidence tokens the calibration advantage. Built so the two advantages differ in sign."""
    correct = jnp.array([[True, False]])
    # the correct answer states 0.1 (badly calibrated), the wrong one 0.0 (well calibrated, lam = 0)
    conf = jnp.array([[0.1, 0.0]])
    response, confidence = _masks([[5, 4]], [[[3, 5], [2, 4]]], 6)  # sample 0: 3 reasoning + 2 confidence tokens
    adv = np.asarray(dcpo_advantages(correct, conf, response, confidence, lam=0.0, scale="none"))
    # accuracy advantage: +0.5 / -0.5; calibration rewards -(0.9)^2 = -0.81 and 0 -> advantage -0.405 / +0.405
    np.testing.assert_allclose(adv[0, 0, :3], [0.5, 0.5, 0.5], rtol=1e-6)  # reasoning tokens of sample 0
    np.testing.assert_allclose(adv[0, 0, 3:5], [-0.405, -0.405], rtol=1e-5)  # its confidence tokens
    np.testing.assert_allclose(adv[0, 1, :2], [-0.5, -0.5], rtol=1e-6)  # reasoning tokens of sample 1
    np.testing.assert_allclose(adv[0, 1, 2:4], [0.405, 0.405], rtol=1e-5)  # its confidence tokens
    np.testing.assert_array_equal(adv[0, 0, 5:], 0.0)  # padding
    np.testing.assert_array_equal(adv[0, 1, 4:], 0.0)


def test_confidence_mask_outside_response_is_ignored():
    correct = jnp.array([[True, False]])
    response = jnp.array([[[True, True, False], [True, False, False]]])
    confidence = jnp.array([[[False, False, True], [False, True, True]]])  # only padding positions
    adv = np.asarray(dcpo_advantages(correct, jnp.array([[1.0, 0.0]]), response, confidence, scale="none"))
    np.testing.assert_allclose(adv, [[[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]]])


def _normalisation_atol(rewards, scale, eps=1e-6):
    """Float32 error bound of a group-normalised reward f32[B,G] -> [B,1]: the centring (G r - sum r)/G is exact
    up to ~G ulps of the largest |r|, and dividing by (std + eps) amplifies that by 1/(std + eps). (When all
    rewards of a group are nearly equal this is what dominates; it is a bound, not a loosened tolerance.)"""
    r = np.asarray(rewards, np.float64)
    g = r.shape[-1]
    err = 2 * g * np.finfo(np.float32).eps * (1.0 + np.abs(r).max(-1, keepdims=True))
    if scale == "none" or g == 1:
        return err
    return err / (np.std(r, -1, ddof=1, keepdims=True) + eps)


class DcpoTheorems(chex.TestCase):
    # 8. Each token gets exactly its own advantage; each normalised reward sums to 0 within a group.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(10)
    @given(
        data=st.data(),
        g=st.sampled_from([1, 3, 6]),
        lam=f32(0.0, 1.0),
        error=st.sampled_from(["squared", "absolute"]),
        scale=st.sampled_from(["group_std", "none"]),
    )
    def test_reasoning_and_confidence_tokens_get_their_own_advantage(self, data, g, lam, error, scale):
        b, t = 2, 8
        correct = data.draw(hnp.arrays(np.bool_, (b, g)))
        conf = data.draw(hnp.arrays(np.float32, (b, g), elements=f32(0.0, 1.0)))
        unparsed = data.draw(hnp.arrays(np.bool_, (b, g)))
        conf = np.where(unparsed, np.nan, conf).astype(np.float32)
        lengths = data.draw(hnp.arrays(np.int32, (b, g), elements=st.integers(1, t)))
        starts = data.draw(hnp.arrays(np.int32, (b, g), elements=st.integers(0, t)))
        spans = np.stack([starts, np.minimum(starts + 2, lengths)], -1)
        spans = np.where(unparsed[..., None], 0, spans)  # no confidence span when it could not be parsed
        response, confidence = _masks(lengths, spans, t)

        adv = np.asarray(
            self.variant(dcpo_advantages, static_argnames=("error", "scale"))(
                correct, conf, response, confidence, lam=lam, error=error, scale=scale
            )
        )
        acc_r, cal_r = dcpo_rewards(correct, conf, lam=lam, error=error)
        acc_a = np.asarray(grpo_advantages(acc_r, scale=scale))
        cal_a = np.asarray(grpo_advantages(cal_r, scale=scale))
        reasoning = response & ~confidence
        for kind, ref, reward in ((reasoning, acc_a, acc_r), (confidence, cal_a, cal_r)):
            # jit and eager may round the centring differently: compare to the float32 error bound, not bit-wise.
            tol = np.broadcast_to(_normalisation_atol(reward, scale)[..., None], adv.shape)
            expected = np.broadcast_to(ref[..., None], adv.shape)
            assert np.all(np.abs(adv[kind] - expected[kind]) <= tol[kind])
            # within a sequence every token of a kind carries one identical value (exactly its own advantage)
            per_seq = np.where(kind, adv, -np.inf).max(-1, keepdims=True)
            np.testing.assert_array_equal(np.where(kind, adv, 0.0), np.where(kind, per_seq, 0.0))
            # each normalised reward sums to 0 within its group
            assert np.all(np.abs(ref.sum(-1, keepdims=True)) <= ref.shape[-1] * _normalisation_atol(reward, scale))
        np.testing.assert_array_equal(adv[~response], 0.0)
