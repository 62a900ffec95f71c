"""Activations split over the fsdp axis: the log-prob and update passes under a mesh give the single-device
numbers, and each device keeps only its rows of the logits (XLA's memory analysis of the compiled pass)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from capojax import memory_plan as mp
from capojax.models import PRESETS, init_model
from capojax.objectives import get_algorithm
from capojax.sharding import batch_sharding, make_mesh, shard_model
from capojax.trainer.logprobs import make_logprob_fn
from capojax.trainer.update import make_update_fn

CONFIG = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                       num_kv_heads=1, head_dim=32, vocab_size=128)
TOL = 1e-4  # a whole model in float32


def _batch(rows=8, P=4, T=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, rows)
    plens = rng.integers(1, P + 1, rows)
    attention = np.zeros((rows, P + T), bool)
    for r in range(rows):
        attention[r, P - plens[r] : P + lengths[r]] = True
    response = np.arange(T)[None] < lengths[:, None]
    return {
        "input_ids": rng.integers(1, CONFIG.vocab_size, (rows, P + T)).astype(np.int32),
        "attention_mask": attention,
        "positions": np.maximum(np.cumsum(attention, 1) - 1, 0).astype(np.int32),
        "response_mask": response,
        "old_logp": -rng.uniform(0.5, 3.0, (rows, T)).astype(np.float32) * response,
        "advantages": rng.normal(size=(rows, T)).astype(np.float32) * response,
    }


def _sharded(mesh, seed=3):
    model = shard_model(init_model(CONFIG, seed=seed), mesh)
    return nnx.split(model)


@pytest.mark.parametrize("fsdp, tp", [(8, 1), (4, 2)])
def test_sharded_logprob_pass_equals_single_device(fsdp, tp):
    batch = _batch()
    P = batch["input_ids"].shape[1] - batch["response_mask"].shape[1]
    graphdef, params = nnx.split(init_model(CONFIG, seed=3))
    single = make_logprob_fn(graphdef, temperature=0.8, rows_per_chunk=8)
    expected = single(params, batch["input_ids"], batch["attention_mask"], batch["positions"], prompt_len=P)

    mesh = make_mesh(fsdp, tp)
    graphdef, params = _sharded(mesh)
    sharded = make_logprob_fn(graphdef, temperature=0.8, rows_per_chunk=8, mesh=mesh)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    got = sharded(params, put(batch["input_ids"]), put(batch["attention_mask"]), put(batch["positions"]),
                  prompt_len=P)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=TOL, rtol=0)


def test_sharded_update_equals_single_device():
    batch = _batch()
    adam = optax.adam(1e-3)
    objective = get_algorithm("grpo").objective()

    graphdef, params = nnx.split(init_model(CONFIG, seed=3))
    single = make_update_fn(graphdef, adam, objective, temperature=1.0, micro_batches=1)
    exp_params, _, exp_metrics = single(params, adam.init(params), jax.tree.map(jnp.asarray, batch))

    mesh = make_mesh(4, 2)
    graphdef, params = _sharded(mesh)
    sharded = make_update_fn(graphdef, adam, objective, temperature=1.0, micro_batches=1, mesh=mesh)
    got_params, _, got_metrics = sharded(params, adam.init(params), jax.device_put(batch, batch_sharding(mesh)))
    chex.assert_trees_all_close(jax.tree.map(np.asarray, got_params), jax.tree.map(np.asarray, exp_params),
                                atol=TOL, rtol=0)
    np.testing.assert_allclose(float(got_metrics["loss"]), float(exp_metrics["loss"]), atol=TOL, rtol=0)


def _logprob_temp_bytes(mesh, *, constrain: bool, rows=16, length=64, vocab=8192) -> tuple[int, int]:
    """(XLA temp bytes per device of the compiled log-prob pass, one device's share of the whole chunk's f32
    logits when they are split over fsdp). The vocabulary is large so that the logits dominate."""
    qcfg = CONFIG.replace(vocab_size=vocab)
    graphdef, params = mp.abstract_model(qcfg, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=False,
                                         mesh=mesh)
    fn = make_logprob_fn(graphdef, temperature=1.0, rows_per_chunk=rows, mesh=mesh if constrain else None)
    arr = lambda dt: jax.ShapeDtypeStruct((rows, length), dt, sharding=batch_sharding(mesh))  # noqa: E731
    compiled = fn.lower(params, arr(jnp.int32), arr(jnp.bool_), arr(jnp.int32), prompt_len=8).compile()
    whole_logits = rows * (length - 8) * vocab * 4
    return int(compiled.memory_analysis().temp_size_in_bytes), whole_logits // mesh.shape["fsdp"]


def test_logprob_pass_keeps_only_its_rows_of_the_logits():
    mesh = make_mesh(8, 1)
    temp, share = _logprob_temp_bytes(mesh, constrain=True)
    unconstrained, _ = _logprob_temp_bytes(mesh, constrain=False)
    # Each device holds its 2 of the 16 rows (logits, softmax, a few f32 copies of them), not all 16.
    assert temp < 4 * share, (temp, share)
    assert temp < unconstrained / 2, (temp, unconstrained)
