"""GRPO / pairwise / CAPO advantages: hand-computed cases and theorems 1, 2, 3 and 6 of issue 3."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from objectives_strategies import G_VALUES, f32, fast, groups

from capojax.objectives import (
    Linear,
    Logistic,
    capo_advantages,
    capo_mask,
    grpo_advantages,
    lpm,
    pairwise_advantages,
    pairwise_surrogate_loss,
)

SIG1 = 0.7310585786300049  # sigmoid(1)
SIGM1 = 1.0 - SIG1  # sigmoid(-1)


# --------------------------------------------------------------------------------------- hand-computed units


def test_grpo_group_std_hand_computed():
    # mean 0.5, centred +-0.5, unbiased std sqrt(4 * 0.25 / 3) = 1/sqrt(3) -> +-sqrt(3)/2.
    adv = grpo_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), scale="group_std", eps=0.0)
    h = np.sqrt(3.0) / 2
    np.testing.assert_allclose(adv, [[h, -h, -h, h]], rtol=1e-6)


def test_grpo_eps_in_denominator():
    adv = grpo_advantages(jnp.array([[1.0, 0.0]]), eps=0.5)  # std(ddof=1) of [1,0] = sqrt(0.5)
    np.testing.assert_allclose(adv, [[0.5 / (np.sqrt(0.5) + 0.5), -0.5 / (np.sqrt(0.5) + 0.5)]], rtol=1e-6)


def test_grpo_batch_std_hand_computed():
    # group means 0.5 and 1 -> centred [[.5,-.5],[0,0]]; batch std(ddof=1) of [1,0,1,1] = sqrt(0.75/3) = 0.5.
    adv = grpo_advantages(jnp.array([[1.0, 0.0], [1.0, 1.0]]), scale="batch_std", eps=0.0)
    np.testing.assert_allclose(adv, [[1.0, -1.0], [0.0, 0.0]], rtol=1e-6)


def test_grpo_none_is_centring_only():
    adv = grpo_advantages(jnp.array([[2.0, 0.0, 1.0]]), scale="none")
    np.testing.assert_allclose(adv, [[1.0, -1.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("scale", ["group_std", "batch_std", "none"])
def test_grpo_group_of_one_gets_zero(scale):
    adv = grpo_advantages(jnp.array([[1.0], [0.0], [0.3]]), scale=scale)
    np.testing.assert_array_equal(adv, np.zeros((3, 1)))
    assert np.all(np.isfinite(adv))


def test_grpo_uniform_group_gets_zero():
    adv = grpo_advantages(jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(adv, np.zeros((2, 3)))


def test_grpo_rejects_bad_input():
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(jnp.ones((2, 3)), scale="std")
    with pytest.raises(ValueError, match=r"f32\[B,G\]"):
        grpo_advantages(jnp.ones((6,)))


def test_capo_two_samples_hand_computed():
    # Misranked pair: the wrong answer is more confident (lpm -0.1 > -0.2). tau = 0.1:
    # A_correct = (1/(G tau)) sigmoid((s_w - s_c)/tau) = 5 sigmoid(1); A_wrong = -5 sigmoid(1).
    adv = capo_advantages(jnp.array([[True, False]]), jnp.array([[-0.2, -0.1]]), tau=0.1)
    np.testing.assert_allclose(adv, [[5 * SIG1, -5 * SIG1]], rtol=1e-5)


def test_capo_three_samples_and_mask_hand_computed():
    correct = jnp.array([[True, True, False]])
    scores = jnp.array([[0.0, -0.1, -0.1]])
    # A0 = sigmoid(-1)/0.3, A1 = sigmoid(0)/0.3, A2 = -(sigmoid(-1) + sigmoid(0))/0.3
    expected = np.array([[SIGM1 / 0.3, 0.5 / 0.3, -(SIGM1 + 0.5) / 0.3]])
    np.testing.assert_allclose(capo_advantages(correct, scores, tau=0.1), expected, rtol=1e-5)
    # ref PPL 3.0 > 2.5 drops correct sample 0 (lucky guess); 1.0 < 1.05 drops wrong sample 2 (near-miss).
    # Sample 1 keeps its full advantage: the masked wrong sample 2 still counts as its counterpart.
    ref_ppl = jnp.array([[3.0, 2.0, 1.0]])
    masked = capo_advantages(correct, scores, tau=0.1, ref_ppl=ref_ppl)
    np.testing.assert_allclose(masked, [[0.0, 0.5 / 0.3, 0.0]], rtol=1e-5)


def test_capo_mask_thresholds_inclusive():
    correct = jnp.array([[True, True, False, False]])
    ref = jnp.array([[2.5, 2.5001, 1.05, 1.0499]])
    np.testing.assert_array_equal(capo_mask(correct, ref), [[True, False, True, False]])


def test_capo_uniform_groups_get_zero():
    correct = jnp.array([[True, True, True], [False, False, False]])
    adv = capo_advantages(correct, jnp.array([[-0.1, -5.0, 3.0], [0.2, -0.3, 9.0]]), tau=0.1)
    np.testing.assert_array_equal(adv, np.zeros((2, 3)))


def test_capo_rejects_bad_tau_and_shapes():
    with pytest.raises(ValueError, match="tau"):
        capo_advantages(jnp.array([[True, False]]), jnp.zeros((1, 2)), tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        capo_advantages(jnp.array([[True, False]]), jnp.zeros((1, 3)), tau=1.0)


def test_lpm_hand_computed_and_padding_ignored():
    logp = jnp.array([[-1.0, -2.0, jnp.nan], [jnp.inf, 0.0, 0.0]])
    mask = jnp.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(lpm(logp, mask), [-1.5, 0.0])


# --------------------------------------------------------------------------------------------- theorems


@jax.jit
def _autodiff_logistic_advantages(correct, scores, tau):
    """Reference for theorem 3: -(1/G) dL/ds by autodiff of the summed logistic pairwise loss."""

    def total_loss(s):
        return jnp.sum(pairwise_surrogate_loss(correct, s, Logistic(tau=tau)))

    return -jax.grad(total_loss)(scores) / scores.shape[-1]


class AdvantageTheorems(chex.TestCase):
    # 1. U-statistic identity: sum_i (R_i - mean R) x_i == (1/G) sum_{i<j} (R_i - R_j)(x_i - x_j).
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(g=st.sampled_from(G_VALUES), data=st.data())
    def test_u_statistic_identity(self, g, data):
        r = data.draw(hnp.arrays(np.float32, (1, g), elements=f32(-10, 10)))
        x = data.draw(hnp.arrays(np.float32, (g,), elements=f32(-10, 10)))
        adv = np.asarray(self.variant(grpo_advantages, static_argnames="scale")(r, scale="none"))[0]
        lhs = float(np.sum(adv.astype(np.float64) * x))
        rd, xd = r[0].astype(np.float64), x.astype(np.float64)
        terms = [(rd[i] - rd[j]) * (xd[i] - xd[j]) for i in range(g) for j in range(i + 1, g)]
        rhs = sum(terms) / g
        # exact identity in float64; left side from float32 advantages: bound by its rounding (eps * magnitude). The
        # centring R_i - mean R rounds relative to |R|, not to the (possibly ~0) advantage: equal rewards of 3.229 gave
        # advantages of +-2e-7 and a left side of 1.1e-5 against 0.
        magnitude = (1.0 + float(np.sum(np.abs(adv) * np.abs(x))) + sum(abs(t) for t in terms) / g
                     + float(np.sum(np.abs(rd))) * float(np.max(np.abs(xd))))
        assert abs(lhs - rhs) <= 1e-5 * magnitude, (lhs, rhs)
        # float64 check of the identity itself with the definition of the centred reward.
        lhs64 = float(np.sum((rd - rd.mean()) * xd))
        assert abs(lhs64 - rhs) <= 1e-12 * magnitude

    # 2. The linear surrogate gives Dr.GRPO exactly, whatever the scores.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(data=groups(score_range=100.0))
    def test_linear_pairwise_equals_drgrpo_exactly(self, data):
        correct, scores = data
        pairwise = self.variant(pairwise_advantages, static_argnums=2)(correct, scores, Linear())
        drgrpo = self.variant(grpo_advantages, static_argnames="scale")(correct.astype(np.float32), scale="none")
        chex.assert_trees_all_equal(pairwise, drgrpo)

    # 3. Closed form == -(1/G) autodiff gradient of the logistic pairwise loss (with and without the mask).
    @chex.variants(with_jit=True)
    @fast(12)
    @given(data=groups(), tau=f32(0.05, 3.0), ref=st.data())
    def test_capo_closed_form_equals_autodiff(self, data, tau, ref):
        self._test_capo_closed_form_equals_autodiff(data, tau, ref)

    @chex.variants(without_jit=True)  # eager is ~10x slower per example: fewer examples
    @fast(3)
    @given(data=groups(), tau=f32(0.05, 3.0), ref=st.data())
    def test_capo_closed_form_equals_autodiff_eager(self, data, tau, ref):
        self._test_capo_closed_form_equals_autodiff(data, tau, ref)

    def _test_capo_closed_form_equals_autodiff(self, data, tau, ref):
        correct, scores = data
        g = scores.shape[1]
        closed = self.variant(capo_advantages)(correct, scores, tau=tau)

        auto = _autodiff_logistic_advantages(correct, scores, tau)
        chex.assert_trees_all_close(closed, auto, rtol=1e-5, atol=1e-5 / tau)
        ref_ppl = ref.draw(hnp.arrays(np.float32, correct.shape, elements=f32(1.0, 4.0)))
        masked = self.variant(capo_advantages)(correct, scores, tau=tau, ref_ppl=ref_ppl)
        keep = np.where(correct, ref_ppl <= 2.5, ref_ppl >= 1.05)
        chex.assert_trees_all_close(masked, np.where(keep, auto, 0.0), rtol=1e-5, atol=1e-5 / tau)

    # 6a. Monotonicity in a sample's own lpm (strict whenever it has a counterpart).
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(data=groups(score_range=1.0), tau=f32(0.5, 2.0), delta=f32(0.1, 1.0), pick=st.data())
    def test_capo_monotone_in_own_lpm(self, data, tau, delta, pick):
        correct, scores = data
        b = pick.draw(st.integers(0, scores.shape[0] - 1))
        k = pick.draw(st.integers(0, scores.shape[1] - 1))
        capo = self.variant(capo_advantages)
        before = np.asarray(capo(correct, scores, tau=tau))
        bumped = scores.copy()
        bumped[b, k] += delta
        after = np.asarray(capo(correct, bumped, tau=tau))
        has_counterpart = (~correct[b]).any() if correct[b, k] else correct[b].any()
        if has_counterpart:
            # correct: weight on it falls as it becomes more confident; wrong: penalty grows.
            assert after[b, k] < before[b, k]
            assert (before[b, k] > 0) == bool(correct[b, k])
        else:
            assert after[b, k] == before[b, k] == 0.0

    # 6b. Misranked samples weigh most: among wrong samples the most confident gets the largest penalty,
    # among correct samples the least confident gets the largest reward.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(data=groups(mixed=True), tau=f32(0.05, 2.0))
    def test_capo_weights_follow_misranking(self, data, tau):
        correct, scores = data
        adv = np.asarray(self.variant(capo_advantages)(correct, scores, tau=tau))
        for b in range(scores.shape[0]):
            for i in range(scores.shape[1]):
                for j in range(scores.shape[1]):
                    if correct[b, i] == correct[b, j] and scores[b, i] > scores[b, j]:
                        if correct[b, i]:
                            assert adv[b, i] <= adv[b, j]
                        else:
                            assert adv[b, i] <= adv[b, j] <= 0
                            # strictly negative unless every logistic weight on j underflows float32: j ranked
                            # below every correct sample by over ~80 tau (hypothesis found 5 / 0.055 = 91 tau)
                            if (scores[b][correct[b]] - scores[b, j]).min() / tau < 80:
                                assert adv[b, j] < 0

    # 6c. Uniform groups give 0; shifting a group's lpm by a constant changes nothing.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(data=groups(), tau=f32(0.25, 2.0), shift=st.data(), uniform=st.booleans())
    def test_capo_shift_invariance_and_uniform_groups(self, data, tau, shift, uniform):
        correct, scores = data
        if uniform:
            correct = np.broadcast_to(correct[:, :1], correct.shape).copy()
        c = shift.draw(hnp.arrays(np.float32, (scores.shape[0], 1), elements=f32(-5, 5)))
        capo = self.variant(capo_advantages)
        base = np.asarray(capo(correct, scores, tau=tau))
        shifted = capo(correct, scores + c, tau=tau)
        chex.assert_trees_all_close(shifted, base, atol=1e-5, rtol=1e-5)
        uniform_rows = correct.all(-1) | (~correct).all(-1)
        np.testing.assert_array_equal(base[uniform_rows], 0.0)

    # 6d. Permuting samples within a group permutes the advantages; groups are independent.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(12)
    @given(data=groups(g_values=(2, 5, 8)), tau=f32(0.1, 2.0), perm_data=st.data())
    def test_capo_permutation_equivariance_and_group_independence(self, data, tau, perm_data):
        correct, scores = data
        g = scores.shape[1]
        perm = np.array(perm_data.draw(st.permutations(range(g))))
        capo = self.variant(capo_advantages)
        base = np.asarray(capo(correct, scores, tau=tau))
        permuted = capo(correct[:, perm], scores[:, perm], tau=tau)
        chex.assert_trees_all_close(permuted, base[:, perm], atol=1e-6, rtol=1e-6)
        # Replace group 0 entirely: every other group's advantages are bit-identical.
        other_c = perm_data.draw(hnp.arrays(np.bool_, (g,)))
        other_s = perm_data.draw(hnp.arrays(np.float32, (g,), elements=f32(-3, 3)))
        assume(not (np.array_equal(other_c, correct[0]) and np.array_equal(other_s, scores[0])))
        c2, s2 = correct.copy(), scores.copy()
        c2[0], s2[0] = other_c, other_s
        changed = np.asarray(capo(c2, s2, tau=tau))
        np.testing.assert_array_equal(changed[1:], base[1:])


def test_closed_form_for_every_surrogate_matches_autodiff():
    """The closed form is generic: hinge, exponential and a user callable agree with autodiff too."""
    from capojax.objectives import Exponential, Hinge

    rng = np.random.default_rng(0)
    correct = rng.random((4, 6)) < 0.5
    # keep hinge away from its kink (t == margin), where autodiff and the subgradient may legitimately differ
    scores = rng.uniform(-2, 2, (4, 6)).astype(np.float32)
    for phi in (Linear(), Logistic(tau=0.3), Hinge(margin=0.37), Exponential(tau=1.5), lambda t: (t - 1.0) ** 2):
        adv = jax.jit(pairwise_advantages, static_argnums=2)(correct, scores, phi)
        loss = jax.jit(lambda s, phi=phi: jnp.sum(pairwise_surrogate_loss(correct, s, phi)))
        auto = -jax.grad(loss)(jnp.asarray(scores)) / 6
        chex.assert_trees_all_close(adv, auto, rtol=1e-5, atol=1e-5)
