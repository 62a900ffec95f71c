"""Orbax checkpoints: sharded round trip, keep-k, unfinalized saves ignored, foreign workdirs refused."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from capojax.checkpoint import Checkpointer, ConfigMismatchError, config_fingerprint


def make_config(**optim):
    c = ml_collections.ConfigDict()
    c.optim = dict(lr=1e-3, **optim)
    c.train = dict(steps=10, seed=0)
    c.checkpoint = dict(every=2, keep=2, force_resume=False)
    c.log = dict(every=1)
    return c


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (16, 8)))
        self.b = nnx.Param(jnp.zeros((8,)))


def sharded_state(mesh, seed=0):
    model = Tiny(nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    shardings = {"w": NamedSharding(mesh, P("fsdp", "tp")), "b": NamedSharding(mesh, P("tp"))}
    params = jax.tree.map_with_path(lambda path, x: jax.device_put(x, shardings[path[0].key]), params)
    opt_state = optax.adamw(1e-3).init(params)
    return params, opt_state


@pytest.fixture
def mesh():
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    return Mesh(np.array(jax.devices()).reshape(4, 2), ("fsdp", "tp"))


def bump(tree, by):
    return jax.tree.map(lambda x: x + by if jnp.issubdtype(x.dtype, jnp.floating) else x + 1, tree)


def test_sharded_round_trip(tmp_path, mesh):
    params, opt_state = sharded_state(mesh)
    params = bump(params, 0.5)
    opt_state = bump(opt_state, 0.25)
    ck = Checkpointer(tmp_path, config=make_config())
    key = jax.random.key(7)
    data_state = {"grain": {"next_index": 13}, "identity": {"seed": 5}}
    assert ck.save(4, params=params, opt_state=opt_state, rng=key, data_state=data_state, extra={"reward": 0.5})
    ck.close()

    # restore in a fresh manager, into abstract targets that carry other shardings than the saved ones
    params0, opt0 = sharded_state(mesh, seed=1)
    target_sharding = NamedSharding(mesh, P(None, "fsdp"))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params0)
    abstract["w"] = abstract["w"].replace(jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=target_sharding))
    ck = Checkpointer(tmp_path, config=make_config())
    assert ck.latest_step() == 4
    r = ck.restore(params=abstract, opt_state=opt0)
    assert r.step == 4 and r.data_state == data_state and r.meta["reward"] == 0.5
    assert r.meta["fingerprint"] == config_fingerprint(make_config())
    assert type(r.params) is type(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), r.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), r.opt_state, opt_state)
    assert r.params["w"].value.sharding == target_sharding
    assert r.params["b"].value.sharding == params0["b"].value.sharding
    assert jax.tree.structure(r.opt_state) == jax.tree.structure(opt_state)
    np.testing.assert_array_equal(r.rng, jax.random.key_data(key))
    assert jax.random.wrap_key_data(r.rng) == key
    ck.close()


def test_cadence_and_keep_last_k(tmp_path, mesh):
    params, opt = sharded_state(mesh)
    ck = Checkpointer(tmp_path, config=make_config())  # every=2, keep=2
    saved = [s for s in range(1, 10) if ck.save(s, params=bump(params, s), opt_state=opt, rng=jax.random.key(s),
                                                  data_state={"i": s})]
    assert saved == [2, 4, 6, 8]
    assert ck.save(9, params=params, opt_state=opt, rng=jax.random.key(0), data_state={}, force=True)
    ck.wait()
    assert ck.all_steps() == [8, 9]
    r = ck.restore(8, params=params, opt_state=opt)
    np.testing.assert_array_equal(np.asarray(r.params["w"].value), np.asarray(params["w"].value) + 8)
    ck.close()


def test_unfinalized_checkpoint_is_never_picked_up(tmp_path, mesh):
    params, opt = sharded_state(mesh)
    ck = Checkpointer(tmp_path, config=make_config())
    ck.save(2, params=params, opt_state=opt, rng=jax.random.key(0), data_state={"i": 2})
    ck.close()
    ckdir = tmp_path / "checkpoints"
    # A save killed before orbax's finalize leaves "<step>.orbax-checkpoint-tmp-<ts>"; make one that even holds a
    # complete copy of a checkpoint's files (the worst case: everything written, only the rename missing).
    tmp = ckdir / "4.orbax-checkpoint-tmp-1234567"
    shutil.copytree(ckdir / "2", tmp)
    ck = Checkpointer(tmp_path, config=make_config())
    assert ck.latest_step() == 2 and ck.all_steps() == [2]
    assert ck.restore(params=params, opt_state=opt).data_state == {"i": 2}
    assert not tmp.exists()  # cleaned up on start
    ck.close()


def test_different_config_is_refused_unless_forced(tmp_path, mesh):
    params, opt = sharded_state(mesh)
    ck = Checkpointer(tmp_path, config=make_config())
    ck.save(2, params=params, opt_state=opt, rng=jax.random.key(0), data_state={})
    ck.close()
    with pytest.raises(ConfigMismatchError, match=r"optim.lr: 0.001 \(workdir\) -> 0.01 \(now\)") as e:
        c = make_config()
        c.optim.lr = 1e-2
        Checkpointer(tmp_path, config=c)
    assert "force_resume" in str(e.value)
    # fields that may change across a resume
    c = make_config()
    c.train.steps = 20
    c.checkpoint.keep = 5
    Checkpointer(tmp_path, config=c).close()
    # forced
    c = make_config(b1=0.8)
    c.checkpoint.force_resume = True
    ck = Checkpointer(tmp_path, config=c)
    assert ck.latest_step() == 2 and os.path.exists(tmp_path / "config.json.prev")
    ck.close()
