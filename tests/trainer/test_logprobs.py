"""The one teacher-forced log-prob pass: time chunks and the entropy switch change nothing but memory and work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax.models import PRESETS, init_model
from capojax.trainer.logprobs import completion_logprobs, make_logprob_fn

CONFIG = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                       num_kv_heads=1, head_dim=32, vocab_size=97)
P, T = 5, 11  # T is no multiple of the time chunks below: the last chunk is padded, then dropped


@pytest.fixture(scope="module")
def model():
    return init_model(CONFIG, seed=5)


def _batch(rows=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, (rows, P + T)).astype(np.int32)
    mask = np.ones((rows, P + T), bool)
    mask[1, :2] = False  # a left-padded prompt
    mask[2, P + 7 :] = False  # a short completion
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return ids, mask, positions


@pytest.mark.parametrize("time_chunk", [1, 4, 5, 10])
def test_time_chunks_give_the_whole_pass(model, time_chunk):
    ids, mask, positions = _batch()
    whole = completion_logprobs(model, ids, mask, positions, prompt_len=P, temperature=0.8)
    chunked = completion_logprobs(model, ids, mask, positions, prompt_len=P, temperature=0.8, time_chunk=time_chunk)
    assert chunked[0].shape == chunked[1].shape == (4, T)
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-5)
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-5)


def test_time_chunked_pass_equals_the_model_forward(model):
    ids, mask, positions = _batch(seed=1)
    graphdef, params = nnx.split(model)
    fn = make_logprob_fn(graphdef, temperature=1.0, rows_per_chunk=2, with_entropy=False, time_chunk=4)
    logp, entropy = fn(params, ids, mask, positions, prompt_len=P)
    assert entropy is None
    logits = jax.nn.log_softmax(model(ids, attention_mask=mask, positions=positions), -1)[:, P - 1 : -1]
    np.testing.assert_allclose(logp, jnp.take_along_axis(logits, ids[:, P:, None], -1)[..., 0], atol=1e-5)


def test_the_entropy_switch_leaves_the_log_probs_alone(model):
    ids, mask, positions = _batch(seed=2)
    with_entropy = completion_logprobs(model, ids, mask, positions, prompt_len=P)
    without = completion_logprobs(model, ids, mask, positions, prompt_len=P, with_entropy=False)
    assert without[1] is None
    np.testing.assert_array_equal(without[0], with_entropy[0])
