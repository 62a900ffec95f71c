"""The policy loss is composed of registered pieces: ratio levels, aggregations, KL estimators. Unknown names are a
clear error; a newly registered piece is picked up by name; `policy_loss` equals its pieces put together."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from objectives_strategies import f32, fast

from capojax.objectives import (AGGREGATIONS, ALGORITHMS, KL_ESTIMATORS, RATIO_LEVELS, aggregate, kl_per_token,
                                policy_loss, ppo_clip)
from capojax.objectives import losses
from capojax.objectives.registry import Registry


def test_the_registries_hold_the_documented_names():
    assert list(RATIO_LEVELS) == ["token", "sequence"]
    assert list(AGGREGATIONS) == ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
    assert list(KL_ESTIMATORS) == ["k1", "k2", "k3"]
    # every algorithm's defaults name registered pieces
    for spec in ALGORITHMS.values():
        assert spec.ratio_level in RATIO_LEVELS and spec.loss_hparams["agg"] in AGGREGATIONS
        assert spec.loss_hparams["kl_kind"] in KL_ESTIMATORS


@pytest.mark.parametrize("call, names", [
    (lambda x: aggregate(x, x > 0, "mean"), "agg='mean' is not one of ['token-mean', 'seq-mean-token-mean'"),
    (lambda x: policy_loss(x, x, x, x > 0, ratio_level="seq"), "ratio_level='seq' is not one of ['token', 'sequence']"),
    (lambda x: kl_per_token(x, x, "k4"), "kl_kind='k4' is not one of ['k1', 'k2', 'k3']"),
])
def test_an_unknown_name_lists_the_registered_ones_and_says_how_to_add_one(call, names):
    with pytest.raises(ValueError) as e:
        call(jnp.zeros((2, 3)))
    assert names in str(e.value)
    assert ".register(" in str(e.value)


def test_register_get_and_duplicates():
    reg = Registry("agg", "somewhere.REG")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.get("double") is double and reg["double"] is double and "double" in reg and len(reg) == 1
    assert "triple" not in reg and reg.get("triple", None) is None  # the Mapping protocol for membership tests
    with pytest.raises(ValueError, match="'double' is already registered"):
        reg.register("double")(lambda x: x)
    with pytest.raises(ValueError, match=r"agg='triple' is not one of \['double'\].*@somewhere.REG.register\('triple'\)"):
        reg.get("triple")


def test_a_newly_registered_aggregation_is_used_by_the_policy_loss(monkeypatch):
    extended = Registry("agg", "capojax.objectives.AGGREGATIONS")
    for name, fn in AGGREGATIONS.items():
        extended.register(name)(fn)

    @extended.register("token-sum")
    def token_sum(values, mask, *, norm_len=None):
        return jnp.sum(values)

    monkeypatch.setattr(losses, "AGGREGATIONS", extended)
    logp = jnp.log(jnp.array([[1.1, 0.9, 5.0]]))
    mask = jnp.array([[True, True, False]])
    loss, _ = policy_loss(logp, jnp.zeros_like(logp), jnp.ones_like(logp), mask, agg="token-sum")
    np.testing.assert_allclose(loss, -(1.1 + 0.9), rtol=1e-6)  # padding (ratio 5) is not summed


@st.composite
def _batch(draw):
    n, t = 3, 4
    lengths = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, t)))
    mask = np.arange(t)[None, :] < lengths[:, None]
    logp = draw(hnp.arrays(np.float32, (n, t), elements=f32(-3, 0)))
    old = draw(hnp.arrays(np.float32, (n, t), elements=f32(-3, 0)))
    adv = draw(hnp.arrays(np.float32, (n, t), elements=f32(-2, 2)))
    return logp, old, adv, mask


@fast(10)
@given(batch=_batch(), level=st.sampled_from(list(RATIO_LEVELS)), agg=st.sampled_from(list(AGGREGATIONS)),
       dual_clip=st.sampled_from([None, 3.0]))
def test_policy_loss_is_its_registered_pieces_composed(batch, level, agg, dual_clip):
    logp, old, adv, mask = batch
    loss, metrics = policy_loss(logp, old, adv, mask, ratio_level=level, agg=agg, norm_len=8, clip_low=0.2,
                                clip_high=0.28, dual_clip=dual_clip)
    ratio = np.where(mask, np.exp(RATIO_LEVELS[level](jnp.where(mask, logp, 0), jnp.where(mask, old, 0), mask)), 1.0)
    per_token, _ = ppo_clip(jnp.asarray(ratio), jnp.where(mask, adv, 0.0), clip_low=0.2, clip_high=0.28,
                            dual_clip=dual_clip)
    expected = AGGREGATIONS[agg](jnp.where(mask, per_token, 0.0), mask, norm_len=8)
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics["pg_loss"], expected, rtol=1e-6, atol=1e-7)


def test_ppo_clip_per_token_hand_computed():
    ratio = jnp.array([1.5, 0.5, 0.5, 4.0])
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    loss, dual = ppo_clip(ratio, adv, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    # clipped at 1.2 / unclipped (pessimistic) / clipped at 0.8 / dual cap at 3 instead of 4
    np.testing.assert_allclose(loss, [-1.2, -0.5, 0.8, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(dual, [False, False, False, True])
    loss, dual = ppo_clip(ratio, adv, clip_low=0.2, clip_high=0.2, dual_clip=None)
    np.testing.assert_allclose(loss[3], 4.0, rtol=1e-6)
    assert not np.asarray(dual).any()
