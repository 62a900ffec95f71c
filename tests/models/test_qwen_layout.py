"""How the forward is laid out for XLA (same numbers, faster programs): projections as single 2-D matmuls, shallow
layer stacks unrolled, deep ones scanned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax.models import PRESETS, Qwen
from capojax.models.qwen import UNROLL_LAYERS_UP_TO, dense


@pytest.mark.parametrize("x_shape, w_shape, contract, spec", [
    ((2, 3, 8), (8, 4, 5), 1, "bth,hnd->btnd"),
    ((2, 3, 4, 5), (4, 5, 8), 2, "btnd,ndh->bth"),
    ((7, 8), (8, 6), 1, "th,hi->ti"),
])
def test_dense_is_the_einsum(x_shape, w_shape, contract, spec):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    np.testing.assert_allclose(dense(x, w, contract), jnp.einsum(spec, x, w), atol=1e-5, rtol=1e-5)


def _forward_hlo(num_layers: int) -> str:
    config = PRESETS["tiny-bench"].replace(num_layers=num_layers, hidden_size=32, intermediate_size=64, num_heads=2,
                                           num_kv_heads=1, head_dim=16, vocab_size=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    return jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)).lower(state, tokens).as_text()


def test_shallow_stacks_are_unrolled_and_deep_ones_scanned():
    assert "stablehlo.while" not in _forward_hlo(UNROLL_LAYERS_UP_TO)
    assert "stablehlo.while" in _forward_hlo(UNROLL_LAYERS_UP_TO + 1)


def test_projections_are_two_dimensional_matmuls():
    import re

    dots = [line for line in _forward_hlo(2).splitlines() if "stablehlo.dot_general" in line]
    weight_dots = [d for d in dots if "batching_dims" not in d]  # attention's dots batch over rows and heads
    assert weight_dots
    for d in weight_dots:
        lhs, rhs = re.search(r": \(tensor<([^>]*)>, tensor<([^>]*)>\)", d).groups()
        assert lhs.count("x") == rhs.count("x") == 2, d  # "16x32xf32": rank 2
