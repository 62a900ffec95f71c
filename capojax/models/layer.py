"""The Qwen2 / Qwen2.5 / Qwen3 decoder layer, once, as pure functions over a small weights struct.

    x = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))     q, k, v = qkv_proj(rms_norm(x))
    x = x + down_proj(silu(gate) * up)                                 gate, up = gate_up_proj(rms_norm(x))

Every caller runs `decoder_layer`: `Block` (models/qwen.py: the full-sequence forward and the KV-cache
`Qwen.decode`, which the SFT stage's evaluator calls) and the rollout sampler's token loop (rollout/sampler.py).
They differ only in two things the layer takes as arguments:

- the weights' layout, `LayerWeights`, built by adapters from the model's parameters: `layer_weights` (a layer's
  params as the model holds them, in the compute dtype), `as_matrices` (head axes merged: the sampler's layout)
  and `fuse_projections` ([q | k | v] and [gate | up] as one matrix each: the CPU sampler's layout, one dot
  instead of three and two);
- where keys and values live: `decoder_layer` hands q, k, v to the caller's `attend`, which writes them into its
  cache (if any) and runs `attention` over the cache's own layout.

Numerics follow transformers: RMSNorm in float32 then cast back, RoPE with the rotate_half convention, attention
scores and softmax in float32.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """HF Qwen2RMSNorm: normalise in float32, cast back to x.dtype, then multiply by the weight. x: [..., H]."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * x32.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin: f32[B, T, head_dim] for integer positions i32[B, T] (HF default rope, halves concatenated)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    # Materialised once: left fusible, XLA:CPU re-derives sin/cos (scalar libm calls) inside every consumer, 40
    # times per training update of the 4-layer benchmark model, whose non-matmul thread time this took from 140 to
    # 92 ms. The same tables: cos(concat(f, f)) = concat(cos(f), cos(f)).
    cos, sin = jax.lax.optimization_barrier((jnp.cos(freqs), jnp.sin(freqs)))
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, n, D]; cos/sin: f32[B, T, D]. x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def dense(x: jax.Array, w: jax.Array, contract: int = 1, preferred_element_type=None) -> jax.Array:
    """x [..., *in] times w [*in, *out] -> [..., *out], `in` being x's last `contract` dims, as ONE 2-D matmul
    [rows, prod(in)] x [prod(in), prod(out)]. Same product as the einsum; XLA:CPU runs the backward's weight
    gradient of a 3-D activation (contracting batch and time together) about twice as slow as the 2-D one."""
    k = math.prod(x.shape[x.ndim - contract:])
    lead, out = x.shape[: x.ndim - contract], w.shape[contract:]
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


def _grouped_einsum(spec: str, a: jax.Array, b: jax.Array, *, per_member: bool, **kwargs) -> jax.Array:
    """jnp.einsum(spec, a, b) where `a` and the output carry the query-group axis `g` (b does not).

    per_member: one product per member g of the query group, stacked on the output's g axis. XLA:CPU's Eigen
    path runs a batched dot with G-row matrices (G = 2 in the sampler's models) as N * kv tiny GEMMs at ~2.5x
    the cost of the G matrix-vector products, which it emits as plain vectorised loops.
    """
    if not per_member:
        return jnp.einsum(spec, a, b, **kwargs)
    inputs, out = spec.split("->")
    lhs, rhs = inputs.split(",")
    member_spec = f"{lhs.replace('g', '')},{rhs}->{out.replace('g', '')}"
    g_axis = lhs.index("g")
    return jnp.stack([jnp.einsum(member_spec, jax.lax.index_in_dim(a, g, g_axis, keepdims=False), b, **kwargs)
                      for g in range(a.shape[g_axis])], axis=out.index("g"))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, keys_transposed: bool = False,
              per_member: bool = False) -> jax.Array:
    """Grouped-query attention.

    q: [B, T, nH, D]; mask: bool[B, T, S] (True = may attend) -> [B, T, nH, D] in v's dtype.
    k, v: [B, S, nKV, D] (the model's cache), or with keys_transposed k [B, nKV, D, S] and v [B, nKV, S, D]
    (the sampler's per-layer cache: q @ K^T is then a [G, D] x [D, S] product, which XLA:CPU runs about twice as
    fast as contracting two D-minor operands). per_member: see `_grouped_einsum` (the CPU sampler's S = 1 step).
    Scores and softmax in float32. A query with no allowed key (a padding row) gets a uniform average, never NaN.
    """
    b, t, nh, d = q.shape
    nkv = k.shape[1] if keys_transposed else k.shape[2]
    g = nh // nkv
    if not (keys_transposed or per_member):
        return _heads_first_attention(q.reshape(b, t, nkv, g, d), k, v, mask).reshape(b, t, nh, d)
    k_spec, v_spec = ("bkds", "bksd") if keys_transposed else ("bskd", "bskd")
    q = q.reshape(b, t, nkv, g, d)
    scores = _grouped_einsum(f"btkgd,{k_spec}->bkgts", q, k, per_member=per_member,
                             preferred_element_type=jnp.float32) * (d**-0.5)
    probs = _masked_softmax(scores, mask[:, None, None, :, :]).astype(v.dtype)
    if keys_transposed:
        # Heads-first product, then the transpose: with T = 1 XLA:CPU then emits the dot the sampler was tuned with,
        # a vector times the row-major V (asked for "btkgd" directly, it swaps the operands into V^T times a vector).
        out = _grouped_einsum(f"bkgts,{v_spec}->bkgtd", probs, v, per_member=per_member).transpose(0, 3, 1, 2, 4)
    else:
        out = _grouped_einsum(f"bkgts,{v_spec}->btkgd", probs, v, per_member=per_member)
    return out.reshape(b, t, nh, d)


def _masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax over the last axis of f32 scores where mask (broadcast) allows, a uniform row where it allows none."""
    return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1)


def _heads_first_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Full-sequence attention, q [B, T, nKV, G, D], k, v [B, S, nKV, D] -> [B, T, nKV, G, D].

    Heads moved in front of the sequence once, with a query group's G x T rows as one matrix: two batched
    [G*T, D] x [D, S] and [G*T, S] x [S, D] products. Asked for the einsums in the cache's layout, XLA:CPU
    transposes around every product of the forward and backward instead: at the benchmark model's training shapes
    (16 x 96 tokens, 4 heads, 2 kv heads) this forward + backward took 7.4 ms against 9.2 ms.
    """
    b, t, nkv, g, d = q.shape
    s = k.shape[1]
    q = q.transpose(0, 2, 3, 1, 4).reshape(b, nkv, g * t, d)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, nKV, S, D]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    probs = _masked_softmax(scores.reshape(b, nkv, g, t, s), mask[:, None, None, :, :]).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(b, nkv, g * t, s), v)
    return out.reshape(b, nkv, g, t, d).transpose(0, 3, 1, 2, 4)


# --------------------------------------------------------------------------------------------------
# Weights and their layouts
# --------------------------------------------------------------------------------------------------


class LayerWeights(NamedTuple):
    """One layer's weights in the compute dtype (H hidden, nH / nKV heads, D head dim, I intermediate); a pytree.

    Two layouts, both run by `decoder_layer`:
      the model's (`layer_weights`)   qkv_proj = (q [H, nH, D], k [H, nKV, D], v [H, nKV, D]), biases [n, D],
                                      o_proj [nH, D, H];
      matrices (`as_matrices`)        head axes merged: q [H, nH*D], ..., biases [n*D], o_proj [nH*D, H]; and
                                      fused (`fuse_projections`): qkv_proj = ([H, (nH + 2 nKV) * D],) = [q | k | v],
                                      qkv_bias likewise, gate_up_proj = ([H, 2 I],) = [gate | up].
    qkv_bias is None without biases (Qwen3), q_norm / k_norm None without qk-norm (Qwen2).
    """

    attn_norm: jax.Array  # [H]
    qkv_proj: tuple[jax.Array, ...]
    qkv_bias: tuple[jax.Array, ...] | None
    q_norm: jax.Array | None  # [D]
    k_norm: jax.Array | None  # [D]
    o_proj: jax.Array
    mlp_norm: jax.Array  # [H]
    gate_up_proj: tuple[jax.Array, ...]  # (gate [H, I], up [H, I]) or fused ([H, 2 I],)
    down_proj: jax.Array  # [I, H]


def layer_weights(params: Mapping[str, jax.Array], dtype: Any) -> LayerWeights:
    """The weight-layout adapter from the model: one layer's parameters by `Block`'s names, cast to `dtype`.

    params: attn_norm [H], q_proj [H, nH, D], k_proj / v_proj [H, nKV, D], o_proj [nH, D, H], mlp_norm [H],
    gate_proj / up_proj [H, I], down_proj [I, H]; q_bias [nH, D] / k_bias / v_bias [nKV, D] and q_norm / k_norm
    [D] when the architecture has them (absent otherwise).
    """
    def get(name):
        x = params.get(name)
        return None if x is None else x.astype(dtype)

    biases = (get("q_bias"), get("k_bias"), get("v_bias"))
    return LayerWeights(
        attn_norm=get("attn_norm"), qkv_proj=(get("q_proj"), get("k_proj"), get("v_proj")),
        qkv_bias=None if biases[0] is None else biases, q_norm=get("q_norm"), k_norm=get("k_norm"),
        o_proj=get("o_proj"), mlp_norm=get("mlp_norm"), gate_up_proj=(get("gate_proj"), get("up_proj")),
        down_proj=get("down_proj"))


def as_matrices(w: LayerWeights) -> LayerWeights:
    """Head axes merged into plain matrices (free reshapes): the sampler's layout. Built once outside its token
    loop, this keeps XLA from re-laying-out (copying) the [H, n, D] / [n, D, H] shapes at every token."""
    h = w.attn_norm.shape[-1]
    flat = lambda xs, shape: None if xs is None else tuple(x.reshape(shape) for x in xs)  # noqa: E731
    return w._replace(qkv_proj=flat(w.qkv_proj, (h, -1)), qkv_bias=flat(w.qkv_bias, (-1,)),
                      o_proj=w.o_proj.reshape(-1, h))


def fuse_projections(w: LayerWeights) -> LayerWeights:
    """The CPU sampler's layout: `as_matrices`, then q/k/v (and their biases) and gate/up concatenated into one
    matrix each, 3 + 2 dots per layer -> 1 + 1. On CPU, where a small-batch dot costs mostly its fixed overhead,
    that is ~5% of a decode step; on accelerators it would only cost a copy of most of the weights."""
    def cat(parts):
        return parts if parts is None or len(parts) == 1 else (jnp.concatenate(parts, axis=-1),)

    w = as_matrices(w)
    return w._replace(qkv_proj=cat(w.qkv_proj), qkv_bias=cat(w.qkv_bias), gate_up_proj=cat(w.gate_up_proj))


def _project(y: jax.Array, mats: tuple[jax.Array, ...], biases: tuple[jax.Array, ...] | None,
             sizes: tuple[int, ...]) -> list[jax.Array]:
    """y [..., H] times each matrix [H, *out] (plus its bias [*out]) -> one output per entry of `sizes` (its
    columns): a fused matrix is one dot whose output is split."""
    outs = [dense(y, m) for m in mats]
    if biases is not None:
        outs = [o + bias for o, bias in zip(outs, biases)]
    if len(outs) == len(sizes):
        return outs
    (out,) = outs
    return jnp.split(out, np.cumsum(sizes)[:-1].tolist(), axis=-1)


# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------


def attention_inputs(y: jax.Array, w: LayerWeights, config, cos: jax.Array, sin: jax.Array):
    """The normed input y [B, T, H] -> q [B, T, nH, D], k, v [B, T, nKV, D]: projections (+ bias), Qwen3's
    per-head q/k RMSNorm, then rope on q and k. cos, sin: f32[B, T, D] (`rope_tables`)."""
    nh, nkv, d, eps = config.num_heads, config.num_kv_heads, config.head_dim, config.rms_norm_eps
    lead = y.shape[:-1]
    q, k, v = _project(y, w.qkv_proj, w.qkv_bias, (nh * d, nkv * d, nkv * d))
    q, k, v = q.reshape(*lead, nh, d), k.reshape(*lead, nkv, d), v.reshape(*lead, nkv, d)
    if w.q_norm is not None:
        q, k = rms_norm(q, w.q_norm, eps), rms_norm(k, w.k_norm, eps)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attention_output(attn_out: jax.Array, w: LayerWeights) -> jax.Array:
    """o_proj: attn_out [B, T, nH, D] -> [B, T, H] (o_proj [nH, D, H] or [nH*D, H]: the same 2-D matmul)."""
    return dense(attn_out.reshape(*attn_out.shape[:-2], -1), w.o_proj.reshape(-1, w.o_proj.shape[-1]))


def mlp(y: jax.Array, w: LayerWeights, config) -> jax.Array:
    """The SwiGLU MLP of the normed input y [B, T, H]: down(silu(gate(y)) * up(y)) -> [B, T, H]."""
    gate, up = _project(y, w.gate_up_proj, None, (config.intermediate_size,) * 2)
    return dense(jax.nn.silu(gate) * up, w.down_proj)


Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def decoder_layer(x: jax.Array, w: LayerWeights, config, cos: jax.Array, sin: jax.Array,
                  attend: Attend) -> tuple[jax.Array, Any]:
    """One decoder layer: x [B, T, H] -> (x [B, T, H], whatever `attend` returned beside its output).

    config: a `QwenConfig` (heads, head_dim, intermediate_size, rms_norm_eps); cos, sin: f32[B, T, D].
    attend(q [B, T, nH, D], k [B, T, nKV, D], v [B, T, nKV, D]) -> (out [B, T, nH, D], aux): `attention` over
    this layer's keys and values, e.g. `lambda q, k, v: (attention(q, k, v, mask), None)` for a full sequence,
    or one that first writes k and v into a cache and returns the updated cache as aux.
    """
    eps = config.rms_norm_eps
    out, aux = attend(*attention_inputs(rms_norm(x, w.attn_norm, eps), w, config, cos, sin))
    x = x + attention_output(out, w)
    return x + mlp(rms_norm(x, w.mlp_norm, eps), w, config), aux
