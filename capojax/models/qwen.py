"""Qwen2 / Qwen2.5 / Qwen3 causal LM in Flax NNX.

Structure (HF names in brackets, see `hf.py` for the exact table):

    embed        Param[V, H]                     (model.embed_tokens)
    layers       Block, every param stacked on a leading layer axis [L, ...] (model.layers.{i}.*)
      attn_norm  [L, H]                          (input_layernorm)
      q_proj     [L, H, nH, D]  (+ q_bias [L, nH, D] for Qwen2)
      k_proj     [L, H, nKV, D] (+ k_bias)       v_proj likewise
      q_norm / k_norm [L, D]   (Qwen3 only)
      o_proj     [L, nH, D, H]
      mlp_norm   [L, H]                          (post_attention_layernorm)
      gate_proj, up_proj [L, H, I]; down_proj [L, I, H]
    norm         [H]                             (model.norm)
    lm_head      [H, V]  (absent when tie_word_embeddings: logits use embed.T)

The layers are created with `nnx.vmap` (one Block per layer, stacked) and run with `jax.lax.scan` over the stacked
state, so a 28-layer model traces and compiles one layer (stacks of up to 8 layers are unrolled, see
`UNROLL_LAYERS_UP_TO`). A Block only holds parameters: the layer's math is `capojax.models.layer.decoder_layer`,
which the rollout sampler runs too. Each parameter carries logical axis names in its `out_sharding` metadata
(eager sharding off: names are logical, `capojax.sharding` maps them onto the mesh). Projections are single 2-D
matmuls (`dense`).

Numerics follow transformers: RMSNorm in float32 then cast back, RoPE with the rotate_half convention, attention
softmax in float32, logits returned in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from capojax.models.config import QwenConfig
from capojax.models.layer import (  # noqa: F401 - rms_norm, rope and dense are also this module's public names
    LayerWeights, apply_rope, attention, decoder_layer, dense, layer_weights, rms_norm, rope_tables)
from capojax.sharding import constrain_activations

# Logical axes of the activations that `constrain_activations` pins (see capojax.sharding): rows over fsdp.
RESIDUAL_AXES = ("batch", None, None)  # [B, T, H]
LOGITS_AXES = ("batch", None, "vocab")  # [B, T, V]
# Layer stacks up to this depth run unrolled in the full-sequence forward: XLA:CPU then fuses across layers and skips
# the scan's per-layer residual copies (the tiny models' update pass is ~10 % faster); deeper models keep the scan,
# which compiles one layer whatever the depth.
UNROLL_LAYERS_UP_TO = 8

_INIT_STD = 0.02  # HF initializer_range of the Qwen configs


class KVCache(NamedTuple):
    """Keys / values of every layer, k and v: [L, B, max_len, n_kv, head_dim] (a pytree; donate it under jit)."""

    k: jax.Array
    v: jax.Array


def _param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    """A Param with logical axis names `axes` (one per dim) as `out_sharding` metadata (not eagerly applied)."""
    assert len(axes) == len(shape), (shape, axes)
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


class Block(nnx.Module):
    """One decoder layer's parameters; its math is `capojax.models.layer.decoder_layer`."""

    def __init__(self, config: QwenConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        c = config
        h, d, nh, nkv, i = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
        p = lambda shape, axes, init="normal": _param(rngs, shape, axes, param_dtype, init)  # noqa: E731
        self.config = config
        self.dtype = dtype
        self.attn_norm = p((h,), ("embed",), "ones")
        self.q_proj = p((h, nh, d), ("embed", "q_heads", "head_dim"))
        self.k_proj = p((h, nkv, d), ("embed", "kv_heads", "head_dim"))
        self.v_proj = p((h, nkv, d), ("embed", "kv_heads", "head_dim"))
        if c.qkv_bias:
            self.q_bias = p((nh, d), ("q_heads", "head_dim"), "zeros")
            self.k_bias = p((nkv, d), ("kv_heads", "head_dim"), "zeros")
            self.v_bias = p((nkv, d), ("kv_heads", "head_dim"), "zeros")
        if c.qk_norm:
            self.q_norm = p((d,), ("head_dim",), "ones")
            self.k_norm = p((d,), ("head_dim",), "ones")
        self.o_proj = p((nh, d, h), ("q_heads", "head_dim", "embed"))
        self.mlp_norm = p((h,), ("embed",), "ones")
        self.gate_proj = p((h, i), ("embed", "mlp"))
        self.up_proj = p((h, i), ("embed", "mlp"))
        self.down_proj = p((i, h), ("mlp", "embed"))

    def weights(self) -> LayerWeights:
        """This layer's parameters in the layer's layout (2-D matrices in the compute dtype; free reshapes)."""
        return layer_weights(_block_params(self), self.dtype)

    def __call__(self, x, cos, sin, mask):
        """Full-sequence layer. x: [B, T, H]; mask: bool[B, T, T]."""
        x, _ = decoder_layer(x, self.weights(), self.config, cos, sin,
                             lambda q, k, v: (attention(q, k, v, mask), None))
        return x


def _block_params(block: Block, index: int | None = None) -> dict[str, jax.Array]:
    """A Block's parameter values by name (those its architecture has); index: one layer of the stacked Block."""
    return {name: p[...] if index is None else p[...][index]
            for name, p in vars(block).items() if isinstance(p, nnx.Param)}


class Qwen(nnx.Module):
    """Qwen2 / Qwen2.5 / Qwen3 causal LM.

    dtype: compute dtype (activations, matmuls); param_dtype: storage dtype of the parameters.
    remat: recompute each layer's activations in the backward pass (jax.checkpoint per scanned layer).
    """

    def __init__(self, config: QwenConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: bool = False):
        c = config
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.remat = remat
        self.embed = _param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), param_dtype)

        @nnx.split_rngs(splits=c.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return Block(c, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.layers = make_layers(rngs)
        self.norm = _param(rngs, (c.hidden_size,), ("embed",), param_dtype, "ones")
        if not c.tie_word_embeddings:
            self.lm_head = _param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"), param_dtype)

    # ------------------------------------------------------------------ full-sequence forward

    def __call__(self, tokens: jax.Array, *, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """tokens i32[B, T] -> logits f32[B, T, V]."""
        return self.logits(self.hidden(tokens, attention_mask=attention_mask, positions=positions))

    def hidden(self, tokens: jax.Array, *, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
        """tokens i32[B, T] -> final-norm hidden states [B, T, H] (compute dtype).

        attention_mask bool[B, T]: False marks padding (left padding expected); a query attends to key s iff
        s <= t and attention_mask[b, s]. positions i32[B, T] default: cumsum(mask) - 1 clipped at 0, so the first
        real token of a left-padded row has position 0.
        """
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = attention_mask.astype(bool)
        if positions is None:
            positions = default_positions(attention_mask)
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None] & attention_mask[:, None, :]  # [B, T(query), T(key)]
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = self.embed[...][tokens].astype(self.dtype)  # gather, then cast only B*T rows
        x = constrain_activations(x, RESIDUAL_AXES)

        graphdef, state = nnx.split(self.layers)

        def body(x, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            # Without this, XLA shards the residual stream like the weights' hidden dim and keeps every row.
            return constrain_activations(layer(x, cos, sin, mask), RESIDUAL_AXES), None

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        unroll = self.config.num_layers <= UNROLL_LAYERS_UP_TO
        x, _ = jax.lax.scan(body, x, state, unroll=unroll)
        return rms_norm(x, self.norm[...], self.config.rms_norm_eps)

    def layer_weights(self, index: int) -> LayerWeights:
        """Layer `index` of the stack (a static slice) in the layer's layout: what the sampler's token loop runs."""
        return layer_weights(_block_params(self.layers, index), self.dtype)

    def output_matrix(self) -> jax.Array:
        """[H, V] in the compute dtype: embed.T when the embeddings are tied, else lm_head."""
        w = self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]
        return w.astype(self.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., H] -> logits f32[..., V] (rows over fsdp, vocabulary over tp under an activation mesh)."""
        logits = dense(hidden, self.output_matrix(), preferred_element_type=jnp.float32)
        return constrain_activations(logits, LOGITS_AXES) if logits.ndim == 3 else logits

    # ------------------------------------------------------------------ KV-cache decode

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """Zeroed cache, k and v: [L, batch, max_len, n_kv, head_dim] in `dtype` (default: the compute dtype)."""
        c = self.config
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        dtype = dtype or self.dtype
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def decode(self, tokens: jax.Array, *, positions: jax.Array, cache: KVCache, cache_mask: jax.Array,
               index: jax.Array) -> tuple[jax.Array, KVCache]:
        """Run S new tokens against the cache (prefill: S = prompt length; sampling: S = 1).

        tokens, positions: i32[B, S]; cache_mask: bool[B, max_len] (True for every filled slot of a real token,
        including the S new ones); index: i32[] first slot to write. Writes the new keys/values into slots
        [index, index + S) and lets query s attend to slot j iff cache_mask[b, j] and j <= index + s.
        Returns (logits f32[B, S, V], updated cache).
        """
        c = self.config
        s = tokens.shape[1]
        max_len = cache.k.shape[2]
        index = jnp.asarray(index, jnp.int32)
        slots = jnp.arange(max_len)
        query_slots = index + jnp.arange(s)
        mask = cache_mask[:, None, :] & (slots[None, None, :] <= query_slots[None, :, None])  # [B, S, max_len]
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
        x = self.embed[...][tokens].astype(self.dtype)  # gather, then cast only B*T rows
        graphdef, state = nnx.split(self.layers)

        def body(carry, layer_state):
            # The whole cache is carried and updated in place (dynamic_update_slice), one layer at a time.
            x, k_all, v_all, i = carry
            layer = nnx.merge(graphdef, layer_state)

            def attend(q, k, v):
                zero = jnp.zeros((), jnp.int32)
                start = (i, zero, index, zero, zero)
                k_new = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
                v_new = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
                k_layer = jax.lax.dynamic_index_in_dim(k_new, i, keepdims=False).astype(self.dtype)
                v_layer = jax.lax.dynamic_index_in_dim(v_new, i, keepdims=False).astype(self.dtype)
                return attention(q, k_layer, v_layer, mask), (k_new, v_new)

            x, (k_all, v_all) = decoder_layer(x, layer.weights(), c, cos, sin, attend)
            return (x, k_all, v_all, i + 1), None

        (x, k_all, v_all, _), _ = jax.lax.scan(body, (x, cache.k, cache.v, jnp.zeros((), jnp.int32)), state)
        x = rms_norm(x, self.norm[...], c.rms_norm_eps)
        return self.logits(x), KVCache(k_all, v_all)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """i32[B, T]: position of each token counting only real tokens (cumsum(mask) - 1, clipped at 0)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)
