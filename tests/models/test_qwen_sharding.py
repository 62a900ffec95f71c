"""Sharded forward / decode on the 8 fake CPU devices equals the single-device result; logical-axis rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from capojax.models import init_model, load_pretrained
from capojax.sharding import (batch_sharding, cache_sharding, logical_to_spec, make_mesh, param_shardings,
                              shard_model)

TOL = 1e-4
VOCAB = 256  # vocab of the tiny checkpoints in conftest.py


@pytest.fixture(scope="module")
def qwen3_single(hf_checkpoints):
    model, config = load_pretrained(hf_checkpoints["qwen3"].path)
    tokens = np.random.RandomState(0).randint(0, VOCAB, (8, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[::2, :5] = False  # left padding in half the rows
    logits = np.asarray(nnx.jit(lambda m, t, k: m(t, attention_mask=k))(model, tokens, mask))
    return model, config, tokens, mask, logits


def test_eight_fake_devices():
    assert jax.device_count() == 8, "tests/conftest.py must set 8 fake CPU devices before jax is imported"


@pytest.mark.parametrize("fsdp, tp", [(8, 1), (4, 2), (2, 4)])
def test_sharded_forward_equals_single_device(hf_checkpoints, qwen3_single, fsdp, tp):
    _, _, tokens, mask, expected = qwen3_single
    mesh = make_mesh(fsdp, tp)
    model, _ = load_pretrained(hf_checkpoints["qwen3"].path, mesh=mesh)
    # parameters were created with their shardings (no single-device copy in between)
    q = model.layers.q_proj[...]
    assert q.sharding.spec == P(None, "fsdp", "tp" if tp > 1 else None, None)
    k = model.layers.k_proj[...]  # 2 kv heads: split on tp=2, replicated on tp=4 (not divisible)
    assert k.sharding.spec == P(None, "fsdp", "tp" if tp == 2 else None, None)
    batch = batch_sharding(mesh)
    tokens_s, mask_s = jax.device_put(tokens, batch), jax.device_put(mask, batch)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, attention_mask=mask)

    logits = forward(state, tokens_s, mask_s)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=TOL, rtol=0)


def test_sharded_decode_equals_single_device(qwen3_single):
    model, config, tokens, mask, expected = qwen3_single
    mesh = make_mesh(4, 2)
    sharded = shard_model(nnx.merge(*nnx.split(model)), mesh)  # a copy, moved onto the mesh
    assert sharded.embed[...].sharding.spec == P("tp", "fsdp")
    b, t = tokens.shape
    cache = sharded.init_cache(b, t)
    kv_sharding = cache_sharding(mesh, config.num_kv_heads, b)
    assert kv_sharding.spec == P(None, "fsdp", None, "tp", None)
    cache = jax.device_put(cache, kv_sharding)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, cache = nnx.jit(lambda m, c: m.decode(jnp.asarray(tokens), positions=positions, cache=c,
                                                  cache_mask=jnp.asarray(mask), index=0))(sharded, cache)
    assert cache.k.sharding.is_equivalent_to(kv_sharding, cache.k.ndim)  # the updated cache stays in place
    np.testing.assert_allclose(np.asarray(logits)[mask], expected[mask], atol=TOL, rtol=0)


def test_init_model_born_sharded(hf_checkpoints):
    _, config = load_pretrained(hf_checkpoints["qwen2-untied"].path)
    mesh = make_mesh(2, 4)
    sharded = init_model(config, seed=3, mesh=mesh)
    single = init_model(config, seed=3)

    def placed_as(x, *spec):
        return x.sharding.is_equivalent_to(NamedSharding(mesh, P(*spec)), x.ndim)

    assert placed_as(sharded.lm_head[...], "fsdp", "tp")
    assert placed_as(sharded.layers.down_proj[...], None, "tp", "fsdp")
    assert placed_as(sharded.layers.q_bias[...], None, "tp", None)
    assert placed_as(sharded.layers.k_bias[...])  # 2 kv heads on tp=4: replicated
    jax.tree.map(np.testing.assert_array_equal, nnx.state(sharded), nnx.state(single))


def test_param_shardings_match_state_tree(hf_checkpoints):
    model, _ = load_pretrained(hf_checkpoints["qwen2-tied"].path)
    shardings = param_shardings(model, make_mesh(8, 1))
    assert jax.tree.structure(shardings) == jax.tree.structure(nnx.state(model))


def test_logical_to_spec_rules_and_fallback():
    mesh = make_mesh(2, 4)
    assert logical_to_spec(("vocab", "embed"), (256, 64), mesh) == P("tp", "fsdp")
    assert logical_to_spec(("vocab", "embed"), (254, 63), mesh) == P(None, None)  # not divisible -> replicated
    assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh) == \
        P(None, "fsdp", None, None)
    assert logical_to_spec(("mlp", "mlp"), (8, 8), mesh) == P("tp", None)  # a mesh axis is used once
    assert logical_to_spec(None, (3,), mesh) == P()
    with pytest.raises(ValueError, match="no rule"):
        logical_to_spec(("embd",), (64,), mesh)
    with pytest.raises(ValueError, match="logical axes"):
        logical_to_spec(("embed",), (64, 2), mesh)


def test_make_mesh():
    mesh = make_mesh(-1, 2)
    assert dict(mesh.shape) == {"fsdp": 4, "tp": 2}
    assert dict(make_mesh(1, 1).shape) == {"fsdp": 1, "tp": 1}
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(4, 4)
    with pytest.raises(ValueError, match="divide"):
        make_mesh(-1, 3)


def test_save_from_sharded_model(hf_checkpoints, tmp_path):
    from capojax.models import save_pretrained

    path = hf_checkpoints["qwen2-untied"].path
    sharded, config = load_pretrained(path, mesh=make_mesh(2, 4))
    save_pretrained(sharded, config, tmp_path)
    again, _ = load_pretrained(tmp_path)
    single, _ = load_pretrained(path)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(again), nnx.state(single))


@pytest.mark.parametrize("fsdp, tp", [(8, 1), (4, 2)])
def test_forward_under_activation_mesh_equals_single_device(hf_checkpoints, qwen3_single, fsdp, tp):
    """The activation constraint (rows over fsdp, vocabulary over tp) changes where rows live, not the numbers."""
    from capojax.sharding import activation_mesh

    _, _, tokens, mask, expected = qwen3_single
    mesh = make_mesh(fsdp, tp)
    model, _ = load_pretrained(hf_checkpoints["qwen3"].path, mesh=mesh)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, mask):
        with activation_mesh(mesh):
            return nnx.merge(graphdef, state)(tokens, attention_mask=mask)

    batch = batch_sharding(mesh)
    logits = forward(state, jax.device_put(tokens, batch), jax.device_put(mask, batch))
    assert logits.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp", None, "tp" if tp > 1 else None)), 3)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=TOL, rtol=0)


def test_constrain_activations_is_a_no_op_without_a_mesh():
    from capojax.sharding import constrain_activations

    x = jnp.ones((3, 5, 7))  # 3 rows do not divide any mesh either
    assert constrain_activations(x, ("batch", None, None)) is x
