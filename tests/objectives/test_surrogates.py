"""Surrogates: numerics, and theorems 4 (scale / AUC inconsistency of the linear surrogate, properties of the
logistic one) and 5 (consistency of the pairwise logistic risk, unboundedness of the linear one)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from objectives_strategies import f32, fast, groups, pair_auc

from capojax.objectives import (
    Exponential,
    Hinge,
    Linear,
    Logistic,
    get_surrogate,
    pairwise_surrogate_loss,
)

ALL = (Linear(), Logistic(tau=0.7), Hinge(margin=0.5), Exponential(tau=2.0))


# -------------------------------------------------------------------------------------------- unit checks


def test_logistic_values_hand_computed():
    phi = Logistic(tau=0.5)
    t = jnp.array([0.0, 0.5, -0.5])
    np.testing.assert_allclose(phi(t), [np.log(2.0), np.log1p(np.exp(-1.0)), np.log1p(np.exp(1.0))], rtol=1e-6)
    # phi'(t) = -sigmoid(-t/tau)/tau: phi'(0) = -1/(2 tau) = -1
    np.testing.assert_allclose(phi.derivative(jnp.array(0.0)), -1.0, rtol=1e-6)


def test_logistic_is_stable_for_large_arguments():
    phi = Logistic(tau=0.01)
    t = jnp.array([-1e4, -100.0, 100.0, 1e4], jnp.float32)
    values, grads = phi(t), phi.derivative(t)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    # log(1 + e^x) -> x for large x, -> e^{-|x|} ~ 0 for very negative x (no log(1+0) = 0 cancellation blow-up)
    np.testing.assert_allclose(values[:2], [1e6, 1e4], rtol=1e-6)
    np.testing.assert_array_equal(values[2:], [0.0, 0.0])
    np.testing.assert_allclose(grads, [-100.0, -100.0, 0.0, 0.0], rtol=1e-6)
    # autodiff through the loss at these arguments is finite too
    g = jax.grad(lambda x: jnp.sum(phi(x)))(t)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("phi", ALL, ids=lambda p: p.name)
def test_closed_form_derivative_matches_autodiff(phi):
    t = jnp.linspace(-3.0, 3.0, 61) + 0.013  # off the hinge kink at t == margin
    auto = jax.vmap(jax.grad(lambda x: phi(x)))(t)
    np.testing.assert_allclose(phi.derivative(t), auto, rtol=1e-5, atol=1e-6)


def test_get_surrogate_by_name_instance_and_callable():
    assert get_surrogate("logistic", tau=0.2) == Logistic(tau=0.2)
    assert get_surrogate(Hinge()) == Hinge()
    custom = get_surrogate(lambda t: t**2)
    np.testing.assert_allclose(custom.derivative(jnp.array([1.5])), [3.0])
    with pytest.raises(ValueError, match="unknown surrogate"):
        get_surrogate("sigmoid")
    with pytest.raises(ValueError, match="tau"):
        Logistic(tau=-1.0)


def test_surrogates_are_hashable_static_args():
    f = jax.jit(lambda t, phi: phi(t), static_argnums=1)
    for phi in ALL:
        np.testing.assert_allclose(f(jnp.array([0.3]), phi), phi(jnp.array([0.3])))


# --------------------------------------------------------------------------------------- theorem 4


# Module-level so that jitted variants compile once, not once per hypothesis example.
def _logistic_value(t, tau):
    return Logistic(tau=tau)(t)


def _logistic_derivative(t, tau):
    return Logistic(tau=tau).derivative(t)


@jax.jit
def _logistic_second_derivative(t, tau):
    return jax.grad(jax.grad(_logistic_value), argnums=0)(t, tau)


class ScaleTheorems(chex.TestCase):
    # L_lin(alpha s) = alpha L_lin(s); AUC(alpha s) = AUC(s) for alpha > 0.
    @chex.variants(with_jit=True)
    @fast(12)
    @given(data=groups(), alpha=f32(0.01, 100.0))
    def test_linear_loss_is_homogeneous_auc_is_scale_free(self, data, alpha):
        self._test_linear_loss_is_homogeneous_auc_is_scale_free(data, alpha)

    @chex.variants(without_jit=True)  # eager is ~10x slower per example: fewer examples
    @fast(3)
    @given(data=groups(), alpha=f32(0.01, 100.0))
    def test_linear_loss_is_homogeneous_auc_is_scale_free_eager(self, data, alpha):
        self._test_linear_loss_is_homogeneous_auc_is_scale_free(data, alpha)

    def _test_linear_loss_is_homogeneous_auc_is_scale_free(self, data, alpha):
        correct, scores = data
        loss = self.variant(pairwise_surrogate_loss, static_argnums=2)
        base = np.asarray(loss(correct, scores, Linear()), np.float64)
        scaled = np.asarray(loss(correct, np.float32(alpha) * scores, Linear()), np.float64)
        magnitude = alpha * (1.0 + np.sum(np.abs(scores))) * scores.shape[1]
        assert np.all(np.abs(scaled - alpha * base) <= 1e-5 * magnitude)
        for b in range(scores.shape[0]):
            a0, a1 = pair_auc(correct[b], scores[b]), pair_auc(correct[b], np.float32(alpha) * scores[b])
            assert (np.isnan(a0) and np.isnan(a1)) or a0 == a1

    # Logistic: convex, non-increasing, phi'(0) < 0, bounded below by 0.
    @chex.variants(with_jit=True, without_jit=True)
    @fast(10)
    @given(a=f32(-50, 50), b=f32(-50, 50), lam=f32(0, 1), tau=f32(0.05, 5.0))
    def test_logistic_convex_nonincreasing_bounded(self, a, b, lam, tau):
        phi = Logistic(tau=tau)
        value = self.variant(_logistic_value)
        deriv = self.variant(_logistic_derivative)
        va, vb = float(value(a, tau)), float(value(b, tau))
        mid = float(value(lam * a + (1 - lam) * b, tau))
        # convexity up to float32 rounding of the three evaluations
        assert mid <= lam * va + (1 - lam) * vb + 1e-6 * (1 + abs(va) + abs(vb))
        assert va >= 0.0 and vb >= 0.0
        assert float(deriv(a, tau)) <= 0.0 and float(deriv(b, tau)) <= 0.0
        lo, hi = min(a, b), max(a, b)
        assert float(value(hi, tau)) <= float(value(lo, tau))
        np.testing.assert_allclose(float(deriv(0.0, tau)), -0.5 / tau, rtol=1e-6)
        assert float(phi.derivative(jnp.float32(0.0))) < 0
        # second derivative sigma(1-sigma)/tau^2 >= 0 (convexity, by autodiff)
        assert float(_logistic_second_derivative(a, tau)) >= 0.0


def test_linear_surrogate_inconsistency_counterexample():
    """A misranked group (wrong sample 0 beats correct sample -1) whose linear loss scaling drives to -inf
    while the AUC stays 1/2: minimising the linear surrogate does not fix the ranking."""
    correct = np.array([[True, True, False]])
    scores = np.array([[10.0, -1.0, 0.0]], np.float32)
    auc = pair_auc(correct[0], scores[0])
    assert auc == 0.5
    losses = []
    for alpha in (1.0, 10.0, 100.0, 1e4, 1e6):
        losses.append(float(pairwise_surrogate_loss(correct, alpha * scores, Linear())[0]))
        assert pair_auc(correct[0], alpha * scores[0]) == auc
    # L_lin(s) = -[(10 - 0) + (-1 - 0)] = -9, so L_lin(alpha s) = -9 alpha: unbounded below.
    np.testing.assert_allclose(losses, [-9.0, -90.0, -900.0, -9e4, -9e6], rtol=1e-6)
    # The logistic loss of the same group is bounded below by 0 and does not vanish under scaling:
    # the misranked pair contributes phi(-alpha) -> infinity.
    logistic = [float(pairwise_surrogate_loss(correct, a * scores, Logistic())[0]) for a in (1.0, 10.0, 100.0)]
    assert logistic[0] < logistic[1] < logistic[2]


@fast(12)
@given(data=groups(mixed=True), alpha=f32(2.0, 1e3))
def test_linear_loss_decreases_under_scaling_whenever_mean_margin_positive(data, alpha):
    """Property version of the counterexample: any group with positive total margin and a misranked pair."""
    correct, scores = data
    c, s = correct[0], scores[0].astype(np.float64)
    margin = sum(s[i] - s[j] for i in range(len(s)) for j in range(len(s)) if c[i] and not c[j])
    auc = pair_auc(c, scores[0])
    assume(margin > 1e-2 and auc < 1.0)
    l1 = float(pairwise_surrogate_loss(correct[:1], scores[:1], Linear())[0])
    la = float(pairwise_surrogate_loss(correct[:1], np.float32(alpha) * scores[:1], Linear())[0])
    assert la < l1 < 0
    assert pair_auc(c, np.float32(alpha) * scores[0]) == auc < 1.0


# --------------------------------------------------------------------------------------- theorem 5

N_ITEMS = 5


def _pairwise_risk(phi):
    def risk(s, eta):
        # sum_{a != b} eta_a (1 - eta_b) phi(s_a - s_b): the population pairwise risk over the item set.
        w = eta[:, None] * (1.0 - eta[None, :]) * (1.0 - jnp.eye(eta.shape[0]))
        return jnp.sum(w * phi(s[:, None] - s[None, :]))

    return risk


_logistic_risk = _pairwise_risk(Logistic(tau=1.0))
_linear_risk = _pairwise_risk(Linear())


@jax.jit
def _minimise_logistic_risk(eta):
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(lambda s: _logistic_risk(s, eta))

    def step(carry, _):
        s, state = carry
        value, grad = value_and_grad(s, state=state)
        updates, state = solver.update(grad, state, s, value=value, grad=grad, value_fn=lambda x: _logistic_risk(x, eta))
        return (optax.apply_updates(s, updates), state), None

    s0 = jnp.zeros_like(eta)
    (s, _), _ = jax.lax.scan(step, (s0, solver.init(s0)), None, length=100)
    return s, jnp.linalg.norm(jax.grad(_logistic_risk)(s, eta))


@fast(8)
@given(
    eta=hnp.arrays(np.float32, (N_ITEMS,), elements=f32(0.05, 0.95), unique=True).filter(
        lambda e: np.min(np.diff(np.sort(e))) > 0.02
    )
)
def test_logistic_pairwise_risk_minimiser_orders_like_eta(eta):
    """Consistency: the minimiser of the pairwise logistic risk ranks items exactly as eta (optimal AUC).

    The unique minimiser (up to a shift) is s = tau * logit(eta) since each pair's first-order condition is
    eta_a (1 - eta_b) sigmoid(-(s_a - s_b)) = eta_b (1 - eta_a) sigmoid(s_a - s_b)."""
    s, grad_norm = _minimise_logistic_risk(jnp.asarray(eta))
    s = np.asarray(s)
    assert float(grad_norm) < 1e-4  # converged to a stationary point of a convex risk
    np.testing.assert_array_equal(np.argsort(s), np.argsort(eta))
    logit = np.log(eta / (1 - eta))
    # optimiser tolerance (gradient norm < 1e-4 on a risk with curvature ~0.1) rather than arithmetic tolerance
    np.testing.assert_allclose(s - s.mean(), logit - logit.mean(), atol=2e-3)


@fast(8)
@given(
    eta=hnp.arrays(np.float32, (N_ITEMS,), elements=f32(0.05, 0.95)).filter(lambda e: np.ptp(e) > 0.05)
)
def test_linear_pairwise_risk_is_unbounded_below(eta):
    """The linear risk is linear in s with non-zero gradient -(n eta_a - sum eta): no minimiser exists, and
    gradient descent drives it down without bound."""
    opt = optax.sgd(0.1)
    s = jnp.zeros(N_ITEMS)
    state = opt.init(s)
    values = []
    grad_fn = jax.jit(jax.value_and_grad(_linear_risk))
    for _ in range(30):
        value, grad = grad_fn(s, jnp.asarray(eta))
        values.append(float(value))
        updates, state = opt.update(grad, state)
        s = optax.apply_updates(s, updates)
    diffs = np.diff(values)
    assert np.all(diffs < 0)
    # constant gradient -> constant decrease per step: the risk goes to -infinity linearly
    np.testing.assert_allclose(diffs, diffs[0], rtol=1e-3)
    expected_step = -0.1 * float(np.sum((N_ITEMS * eta - eta.sum()) ** 2))
    np.testing.assert_allclose(diffs[0], expected_step, rtol=1e-4)
