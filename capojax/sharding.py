"""Device mesh and the logical-axis rules that place parameters, batches and KV caches on it.

One mesh with two axes, `("fsdp", "tp")`:

- `fsdp` — data parallel over the batch AND fully-sharded parameters: every parameter's "embed" (hidden-size)
  dimension is split over it, so each device holds 1/fsdp of the weights; XLA all-gathers a layer's weights
  just before use (inside the scanned layer, so only one layer is gathered at a time).
- `tp` — tensor (model) parallel: attention heads, MLP intermediate and vocabulary dims are split over it
  (Megatron layout: column-parallel q/k/v/gate/up, row-parallel o/down), so activations of those dims stay local.

Every parameter of `capojax.models.Qwen` carries one logical name per dimension (its `out_sharding` metadata);
`LOGICAL_AXIS_RULES` maps a logical name to a mesh axis (or None = replicated along that dimension):

    logical name  what it is                        mesh axis
    ------------  --------------------------------  ---------
    layers        stacked-layer (scan) axis         None   (each device needs every layer, one at a time)
    vocab         vocabulary (embed / lm_head)      tp
    embed         hidden size H                     fsdp
    q_heads       query heads                       tp
    kv_heads      key/value heads                   tp
    head_dim      per-head dim D                    None   (rope and q/k-norm act along it)
    mlp           MLP intermediate size I           tp
    batch         leading dim of inputs             fsdp
    cache_len     KV-cache slots                    None

Divisibility fallback: a dimension whose size is not a multiple of its mesh axis size is left replicated
(`None`) instead of failing. Example: Qwen2.5-Math-1.5B has 2 kv heads; on tp=4 the k/v projections replicate
their head dim (each tp rank computes both kv heads, which is cheap) while q heads (12) and the MLP are split.
XLA would otherwise need padded uneven shards, which `jax.device_put` refuses. The fallback is per dimension,
so the other dims of the same parameter are still sharded. A mesh axis is also used at most once per array.

Activations: left alone, XLA propagates the parameters' sharding into the forward pass, so the residual stream
[B, T, H] follows the weights' hidden dim over fsdp and every device ends up holding all B rows of the
activations and of the [B, T, V] logits (the 7B plan: 56 GB per device at 8 rows per micro-batch).
`constrain_activations` pins the batch dim of the residual stream and of the logits to "fsdp" (and the
logits' vocabulary to "tp"), so each device keeps B/fsdp rows and all-gathers one layer's weights instead. It
reads the mesh from the tracing context (`activation_mesh(mesh)`, or `jax.set_mesh(mesh)` around a call) and is
a no-op without one, so single-device code and the sampler are unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("fsdp", "tp")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("layers", None),
    ("vocab", "tp"),
    ("embed", "fsdp"),
    ("q_heads", "tp"),
    ("kv_heads", "tp"),
    ("head_dim", None),
    ("mlp", "tp"),
    ("batch", "fsdp"),
    ("cache_len", None),
)


def make_mesh(fsdp: int = -1, tp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("fsdp", "tp") mesh over the first fsdp*tp devices; fsdp=-1 takes all devices left after tp.

    tp is the fast (inner) axis, so tensor-parallel ranks are neighbouring devices (same host / ICI ring).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if tp < 1 or (fsdp == -1 and n % tp):
        raise ValueError(f"tp={tp} must be >= 1 and divide the {n} devices when fsdp=-1")
    if fsdp == -1:
        fsdp = n // tp
    if fsdp < 1 or fsdp * tp > n:
        raise ValueError(f"mesh fsdp={fsdp} x tp={tp} needs {fsdp * tp} devices but {n} are available")
    grid = np.asarray(devices[: fsdp * tp], dtype=object).reshape(fsdp, tp)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims have the given logical names.

    Unknown names raise (a typo should not silently replicate a 7B embedding). A dim that does not divide by its
    mesh axis size, or whose mesh axis is already used by an earlier dim, stays replicated (as does one whose mesh
    axis has size 1, which only keeps the specs short).
    """
    if logical_axes is None:
        return PartitionSpec()
    if len(logical_axes) != len(shape):
        raise ValueError(f"{len(logical_axes)} logical axes {tuple(logical_axes)} for an array of shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | None] = []
    for name, size in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES ({sorted(table)})")
        axis = table[name]
        if axis is None or axis in used or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return PartitionSpec(*spec)


def _variable_sharding(var: nnx.Variable, mesh: Mesh) -> NamedSharding:
    axes = var.get_metadata().get("out_sharding")
    return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh))


def param_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedSharding for every Variable of a model or an nnx.State (same tree structure as `nnx.state(tree)`)."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
    return jax.tree.map(lambda v: v.replace(_variable_sharding(v, mesh)), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Move every parameter of `model` onto `mesh` by the logical-axis rules (in place; returns the model)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Inputs [B, ...]: the leading (batch) dim split over "fsdp", the rest replicated. B must divide by fsdp."""
    return NamedSharding(mesh, PartitionSpec("fsdp"))


def cache_sharding(mesh: Mesh, num_kv_heads: int, batch: int) -> NamedSharding:
    """KVCache k / v [L, B, max_len, n_kv, D]: batch over "fsdp", kv heads over "tp" (each if divisible)."""
    spec = logical_to_spec((None, "batch", "cache_len", "kv_heads", "head_dim"),
                           (1, batch, 1, num_kv_heads, 1), mesh)
    return NamedSharding(mesh, spec)


def activation_mesh(mesh: Mesh | None):
    """Context under which `constrain_activations` shards activations over `mesh` (nullcontext for None).
    Enter it inside a jitted function's body (it sets the abstract mesh of the trace)."""
    if mesh is None:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def constrain_activations(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint from its dims' logical names (e.g. ("batch", None, None) for the residual
    stream [B, T, H]) on the mesh of the tracing context; unchanged when there is none. Dims that do not divide
    their mesh axis stay replicated (`logical_to_spec`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "fsdp" not in mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def to_host(x) -> np.ndarray:
    """The whole (global) value of `x` as numpy on every process: a plain device_get when `x` is fully
    addressable, the local copy when it is replicated, else an all-gather across processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
