"""Numerical parity with transformers (float32), left padding, HF export round trip, KV-cache decode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax.models import default_positions, init_model, load_pretrained, save_pretrained
VOCAB = 256  # vocab of the tiny checkpoints in conftest.py

TOL = 1e-4  # whole model in float32


def _tokens(seed: int, shape) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, VOCAB, shape).astype(np.int32)


def _left_pad(rows: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    t = max(len(r) for r in rows)
    tokens = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for b, r in enumerate(rows):
        tokens[b, t - len(r):] = r
        mask[b, t - len(r):] = True
    return tokens, mask


@nnx.jit
def _forward(model, tokens, mask=None):
    return model(tokens, attention_mask=mask)


@nnx.jit
def _decode(model, tokens, positions, cache, cache_mask, index):
    return model.decode(tokens, positions=positions, cache=cache, cache_mask=cache_mask, index=index)


def test_logits_match_transformers(hf_checkpoint):
    model, config = load_pretrained(hf_checkpoint.path)
    assert config.model_type == hf_checkpoint.name.split("-")[0]
    tokens = _tokens(0, (3, 17))
    ours = np.asarray(_forward(model, jnp.asarray(tokens), jnp.ones(tokens.shape, bool)))
    ref = hf_checkpoint.torch_logits(tokens)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_left_padded_batch_equals_rows_alone_and_transformers(hf_checkpoints):
    ckpt = hf_checkpoints["qwen3"]
    model, _ = load_pretrained(ckpt.path)
    rows = [_tokens(s, (n,)) for s, n in ((1, 11), (2, 4), (3, 8))]
    tokens, mask = _left_pad(rows, pad_id=7)
    batch = np.asarray(_forward(model, jnp.asarray(tokens), jnp.asarray(mask)))
    ref = ckpt.torch_logits(tokens, mask, np.asarray(default_positions(jnp.asarray(mask))))
    for b, row in enumerate(rows):
        real = mask[b]
        alone = np.asarray(_forward(model, jnp.asarray(row[None])))[0]
        np.testing.assert_allclose(batch[b, real], alone, atol=TOL, rtol=0)
        np.testing.assert_allclose(batch[b, real], ref[b, real], atol=TOL, rtol=0)
    assert np.isfinite(batch).all()  # padding rows attend to nothing real but must not produce NaN


def test_hidden_then_logits_equals_call(hf_checkpoints):
    model, _ = load_pretrained(hf_checkpoints["qwen2-untied"].path)
    tokens = jnp.asarray(_tokens(4, (2, 9)))

    @nnx.jit
    def split_and_whole(model, tokens):
        hidden = model.hidden(tokens)
        return hidden, model.logits(hidden[:, 3:5]), model(tokens)

    hidden, some_logits, logits = split_and_whole(model, tokens)
    assert hidden.shape == (2, 9, 64)
    np.testing.assert_allclose(np.asarray(some_logits), np.asarray(logits)[:, 3:5], atol=1e-5, rtol=0)


def test_export_roundtrip_through_transformers(hf_checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    model, config = load_pretrained(hf_checkpoint.path)
    save_pretrained(model, config, tmp_path)
    assert {"config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = _tokens(5, (2, 13))
    with torch.no_grad():
        theirs = reloaded(torch.tensor(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, hf_checkpoint.torch_logits(tokens), atol=TOL, rtol=0)
    gen = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert gen.eos_token_id == config.eos_token_id
    # and our own loader reads our export back exactly
    again, config2 = load_pretrained(tmp_path)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, nnx.state(again), nnx.state(model))


def test_sharded_export_with_index_and_bf16(hf_checkpoints, tmp_path):
    model, config = load_pretrained(hf_checkpoints["qwen2-untied"].path)
    save_pretrained(model, config, tmp_path, dtype=jnp.bfloat16, max_shard_bytes=40_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    bf16, _ = load_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nnx.state(bf16)))
    f32_from_bf16, _ = load_pretrained(tmp_path, dtype=jnp.float32)
    # the bf16 file holds the f32 weights rounded to bf16, nothing else
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(jnp.bfloat16).astype(jnp.float32)),
                 nnx.state(f32_from_bf16), nnx.state(model))


def test_remat_same_logits_and_grads(hf_checkpoints):
    path = hf_checkpoints["qwen2-tied"].path
    tokens = jnp.asarray(_tokens(6, (2, 8)))

    def loss(model):
        return jnp.mean(jax.nn.log_softmax(model(tokens))[..., 3])

    results = []
    for remat in (False, True):
        model, _ = load_pretrained(path, remat=remat)
        results.append(nnx.jit(nnx.value_and_grad(loss))(model))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(l0, l1, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), nnx.state(g0), nnx.state(g1))


@pytest.mark.parametrize("name", ["qwen2-tied", "qwen3"])
def test_decode_with_cache_equals_full_forward(hf_checkpoints, name):
    """Prefill a left-padded prompt batch, then feed the continuation one token at a time."""
    model, _ = load_pretrained(hf_checkpoints[name].path)
    prompts = [_tokens(10, (6,)), _tokens(11, (3,)), _tokens(12, (5,))]
    prompt, prompt_mask = _left_pad(prompts)
    b, p = prompt.shape
    n_new, max_len = 5, 16  # max_len > p + n_new: unused trailing slots must be masked out
    cont = _tokens(13, (b, n_new))
    full_tokens = np.concatenate([prompt, cont], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones((b, n_new), bool)], axis=1)
    full = np.asarray(_forward(model, jnp.asarray(full_tokens), jnp.asarray(full_mask)))
    positions = np.asarray(default_positions(jnp.asarray(full_mask)))

    cache = model.init_cache(b, max_len)
    assert cache.k.shape == (2, b, max_len, 2, model.config.head_dim)
    cache_mask = np.zeros((b, max_len), bool)
    cache_mask[:, :p] = prompt_mask
    logits, cache = _decode(model, jnp.asarray(prompt), jnp.asarray(positions[:, :p]), cache, jnp.asarray(cache_mask),
                         jnp.int32(0))
    m = prompt_mask
    np.testing.assert_allclose(np.asarray(logits)[m], full[:, :p][m], atol=TOL, rtol=0)
    for s in range(n_new):
        cache_mask[:, p + s] = True
        logits, cache = _decode(model, jnp.asarray(cont[:, s:s + 1]), jnp.asarray(positions[:, p + s:p + s + 1]),
                             cache, jnp.asarray(cache_mask), jnp.int32(p + s))
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, p + s], atol=TOL, rtol=0)


def test_decode_chunk_after_prefill(hf_checkpoints):
    """S > 1 new tokens at index > 0 (chunked prefill): causal inside the chunk, full view of the cache."""
    model, _ = load_pretrained(hf_checkpoints["qwen2-untied"].path)
    tokens = _tokens(20, (2, 10))
    full = np.asarray(_forward(model, jnp.asarray(tokens)))
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    cache_mask = jnp.ones((2, 10), bool)
    cache = model.init_cache(2, 10)
    _, cache = _decode(model, jnp.asarray(tokens[:, :4]), pos[:, :4], cache, cache_mask, jnp.int32(0))
    logits, _ = _decode(model, jnp.asarray(tokens[:, 4:]), pos[:, 4:], cache, cache_mask, jnp.int32(4))
    np.testing.assert_allclose(np.asarray(logits), full[:, 4:], atol=TOL, rtol=0)


def test_init_model_runs_in_bf16():
    from capojax.models import PRESETS

    model = init_model(PRESETS["tiny-bench"], seed=1, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nnx.state(model)))
    logits = _forward(model, jnp.asarray(_tokens(7, (2, 5))))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 5, 1024) and jnp.isfinite(logits).all()
    same = init_model(PRESETS["tiny-bench"], seed=1, dtype=jnp.bfloat16)
    other = init_model(PRESETS["tiny-bench"], seed=2, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(same.embed[...], model.embed[...])
    assert not np.array_equal(other.embed[...], model.embed[...])
