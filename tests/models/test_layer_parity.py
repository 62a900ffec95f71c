"""Per-layer parity with transformers (float32), as levanter tests its layers: RMSNorm, rotary embedding, GQA
attention (Qwen3: with q/k norm), MLP and one decoder layer, for a Qwen2 and a Qwen3 config.

The same random weights go into the HF module (through `hf.to_hf`, the checkpoint table's own conversion, and a
strict `load_state_dict`, so every HF tensor is set) and into ours (`layer_weights`, and the sampler's fused
layout from `fuse_projections`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax.models import Qwen, QwenConfig, weight_table
from capojax.models.hf import to_hf
from capojax.models.layer import (apply_rope, attention, attention_inputs, attention_output, decoder_layer,
                                  fuse_projections, layer_weights, mlp, rms_norm, rope_tables)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402

TOL = 1e-5  # one layer or op in float32 (the whole-model tests use 1e-4)
B, T = 3, 11
LAYER_PREFIX = "model.layers.{i}."

# GQA (4 query heads, 2 kv heads) everywhere; Qwen3 with head_dim 32 != hidden / heads, as its configs allow.
HF_CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0),
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_theta=1000000.0),
}
MODELING = {"qwen2": modeling_qwen2, "qwen3": modeling_qwen3}
PREFIX = {"qwen2": "Qwen2", "qwen3": "Qwen3"}


class Case:
    """One architecture: the HF config and decoder layer, our config, and the layer's random weights."""

    def __init__(self, name: str):
        self.name = name
        self.hf_config = HF_CONFIGS[name]()
        self.hf_config._attn_implementation = "eager"  # the plain reference implementation
        self.config = QwenConfig.from_hf(self.hf_config.to_dict())
        self.modeling = MODELING[name]
        self.params = _random_layer_params(self.config, seed=len(name))
        self.hf_layer = self.hf_module("DecoderLayer", self.hf_config, layer_idx=0)
        state = {e.hf_name.removeprefix(LAYER_PREFIX): torch.from_numpy(np.ascontiguousarray(to_hf(e.layout, x)))
                 for e, x in self.params.values()}
        self.hf_layer.load_state_dict(state, strict=True)
        self.weights = layer_weights({name: jnp.asarray(x) for name, (_, x) in self.params.items()}, jnp.float32)

    def hf_module(self, kind: str, *args, **kwargs):
        return getattr(self.modeling, PREFIX[self.name] + kind)(*args, **kwargs).eval()


def _random_layer_params(config: QwenConfig, seed: int) -> dict:
    """Our per-layer parameter name -> (its weight-table entry, a random array of our per-layer shape): norm
    weights in [0.5, 1.5], everything else normal(0, 0.08) (biases too), so each tensor matters."""
    model = nnx.eval_shape(lambda: Qwen(config.replace(num_layers=1), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    out = {}
    for entry in weight_table(config):
        if not entry.per_layer:
            continue
        name = entry.path[-1]
        shape = getattr(model.layers, name).shape[1:]  # drop the stacked layer axis
        if "norm" in name:
            x = rng.uniform(0.5, 1.5, shape)
        else:
            x = rng.normal(0.0, 0.08, shape)
        out[name] = (entry, x.astype(np.float32))
    return out


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def case(request) -> Case:
    return Case(request.param)


def _inputs(case: Case, seed: int = 0):
    """x f32[B, T, H], left-padded rows (lengths T, T-3, 5), positions i32[B, T] counting real tokens only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (B, T, case.config.hidden_size)).astype(np.float32)
    real = np.arange(T)[None, :] >= (T - np.array([T, T - 3, 5]))[:, None]  # bool[B, T]
    positions = np.maximum(np.cumsum(real, axis=1) - 1, 0)
    return x, real, positions


def _masks(real: np.ndarray):
    """Ours: bool[B, T, T] (causal and real keys); HF eager: the same as an additive f32[B, 1, T, T]."""
    allowed = np.tril(np.ones((T, T), bool))[None] & real[:, None, :]
    additive = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]
    return jnp.asarray(allowed), torch.from_numpy(additive)


def _hf_rope(case: Case, x: np.ndarray, positions: np.ndarray):
    rotary = case.hf_module("RotaryEmbedding", case.hf_config)
    with torch.no_grad():
        return rotary(torch.from_numpy(x), torch.from_numpy(positions.astype(np.int64)))


def _close(ours, theirs, mask=None):
    ours, theirs = np.asarray(ours), theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    if mask is not None:
        ours, theirs = ours[mask], theirs[mask]
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_rms_norm(case):
    x, _, _ = _inputs(case)
    (_, weight) = case.params["attn_norm"]
    norm = case.hf_module("RMSNorm", case.config.hidden_size, eps=case.config.rms_norm_eps)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(weight))
        theirs = norm(torch.from_numpy(x))
    _close(rms_norm(jnp.asarray(x), jnp.asarray(weight), case.config.rms_norm_eps), theirs)


def test_rotary_tables_and_rotation(case):
    c = case.config
    x, _, positions = _inputs(case)
    positions = positions * 37  # positions up to ~400, where f32 angle rounding would show
    cos, sin = rope_tables(jnp.asarray(positions), c.head_dim, c.rope_theta)
    hf_cos, hf_sin = _hf_rope(case, x, positions)
    _close(cos, hf_cos)
    _close(sin, hf_sin)
    rng = np.random.default_rng(1)
    q = rng.normal(size=(B, T, c.num_heads, c.head_dim)).astype(np.float32)
    k = rng.normal(size=(B, T, c.num_kv_heads, c.head_dim)).astype(np.float32)
    # HF rotates [B, heads, T, D]
    hf_q, hf_k = case.modeling.apply_rotary_pos_emb(torch.from_numpy(q).transpose(1, 2),
                                                    torch.from_numpy(k).transpose(1, 2), hf_cos, hf_sin)
    _close(apply_rope(jnp.asarray(q), cos, sin), hf_q.transpose(1, 2))
    _close(apply_rope(jnp.asarray(k), cos, sin), hf_k.transpose(1, 2))


def _our_attention(case: Case, weights, y, cos, sin, mask, **layout):
    q, k, v = attention_inputs(jnp.asarray(y), weights, case.config, cos, sin)
    if layout.get("keys_transposed"):  # the sampler's cache layout: keys [B, nKV, D, S], values [B, nKV, S, D]
        k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    return attention_output(attention(q, k, v, mask, **layout), weights)


@pytest.mark.parametrize("layout", [{}, {"keys_transposed": True, "per_member": True}], ids=["model", "sampler"])
@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_gqa_attention(case, layout, fused):
    """HF self_attn (projections, Qwen3's q/k norm, rope, GQA softmax attention, o_proj) on the normed input;
    ours in the model's and the sampler's weight and cache layouts. Padding query rows are not compared."""
    x, real, positions = _inputs(case)
    mask, hf_mask = _masks(real)
    cos, sin = rope_tables(jnp.asarray(positions), case.config.head_dim, case.config.rope_theta)
    weights = fuse_projections(case.weights) if fused else case.weights
    ours = jax.jit(lambda y: _our_attention(case, weights, y, cos, sin, mask, **layout))(x)
    with torch.no_grad():
        theirs, _ = case.hf_layer.self_attn(torch.from_numpy(x), _hf_rope(case, x, positions), hf_mask)
    _close(ours, theirs, real)


@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_mlp(case, fused):
    x, _, _ = _inputs(case)
    weights = fuse_projections(case.weights) if fused else case.weights
    with torch.no_grad():
        theirs = case.hf_layer.mlp(torch.from_numpy(x))
    _close(mlp(jnp.asarray(x), weights, case.config), theirs)


@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_decoder_layer(case, fused):
    """The whole layer, x + attn(norm(x)) then x + mlp(norm(x)), on left-padded rows."""
    x, real, positions = _inputs(case)
    mask, hf_mask = _masks(real)
    cos, sin = rope_tables(jnp.asarray(positions), case.config.head_dim, case.config.rope_theta)
    weights = fuse_projections(case.weights) if fused else case.weights

    @jax.jit
    def ours(x):
        out, aux = decoder_layer(x, weights, case.config, cos, sin, lambda q, k, v: (attention(q, k, v, mask), None))
        assert aux is None
        return out

    with torch.no_grad():
        theirs = case.hf_layer(torch.from_numpy(x), attention_mask=hf_mask,
                               position_embeddings=_hf_rope(case, x, positions))
    _close(ours(jnp.asarray(x)), theirs, real)
