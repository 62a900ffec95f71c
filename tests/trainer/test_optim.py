"""config.optim -> the optax optimizer: schedule values (warmup, constant, cosine, linear), global-norm clipping
before AdamW, decoupled weight decay, and the learning rate the trainer logs."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from capojax.errors import ConfigError
from capojax.trainer.optim import build_optimizer, build_schedule, current_learning_rate


def optim_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(lr=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                                       b1=0.9, b2=0.999, eps=1e-8))
    c.update(overrides)
    return c


def test_constant_schedule_with_linear_warmup():
    s = build_schedule(optim_config(warmup_steps=4), total_updates=100)
    np.testing.assert_allclose([s(k) for k in (0, 1, 2, 4, 50, 100)], [0, 2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    assert float(build_schedule(optim_config(), 10)(7)) == pytest.approx(1e-3)


def test_cosine_and_linear_decay_reach_zero_at_the_last_update():
    cosine = build_schedule(optim_config(schedule="cosine", warmup_steps=10), total_updates=110)
    assert float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(60)) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-5)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-12)
    linear = build_schedule(optim_config(schedule="linear"), total_updates=8)
    np.testing.assert_allclose([linear(k) for k in (0, 2, 4, 8)], [1e-3, 7.5e-4, 5e-4, 0.0], rtol=1e-6, atol=1e-12)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config.optim.schedule='step' is not one of \('constant', 'cosine', 'linear'\)"):
        build_schedule(optim_config(schedule="step"), 10)


def _two_steps(optimizer, grads):
    params = {"w": jnp.zeros(2)}
    state = optimizer.init(params)
    for g in grads:
        updates, state = optimizer.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
    return params["w"], state


def test_gradients_are_clipped_to_the_global_norm_before_adam():
    """Grads of norm 5 then 50, clipped to norm 1, are both [0.6, 0.8]: the same as plain Adam fed [0.6, 0.8]
    twice, and not the same as Adam fed the raw grads (Adam's second moment sees the scale change)."""
    clipped, _ = _two_steps(build_optimizer(optim_config(grad_clip=1.0), 10), [[3.0, 4.0], [30.0, 40.0]])
    unclipped, _ = _two_steps(build_optimizer(optim_config(grad_clip=0.0), 10), [[3.0, 4.0], [30.0, 40.0]])
    reference, _ = _two_steps(optax.adam(1e-3), [[0.6, 0.8], [0.6, 0.8]])
    np.testing.assert_allclose(clipped, reference, rtol=1e-6)
    assert not np.allclose(unclipped, reference, rtol=1e-3)


def test_weight_decay_is_decoupled_from_the_gradient():
    optimizer = build_optimizer(optim_config(weight_decay=0.1, lr=0.5), 10)
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = optimizer.update({"w": jnp.zeros(2)}, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * params["w"], rtol=1e-6)  # zero grad: decay only


def test_logged_learning_rate_is_the_schedule_at_the_optimizer_step():
    config = optim_config(schedule="cosine", warmup_steps=2)
    schedule = build_schedule(config, 10)
    _, state = _two_steps(build_optimizer(config, 10), [[1.0, 1.0]] * 5)
    assert current_learning_rate(state, schedule, default=-1.0) == pytest.approx(float(schedule(5)))
    assert 0 < current_learning_rate(state, schedule, default=-1.0) < config.lr  # mid-decay, not the end value
    assert current_learning_rate(optax.sgd(0.1).init({"w": jnp.zeros(1)}), schedule, default=0.25) == 0.25
