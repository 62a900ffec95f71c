"""Policy loss, aggregations, KL and entropy: hand-computed cases and theorems 7 and 9 of issue 3."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from objectives_strategies import f32, fast

from capojax.objectives import (
    AGGREGATIONS,
    Logistic,
    aggregate,
    capo_advantages,
    entropy_from_logits,
    kl_penalty,
    kl_per_token,
    lpm,
    pairwise_surrogate_loss,
    policy_loss,
    sequence_ratio,
)

# ------------------------------------------------------------------------------------------- PPO clip


_jit_policy_loss = jax.jit(policy_loss, static_argnames=("ratio_level", "agg", "clip_low", "clip_high", "dual_clip"))


def _one_token_loss(ratio, adv, **kw):
    logp = jnp.log(jnp.array([[ratio]], jnp.float32))
    return _jit_policy_loss(logp, jnp.zeros((1, 1)), jnp.array([[adv]], jnp.float32), jnp.ones((1, 1), bool), **kw)


@pytest.mark.parametrize(
    "ratio, adv, expected, low, high",
    [
        (1.5, 1.0, -1.2, 0, 1),  # A > 0, ratio above 1 + clip_high: clipped at 1.2
        (0.5, 1.0, -0.5, 0, 0),  # A > 0, ratio below 1 - clip_low: unclipped (pessimistic min)
        (0.5, -1.0, 0.8, 1, 0),  # A < 0, ratio below 1 - clip_low: clipped at 0.8
        (1.5, -1.0, 1.5, 0, 0),  # A < 0, ratio above 1 + clip_high: unclipped
        (1.1, 2.0, -2.2, 0, 0),  # inside the trust region
    ],
)
def test_ppo_clip_hand_computed(ratio, adv, expected, low, high):
    loss, m = _one_token_loss(ratio, adv, clip_low=0.2, clip_high=0.2)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(m["clip_frac/low"]) == low and float(m["clip_frac/high"]) == high
    assert float(m["clip_frac"]) == low + high
    np.testing.assert_allclose(m["ratio/mean"], ratio, rtol=1e-6)


def test_asymmetric_clip_high():
    loss, m = _one_token_loss(1.25, 1.0, clip_low=0.2, clip_high=0.28)  # DAPO clip-higher: 1.25 < 1.28
    np.testing.assert_allclose(loss, -1.25, rtol=1e-6)
    assert float(m["clip_frac/high"]) == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    # A = -1, ratio 4: PPO loss max(4, 1.2) = 4; dual clip c = 3 caps it at 3 (gradient cut).
    loss, m = _one_token_loss(4.0, -1.0, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
    assert float(m["clip_frac/dual"]) == 1.0
    grad = jax.grad(lambda lp: _loss_at(lp, -1.0, dual_clip=3.0))(jnp.log(jnp.array([[4.0]])))
    np.testing.assert_array_equal(grad, [[0.0]])
    # below the cap nothing changes, and positive advantages are never dual-clipped
    np.testing.assert_allclose(_one_token_loss(2.0, -1.0, dual_clip=3.0)[0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(_one_token_loss(4.0, 1.0, dual_clip=3.0)[0], -1.2, rtol=1e-6)
    with pytest.raises(ValueError, match="dual_clip"):
        _one_token_loss(1.0, 1.0, dual_clip=0.5)


def _loss_at(logp, adv, **kw):
    return policy_loss(logp, jnp.zeros_like(logp), jnp.full_like(logp, adv), jnp.ones(logp.shape, bool), **kw)[0]


def test_ratio_metrics_and_ppo_kl():
    logp = jnp.log(jnp.array([[0.5, 1.0, 2.0, 7.0]]))
    mask = jnp.array([[True, True, True, False]])
    _, m = policy_loss(logp, jnp.zeros_like(logp), jnp.ones_like(logp), mask)
    np.testing.assert_allclose(m["ratio/mean"], 3.5 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["ratio/max"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(m["ratio/min"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(m["ppo_kl"], -(np.log(0.5) + np.log(2.0)) / 3, atol=1e-7)


def test_gspo_sequence_ratio_hand_computed():
    logp = jnp.array([[0.1, 0.3, 5.0]])
    mask = jnp.array([[True, True, False]])
    np.testing.assert_allclose(sequence_ratio(logp, jnp.zeros_like(logp), mask), [np.exp(0.2)], rtol=1e-6)
    # per-token loss uses s_i on every token: exp(0.2) = 1.2214 > 1 + 0.2 -> clipped at 1.2 for A > 0
    loss, m = policy_loss(logp, jnp.zeros_like(logp), jnp.ones((1,)), mask, ratio_level="sequence")
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    assert float(m["clip_frac/high"]) == 1.0
    # sequence-level gradient: d(-A s_i)/d logp_t = -A s_i / |o_i| on each valid token (inside the clip range)
    grad = jax.grad(
        lambda lp: policy_loss(lp, jnp.zeros_like(lp), jnp.ones((1,)), mask, ratio_level="sequence",
                               clip_high=1.0, agg="seq-mean-token-mean")[0]
    )(logp)
    np.testing.assert_allclose(grad, [[-np.exp(0.2) / 2, -np.exp(0.2) / 2, 0.0]], rtol=1e-6)


def test_sequence_advantages_broadcast_over_tokens():
    logp = jnp.zeros((2, 3))
    mask = jnp.ones((2, 3), bool)
    a, _ = policy_loss(logp, logp, jnp.array([1.0, -3.0]), mask)
    b, _ = policy_loss(logp, logp, jnp.array([[1.0] * 3, [-3.0] * 3]), mask)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, 1.0)  # token-mean of -A * 1 = -(3 - 9)/6


def test_policy_loss_rejects_bad_input():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="ratio_level"):
        policy_loss(x, x, x, x > 0, ratio_level="seq")
    with pytest.raises(ValueError, match="share one shape"):
        policy_loss(x, jnp.zeros((2, 4)), x, x > 0)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(x, x, x, x > 0, agg="mean")
    with pytest.raises(ValueError, match="norm_len"):
        policy_loss(x, x, x, x > 0, agg="seq-mean-token-sum-norm")


# ----------------------------------------------------------------------------------------- aggregation


def test_aggregations_hand_computed():
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, jnp.nan, jnp.inf]])
    mask = jnp.array([[True, True, True], [True, False, False]])
    np.testing.assert_allclose(aggregate(values, mask, "token-mean"), 10 / 4)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-mean"), (2 + 4) / 2)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-sum"), (6 + 4) / 2)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-sum-norm", norm_len=4), 5 / 4)
    for agg in AGGREGATIONS:
        assert float(aggregate(values, jnp.zeros_like(mask), agg, norm_len=4)) == 0.0


N_ROWS, T_LEN = 4, 6  # one shape (plus its padded version) so jitted variants compile once
CONFIGS = [(agg, level) for agg in AGGREGATIONS for level in ("token", "sequence")]


@st.composite
def _token_batch(draw, equal_lengths=False):
    if equal_lengths:
        lengths = np.full((N_ROWS,), draw(st.integers(1, T_LEN)))
    else:
        lengths = draw(hnp.arrays(np.int32, (N_ROWS,), elements=st.integers(1, T_LEN)))
    mask = np.arange(T_LEN)[None, :] < lengths[:, None]
    shape = (N_ROWS, T_LEN)
    logp = draw(hnp.arrays(np.float32, shape, elements=f32(-3, 0)))
    old = np.clip(logp + draw(hnp.arrays(np.float32, shape, elements=f32(-0.5, 0.5))), -10, 0).astype(np.float32)
    adv = draw(hnp.arrays(np.float32, shape, elements=f32(-2, 2)))
    return logp, old, adv, mask


def _pad(x, extra_t, extra_rows, fill):
    x = np.concatenate([x, np.full((x.shape[0], extra_t), fill, x.dtype)], axis=1)
    return np.concatenate([x, np.full((extra_rows, x.shape[1]), fill, x.dtype)], axis=0)


def _all_losses_and_grads(logp, old, adv, mask):
    """Loss, metrics and d loss / d logp for every (aggregation, ratio level), in one traceable function."""
    out = {}
    for agg, level in CONFIGS:
        def loss(lp, agg=agg, level=level):
            return policy_loss(lp, old, adv, mask, agg=agg, ratio_level=level, norm_len=16,
                               clip_low=0.2, clip_high=0.28, dual_clip=3.0)

        (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(logp)
        out[f"{agg}/{level}"] = (value, metrics, grad)
    return out


def _first_step_gradients(old, mask, correct, tau):
    """Theorem 7: gradient of the policy loss at ratio 1, the CAPO advantages, and the gradient of the
    pairwise logistic loss through lpm (scaled by 1/(B G^2))."""
    b, g = correct.shape
    adv = capo_advantages(correct, lpm(old, mask), tau=tau)
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv[..., None], mask, agg="seq-mean-token-mean")[0])(old)

    def surrogate(lp):
        return jnp.sum(pairwise_surrogate_loss(correct, lpm(lp, mask), Logistic(tau=tau))) / (b * g * g)

    return grad, adv, jax.grad(surrogate)(old)


class AggregationTheorems(chex.TestCase):
    # 9a. token-mean == seq-mean-token-mean when every sequence has the same length.
    @chex.variants(with_jit=True)
    @fast(12)
    @given(batch=_token_batch(equal_lengths=True))
    def test_token_mean_equals_seq_mean_token_mean_for_equal_lengths(self, batch):
        self._test_token_mean_equals_seq_mean_token_mean_for_equal_lengths(batch)

    @chex.variants(without_jit=True)  # eager is ~10x slower per example: fewer examples
    @fast(2)
    @given(batch=_token_batch(equal_lengths=True))
    def test_token_mean_equals_seq_mean_token_mean_for_equal_lengths_eager(self, batch):
        self._test_token_mean_equals_seq_mean_token_mean_for_equal_lengths(batch)

    def _test_token_mean_equals_seq_mean_token_mean_for_equal_lengths(self, batch):
        out = self.variant(_all_losses_and_grads)(*batch)
        for level in ("token", "sequence"):
            a, b = out[f"token-mean/{level}"], out[f"seq-mean-token-mean/{level}"]
            chex.assert_trees_all_close(a[0], b[0], rtol=1e-5, atol=1e-6)
            chex.assert_trees_all_close(a[2], b[2], rtol=1e-5, atol=1e-7)  # and so are the gradients

    # 9b. Padding (extra columns and extra all-padding rows, filled with garbage) never changes the loss,
    # its metrics, or the gradient on real tokens; the gradient on padding is exactly 0.
    @chex.variants(with_jit=True)
    @fast(10)
    @given(batch=_token_batch(), fill=st.sampled_from([0.0, -1e9, np.nan, np.inf]))
    def test_padding_never_changes_the_loss(self, batch, fill):
        self._test_padding_never_changes_the_loss(batch, fill)

    @chex.variants(without_jit=True)  # eager is ~10x slower per example: fewer examples
    @fast(2)
    @given(batch=_token_batch(), fill=st.sampled_from([0.0, -1e9, np.nan, np.inf]))
    def test_padding_never_changes_the_loss_eager(self, batch, fill):
        self._test_padding_never_changes_the_loss(batch, fill)

    def _test_padding_never_changes_the_loss(self, batch, fill):
        logp, old, adv, mask = batch
        fn = self.variant(_all_losses_and_grads)
        out = fn(logp, old, adv, mask)
        padded = fn(*(_pad(x, 3, 2, np.float32(fill)) for x in (logp, old, adv)), _pad(mask, 3, 2, False))
        for key, (loss, metrics, grad) in out.items():
            p_loss, p_metrics, p_grad = padded[key]
            chex.assert_trees_all_close(p_loss, loss, rtol=1e-6, atol=1e-7)
            chex.assert_trees_all_close(p_metrics, metrics, rtol=1e-6, atol=1e-7)
            chex.assert_trees_all_close(p_grad[:N_ROWS, :T_LEN], grad, rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(p_grad[N_ROWS:], 0.0)
            np.testing.assert_array_equal(p_grad[:, T_LEN:], 0.0)

    # 7. End to end: at ratio 1 with seq-mean-token-mean, d loss / d logp_{i,t} = -(1/G) A_i / |o_i| for one
    # prompt (-(1/(B G)) for B prompts), i.e. the first PPO step is the surrogate's gradient through lpm.
    @chex.variants(with_jit=True)
    @fast(10)
    @given(data=st.data(), b=st.sampled_from([1, 2]), tau=f32(0.1, 2.0))
    def test_first_step_follows_surrogate_gradient_through_lpm(self, data, b, tau):
        self._test_first_step_follows_surrogate_gradient_through_lpm(data, b, tau)

    @chex.variants(without_jit=True)  # eager is ~10x slower per example: fewer examples
    @fast(2)
    @given(data=st.data(), b=st.sampled_from([1, 2]), tau=f32(0.1, 2.0))
    def test_first_step_follows_surrogate_gradient_through_lpm_eager(self, data, b, tau):
        self._test_first_step_follows_surrogate_gradient_through_lpm(data, b, tau)

    def _test_first_step_follows_surrogate_gradient_through_lpm(self, data, b, tau):
        g, t = 4, 5
        correct = data.draw(hnp.arrays(np.bool_, (b, g)))
        lengths = data.draw(hnp.arrays(np.int32, (b, g), elements=st.integers(1, t)))
        mask = np.arange(t)[None, None, :] < lengths[..., None]
        old = data.draw(hnp.arrays(np.float32, (b, g, t), elements=f32(-2, 0)))
        grad, adv, surrogate_grad = self.variant(_first_step_gradients)(old, mask, correct, tau)
        grad, adv = np.asarray(grad), np.asarray(adv)[..., None]
        chex.assert_trees_all_close(grad, np.where(mask, -adv / (b * g) / lengths[..., None], 0.0), rtol=1e-5, atol=1e-7)
        if b == 1:  # the statement for one prompt: -(1/G) A_i / |o_i|
            chex.assert_trees_all_close(grad, np.where(mask, -adv / g / lengths[..., None], 0.0), rtol=1e-5, atol=1e-7)
        # ... which is (1/(B G^2)) times the gradient of the pairwise logistic loss L(lpm(logp)) itself.
        chex.assert_trees_all_close(grad, surrogate_grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- KL, entropy


def test_kl_estimators_hand_computed():
    x = 0.5  # log(pi / pi_ref)
    logp, ref = jnp.array([[x]]), jnp.array([[0.0]])
    np.testing.assert_allclose(kl_per_token(logp, ref, "k1"), [[0.5]])
    np.testing.assert_allclose(kl_per_token(logp, ref, "k2"), [[0.125]])
    np.testing.assert_allclose(kl_per_token(logp, ref, "k3"), [[np.exp(-0.5) - 1 + 0.5]], rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        kl_per_token(logp, ref, "k4")


def test_kl_estimators_are_unbiased_or_biased_as_documented():
    """Sample x ~ pi for two categorical distributions: E[k1] = E[k3] = KL(pi||ref) exactly (we take the
    expectation over the finite support), k3 >= 0 everywhere, k2 >= 0 and equals KL to second order."""
    pi = jnp.array([0.5, 0.3, 0.2])
    ref = jnp.array([0.4, 0.4, 0.2])
    kl = float(jnp.sum(pi * jnp.log(pi / ref)))
    lp, lr = jnp.log(pi), jnp.log(ref)
    for kind in ("k1", "k3"):
        np.testing.assert_allclose(float(jnp.sum(pi * kl_per_token(lp, lr, kind))), kl, rtol=1e-5)
    assert np.all(np.asarray(kl_per_token(lp, lr, "k3")) >= 0)
    np.testing.assert_allclose(float(jnp.sum(pi * kl_per_token(lp, lr, "k2"))), kl, rtol=0.1)


def test_k3_is_clamped_like_verls_low_var_kl():
    """verl's low_var_kl: kl = ref - logp clamped to [-20, 20], then exp(kl) - kl - 1 clamped to [-10, 10]. A token
    the policy finds far less likely than the reference (x = logp - ref = -5: exp(5) - 6 = 142) counts 10, not 142,
    and one at x = -100 (exp would overflow float32) gives 10 with a finite (zero) gradient."""
    x = jnp.array([[-100.0, -5.0, -2.0, 0.0, 3.0, 100.0]])
    got = np.asarray(kl_per_token(x, jnp.zeros_like(x), "k3"))[0]
    kl = np.clip(-np.asarray(x, np.float64)[0], -20, 20)
    want = np.clip(np.exp(kl) - kl - 1, -10, 10)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == got[1] == 10.0 and got[2] < 10.0
    grad = jax.grad(lambda lp: jnp.sum(kl_per_token(lp, jnp.zeros_like(lp), "k3")))(x)
    assert np.all(np.isfinite(grad)) and float(grad[0, 0]) == float(grad[0, 1]) == 0.0 and float(grad[0, 2]) != 0.0


def test_kl_penalty_masks_padding_and_reports_metric():
    logp = jnp.array([[0.5, jnp.nan], [0.0, 0.0]])
    ref = jnp.zeros((2, 2))
    mask = jnp.array([[True, False], [True, False]])
    loss, m = kl_penalty(logp, ref, mask, "k1", agg="seq-mean-token-mean")
    np.testing.assert_allclose(loss, 0.25)
    np.testing.assert_allclose(m["kl"], 0.25)
    grad = jax.grad(lambda lp: kl_penalty(lp, ref, mask, "k3")[0])(logp)
    assert np.all(np.isfinite(grad)) and float(grad[0, 1]) == 0.0


def test_entropy_from_logits_hand_computed_and_stable():
    np.testing.assert_allclose(entropy_from_logits(jnp.zeros((2, 4))), [np.log(4.0)] * 2, rtol=1e-6)
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(entropy_from_logits(jnp.log(p) + 123.0), -np.sum(p * np.log(p)), rtol=1e-5)
    banned = jnp.array([0.0, -jnp.inf, -jnp.inf])  # one allowed token: entropy 0, finite gradient
    assert float(entropy_from_logits(banned)) == 0.0
    grad = jax.grad(lambda z: entropy_from_logits(z))(jnp.array([1.0, 2.0, -jnp.inf]))
    assert np.all(np.isfinite(grad))
    big = jnp.array([1e4, -1e4, 0.0])
    assert np.isfinite(float(entropy_from_logits(big)))
