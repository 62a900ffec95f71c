"""The JAX KV-cache sampler against teacher-forced forward passes of the same tiny random Qwen."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from capojax.models import Qwen, QwenConfig, init_model
from capojax.rollout import JaxRolloutEngine, Rollout, RolloutEngine, SamplingParams, process_logits, sample
from capojax.rollout.sampler import _cpu_tuned_jit, _sample_jit, pad_prompts

PAD = 0
# Different lengths, left-padded to 8. Four prompts and P = 8 are also the engine's bucket shapes (batch 4,
# min_prompt_bucket=8), so engine and functional tests share compiled samplers (compiles dominate the runtime).
PROMPTS = [[5, 9, 17, 33, 2], [7, 8, 9, 10, 11, 12, 13, 14], [40, 41, 3], [60, 61, 62, 63, 64, 65]]
T = 8

CONFIG = QwenConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, tie_word_embeddings=True, qkv_bias=True, max_position_embeddings=256)


@jax.jit
def _redraw(state, seed):
    """Every matrix redrawn from normal(0, 0.5) (init_model's 0.02 gives nearly uniform next-token distributions;
    0.5 gives peaked ones: distinct argmaxes, varied samples); norms and biases kept. One flat draw, because a
    separate draw per leaf makes XLA compile one RNG kernel per leaf."""
    leaves, tree = jax.tree.flatten(state)
    sizes = [x.size if x.ndim >= 2 else 0 for x in leaves]
    flat = 0.5 * jax.random.normal(jax.random.key(seed), (sum(sizes),))
    out, offset = [], 0
    for x, size in zip(leaves, sizes):
        out.append(flat[offset:offset + size].reshape(x.shape).astype(x.dtype) if size else x)
        offset += size
    return jax.tree.unflatten(tree, out)


@functools.cache
def _base():
    return nnx.split(init_model(CONFIG, seed=0))


def make_model(seed: int = 0):
    graphdef, state = _base()
    return nnx.merge(graphdef, _redraw(state, seed))


@nnx.jit
def _forward(model, tokens, mask):
    return model(tokens, attention_mask=mask)


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def batch():
    tokens, mask = pad_prompts(PROMPTS, 8, PAD)
    return jnp.asarray(tokens), jnp.asarray(mask)


def teacher_forced_logits(model, prompt_tokens, prompt_mask, completion, n):
    """Full forward over [left-padded prompt | completion] -> logits f32[N, T, V] that scored each completion
    token (the logits at the position before it)."""
    tokens = jnp.concatenate([jnp.repeat(prompt_tokens, n, axis=0), completion], axis=1)
    mask = jnp.concatenate([jnp.repeat(prompt_mask, n, axis=0), jnp.ones(completion.shape, bool)], axis=1)
    logits = _forward(model, tokens, mask)
    p = prompt_tokens.shape[1]
    return logits[:, p - 1:-1]


def picked(logp, tokens):
    return np.take_along_axis(np.asarray(logp), np.asarray(tokens)[..., None], axis=-1)[..., 0]


def completion_mask(out):
    return np.arange(out.tokens.shape[1])[None, :] < np.asarray(out.lengths)[:, None]


def reference_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Row by row, in plain numpy: divide by T, keep the k largest, then the shortest most-likely prefix whose
    probability mass reaches top_p; everything else -> -inf."""
    out = np.full_like(logits, -np.inf, dtype=np.float64)
    for idx in np.ndindex(logits.shape[:-1]):
        x = logits[idx].astype(np.float64) / temperature
        order = np.argsort(-x, kind="stable")
        if top_k > 0:
            order = order[:top_k]
        p = np.exp(x[order] - x[order].max())
        p /= p.sum()
        kept, mass = [], 0.0
        for token, prob in zip(order, p):
            kept.append(token)
            mass += prob
            if mass >= top_p:
                break
        out[idx][kept] = x[kept]
    return out


def test_temperature_one_logprobs_equal_teacher_forced(model, batch):
    tokens, mask = batch
    n = 2
    out = sample(model, tokens, mask, SamplingParams(n=n, max_new_tokens=T, seed=3), eos_ids=(1,), pad_id=PAD)
    assert out.tokens.shape == (len(PROMPTS) * n, T)
    logits = teacher_forced_logits(model, tokens, mask, out.tokens, n)
    expected = picked(jax.nn.log_softmax(logits, axis=-1), out.tokens)
    m = completion_mask(out)
    assert m[:, 0].all()
    np.testing.assert_allclose(np.asarray(out.logprobs)[m], expected[m], atol=1e-4, rtol=0)
    assert np.all(np.asarray(out.logprobs)[~m] == 0)


def test_generation_across_cache_segments_equals_teacher_forced(model, batch):
    """A 128-slot buffer decodes in 4 segments whose caches grow by 32 slots each; 70 tokens stop inside the
    third segment. Every log-prob must still equal the full forward's."""
    from capojax.rollout.sampler import _segment_ends

    assert _segment_ends(128) == [32, 64, 96, 128] and _segment_ends(8) == [8]
    tokens, mask = batch
    out = sample(model, tokens, mask, SamplingParams(n=1, max_new_tokens=70, seed=8), pad_id=PAD, buffer_len=128)
    assert np.all(np.asarray(out.lengths) == 70)
    logits = teacher_forced_logits(model, tokens, mask, out.tokens[:, :70], 1)
    expected = picked(jax.nn.log_softmax(logits, axis=-1), out.tokens[:, :70])
    np.testing.assert_allclose(np.asarray(out.logprobs)[:, :70], expected, atol=1e-4, rtol=0)
    assert np.all(np.asarray(out.logprobs)[:, 70:] == 0) and np.all(np.asarray(out.tokens)[:, 70:] == PAD)


@pytest.mark.parametrize("variant,cpu_tuned", [("qwen2", False), ("qwen3", True), ("qwen3", False),
                                               ("qwen2_untied", True), ("groups_of_4", True)])
def test_other_architectures_logprobs_equal_teacher_forced(batch, variant, cpu_tuned):
    """The decode step re-lays the weights out per architecture (biases, q/k norms, untied head, query groups),
    CPU-tuned (fused matrices, per-member attention products: the CPU default) or not (the accelerator
    default): each against the full forward."""
    import dataclasses

    extra = {"qwen2": {}, "qwen3": dict(qkv_bias=False, qk_norm=True, head_dim=16),
             "qwen2_untied": dict(tie_word_embeddings=False), "groups_of_4": dict(num_heads=8, head_dim=4)}[variant]
    config = dataclasses.replace(CONFIG, **extra)
    graphdef, state = nnx.split(init_model(config, seed=1))
    other = nnx.merge(graphdef, _redraw(state, 5))
    tokens, mask = batch
    out = sample(other, tokens, mask, SamplingParams(n=1, max_new_tokens=T, seed=2), pad_id=PAD,
                 cpu_tuned=cpu_tuned)
    logits = teacher_forced_logits(other, tokens, mask, out.tokens, 1)
    expected = picked(jax.nn.log_softmax(logits, axis=-1), out.tokens)
    np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 6, 0.9)])
def test_sample_frequencies_match_the_distribution(model, temperature, top_k, top_p):
    """Many draws of the first token of one prompt: each token's frequency is within 5 binomial standard
    deviations (plus 2 counts, for the rare tokens where the normal approximation fails) of its probability
    under the processed distribution, and removed tokens never appear."""
    draws = 4096
    prompt = jnp.asarray([PROMPTS[0]])
    params = SamplingParams(n=draws, max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, seed=9)
    out = sample(model, prompt, jnp.ones(prompt.shape, bool), params, pad_id=PAD)
    logits = np.asarray(_forward(model, prompt, jnp.ones(prompt.shape, bool)))[0, -1]
    filtered = reference_filter(logits[None], temperature, top_k, top_p)[0]
    probs = np.exp(filtered - filtered.max())
    probs /= probs.sum()
    assert 3 <= (probs > 0.01).sum(), "the test needs a spread-out distribution"
    freq = np.bincount(np.asarray(out.tokens)[:, 0], minlength=probs.size) / draws
    assert freq[probs == 0].sum() == 0, "sampled a token the filters removed"
    np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / draws) + 2 / draws)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.3, 5, 1.0), (0.8, 0, 0.6), (1.0, 4, 0.7)])
def test_processed_logprobs_equal_reference_filter(model, batch, temperature, top_k, top_p):
    tokens, mask = batch
    params = SamplingParams(n=2, max_new_tokens=T, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    out = sample(model, tokens, mask, params, pad_id=PAD)
    logits = np.asarray(teacher_forced_logits(model, tokens, mask, out.tokens, 2))
    filtered = reference_filter(logits, temperature, top_k, top_p)
    m = completion_mask(out)
    assert np.isfinite(picked(filtered, out.tokens)[m]).all(), "sampled a token the filters removed"
    lse = np.log(np.sum(np.exp(filtered - filtered.max(-1, keepdims=True)), -1)) + filtered.max(-1)
    expected = picked(filtered, out.tokens) - lse
    np.testing.assert_allclose(np.asarray(out.logprobs)[m], expected[m], atol=1e-4, rtol=0)
    if top_k or top_p < 1:  # the filters must actually remove tokens here, or the test proves nothing
        assert np.isinf(filtered).any()


def test_process_logits_matches_reference():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    process = jax.jit(process_logits)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.5, 7, 1.0), (2.0, 0, 0.3), (1.0, 10, 0.5), (1.0, 1, 1.0)]:
        got = np.asarray(process(logits, jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p)))
        want = reference_filter(np.asarray(logits), temperature, top_k, top_p)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], atol=1e-5, rtol=0)


def test_greedy_equals_teacher_forced_argmax(model, batch):
    tokens, mask = batch
    out = sample(model, tokens, mask, SamplingParams(max_new_tokens=T, temperature=0.0), pad_id=PAD)
    logits = teacher_forced_logits(model, tokens, mask, out.tokens, 1)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(jnp.argmax(logits, -1)))
    # greedy reports the model's own log-probs (the point mass would only say 0)
    np.testing.assert_allclose(np.asarray(out.logprobs), picked(jax.nn.log_softmax(logits, -1), out.tokens),
                               atol=1e-4, rtol=0)
    assert np.all(np.asarray(out.lengths) == T) and not np.asarray(out.finished).any()


def test_left_padded_batch_equals_each_prompt_alone(model, batch):
    tokens, mask = batch
    together = sample(model, tokens, mask, SamplingParams(max_new_tokens=T, temperature=0.0), pad_id=PAD)
    for i in (0, 2):  # the two most padded rows (each length compiles its own sampler)
        prompt = PROMPTS[i]
        alone = sample(model, jnp.asarray([prompt]), jnp.ones((1, len(prompt)), bool),
                       SamplingParams(max_new_tokens=T, temperature=0.0), pad_id=PAD)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(together.tokens[i]))
        np.testing.assert_allclose(np.asarray(alone.logprobs[0]), np.asarray(together.logprobs[i]), atol=1e-4)


def test_stop_tokens_end_rows(model, batch):
    tokens, mask = batch
    free = sample(model, tokens, mask, SamplingParams(max_new_tokens=T, temperature=0.0), pad_id=PAD)
    free_tokens = np.asarray(free.tokens)
    stop = int(free_tokens[0, 2])  # row 0 emits this at step 2 (or earlier); other rows may or may not
    out = sample(model, tokens, mask, SamplingParams(max_new_tokens=T, temperature=0.0, stop_token_ids=(stop,)),
                 pad_id=PAD)
    got = np.asarray(out.tokens)
    for r in range(len(PROMPTS)):
        hits = np.flatnonzero(free_tokens[r] == stop)
        if hits.size:
            end = hits[0] + 1
            assert bool(out.finished[r]) and int(out.lengths[r]) == end
            np.testing.assert_array_equal(got[r, :end], free_tokens[r, :end])  # stop token included
            assert np.all(got[r, end:] == PAD) and np.all(np.asarray(out.logprobs)[r, end:] == 0)
        else:
            assert not bool(out.finished[r]) and int(out.lengths[r]) == T
            np.testing.assert_array_equal(got[r], free_tokens[r])
    assert bool(out.finished[0]) and int(out.lengths[0]) <= 3


def test_all_rows_stop_early(model):
    """When every row has stopped the loop exits; the unused columns stay padding."""
    prompt = jnp.asarray([PROMPTS[0]])
    free = sample(model, prompt, jnp.ones_like(prompt, bool), SamplingParams(max_new_tokens=T, temperature=0.0))
    first = int(free.tokens[0, 0])
    out = sample(model, prompt, jnp.ones_like(prompt, bool),
                 SamplingParams(max_new_tokens=T, temperature=0.0, stop_token_ids=(first,)), pad_id=PAD)
    assert int(out.lengths[0]) == 1 and bool(out.finished[0])
    assert np.all(np.asarray(out.tokens[0, 1:]) == PAD)


def test_seed_reproducible_and_different_seeds_differ(model, batch):
    tokens, mask = batch
    a = sample(model, tokens, mask, SamplingParams(n=2, max_new_tokens=T, seed=5), pad_id=PAD)
    b = sample(model, tokens, mask, SamplingParams(n=2, max_new_tokens=T, seed=5), pad_id=PAD)
    c = sample(model, tokens, mask, SamplingParams(n=2, max_new_tokens=T, seed=6), pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


@pytest.fixture(scope="module")
def engine(model):
    return JaxRolloutEngine(model, pad_id=PAD, eos_ids=(1,), min_prompt_bucket=8, min_new_bucket=8)


def test_engine_rollout_layout_and_max_new_tokens(engine, model, batch):
    """Prompt-major rows equal to the functional core's; max_new_tokens=5 cuts the 8-column bucket to 5 and
    stops generation there (the teacher-forced test checks that row r continues prompt r // n)."""
    assert isinstance(engine, RolloutEngine)
    n, max_new = 2, 5
    params = SamplingParams(n=n, max_new_tokens=max_new, seed=2)
    ro = engine.generate(PROMPTS, params)
    assert isinstance(ro, Rollout) and ro.num_rows == len(PROMPTS) * n
    assert ro.tokens.shape == ro.logprobs.shape == ro.mask.shape == (len(PROMPTS) * n, max_new)
    np.testing.assert_array_equal(ro.prompt_index, np.repeat(np.arange(len(PROMPTS)), n))
    np.testing.assert_array_equal(ro.mask, np.arange(max_new)[None] < ro.lengths[:, None])
    assert np.all(ro.tokens[~ro.mask] == PAD) and np.all(ro.logprobs[~ro.mask] == 0)
    assert np.all(ro.lengths[~ro.finished] == max_new)
    tokens, mask = batch
    out = sample(model, tokens, mask, params, eos_ids=(1,), pad_id=PAD, buffer_len=8)
    assert np.all(np.asarray(out.tokens)[:, max_new:] == PAD), "generation must stop at max_new_tokens"
    np.testing.assert_array_equal(ro.tokens, np.asarray(out.tokens)[:, :max_new])
    np.testing.assert_allclose(ro.logprobs, np.asarray(out.logprobs)[:, :max_new], atol=1e-6)
    # the two samples of a prompt are distinct draws
    groups = ro.tokens.reshape(len(PROMPTS), n, max_new)
    assert any(not np.array_equal(g[0], g[1]) for g in groups)


def test_engine_batch_padding_does_not_change_rows(engine):
    """3 prompts are padded to a batch of 4 with a filler prompt; the real rows equal those of the 4-prompt call."""
    params = SamplingParams(n=2, max_new_tokens=T, seed=9)
    three = engine.generate(PROMPTS[:3], params)
    four = engine.generate(PROMPTS, params)
    assert three.num_rows == 6
    np.testing.assert_array_equal(three.tokens, four.tokens[:6])
    np.testing.assert_array_equal(three.logprobs, four.logprobs[:6])


def test_update_weights_swaps_params_without_recompiling():
    model_a, model_b = make_model(0), make_model(1)
    engine = JaxRolloutEngine(model_a, pad_id=PAD, min_prompt_bucket=8, min_new_bucket=8)
    params = SamplingParams(max_new_tokens=T, temperature=0.0)
    before = engine.generate(PROMPTS, params)
    sampler_jit = _cpu_tuned_jit() if jax.default_backend() == "cpu" else _sample_jit  # the one the engine uses
    compiled = sampler_jit._cache_size()
    metrics = engine.update_weights(nnx.state(model_b))
    assert metrics["timing/sync"] >= 0
    after = engine.generate(PROMPTS, params)
    assert sampler_jit._cache_size() == compiled, "update_weights must not trigger a recompile"
    expected = JaxRolloutEngine(model_b, pad_id=PAD, min_prompt_bucket=8, min_new_bucket=8).generate(PROMPTS, params)
    np.testing.assert_array_equal(after.tokens, expected.tokens)
    assert not np.array_equal(after.tokens, before.tokens)
    with pytest.raises(ValueError, match="shape"):
        bad = nnx.eval_shape(lambda: Qwen(CONFIG.replace(hidden_size=16, intermediate_size=32), rngs=nnx.Rngs(0)))
        engine.update_weights(nnx.state(bad))
    engine.close()
    with pytest.raises(RuntimeError, match="close"):
        engine.generate(PROMPTS, params)


def test_sharded_engine_equals_single_device(model):
    from capojax.sharding import make_mesh, shard_model

    mesh = make_mesh(4, 2)
    sharded = shard_model(make_model(0), mesh)
    params = SamplingParams(n=2, max_new_tokens=T, seed=4)
    kw = dict(pad_id=PAD, eos_ids=(1,), min_prompt_bucket=8, min_new_bucket=8)
    got = JaxRolloutEngine(sharded, mesh=mesh, **kw).generate(PROMPTS, params)
    want = JaxRolloutEngine(model, **kw).generate(PROMPTS, params)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


def test_bad_inputs_have_clear_errors(engine, model):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2], []], SamplingParams())
    with pytest.raises(ValueError, match="at least one real token"):
        sample(model, jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), bool), SamplingParams())
    with pytest.raises(ValueError, match="stop ids"):
        sample(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), bool),
               SamplingParams(stop_token_ids=tuple(range(40))))


def test_cpu_compiler_options_fall_back_to_the_defaults_when_rejected(caplog):
    """The CPU options are experimental XLA flags: a jaxlib that does not know them must still sample."""
    from capojax.rollout.sampler import _CPU_COMPILER_OPTIONS, _jit_with_compiler_options

    assert _jit_with_compiler_options({"xla_cpu_no_such_option_for_the_test": True}) is _sample_jit
    assert "rejected the sampler's compiler options" in caplog.text
    assert _jit_with_compiler_options(_CPU_COMPILER_OPTIONS) is not _sample_jit  # this jaxlib accepts the real ones


@settings(max_examples=40, deadline=None)
@given(vocab=st.sampled_from([1, 2, 7, 64, 100, 1000]), zero_share=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_inverse_cdf_picks_the_interval_holding_u_and_never_a_zero_weight(vocab, zero_share, seed):
    """The two-level pick against a float64 flat CDF: index i is picked iff u * total falls in
    [CDF(i-1), CDF(i)), up to float32 rounding at the interval ends; zero weights (filtered tokens) never."""
    from capojax.rollout.sampler import _inverse_cdf

    rng = np.random.default_rng(seed)
    weights = rng.exponential(size=(64, vocab)) * (rng.random((64, vocab)) >= zero_share)
    weights[np.arange(64), rng.integers(0, vocab, 64)] += 1e-3  # every row needs a positive entry
    weights = weights.astype(np.float32)
    u = rng.uniform(np.finfo(np.float32).tiny, 1.0, 64).astype(np.float32)
    index, total = map(np.asarray, _inverse_cdf(jnp.asarray(weights), jnp.asarray(u)))
    rows = np.arange(64)
    assert np.all(weights[rows, index] > 0)
    w64 = weights.astype(np.float64)
    np.testing.assert_allclose(total, w64.sum(-1), rtol=1e-5)
    cdf = np.cumsum(w64, axis=-1)
    target = u * w64.sum(-1)
    slack = 1e-5 * w64.sum(-1)
    assert np.all(cdf[rows, index] - w64[rows, index] <= target + slack)
    assert np.all(target <= cdf[rows, index] + slack)


# ------------------------------------------------------------------------------------------ presence penalty


def test_presence_penalty_hand_computed():
    """logits [2, 1, .5, 0], token 0 already generated, penalty 1.5: [.5, 1, .5, 0]; then temperature .5:
    [1, 2, 1, 0]; top-k 2 keeps the ties at the 2nd largest: [1, 2, 1, -inf]. Greedy picks token 1 (not 0)."""
    from capojax.rollout import apply_presence_penalty
    from capojax.rollout.sampler import _select

    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0]])
    generated = jnp.asarray([[True, False, False, False]])
    penalised = apply_presence_penalty(logits, generated, jnp.float32(1.5))
    np.testing.assert_array_equal(np.asarray(penalised), [[0.5, 1.0, 0.5, 0.0]])
    processed = np.asarray(process_logits(penalised, jnp.float32(0.5), jnp.int32(2), jnp.float32(1.0)))
    np.testing.assert_array_equal(processed, [[1.0, 2.0, 1.0, -np.inf]])
    # u = 0.99 lies in the last kept token's CDF interval [e + e^2, 2e + e^2) / (2e + e^2): token 2
    tokens, logprobs = _select(penalised, jnp.asarray([0.99]), jnp.float32(0.5), jnp.int32(2), jnp.float32(1.0),
                               greedy=False, use_filter=True)
    assert int(tokens[0]) == 2
    np.testing.assert_allclose(float(logprobs[0]), 1.0 - np.log(2 * np.e + np.e**2), atol=1e-6)
    tokens, logprobs = _select(penalised, jnp.asarray([0.5]), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0),
                               greedy=True, use_filter=False)
    assert int(tokens[0]) == 1  # the unpenalised argmax is token 0
    np.testing.assert_allclose(float(logprobs[0]), 1.0 - np.log(2 * np.exp(0.5) + np.e + 1.0), atol=1e-6)


def generated_before(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """bool[N, T, V]: token v was generated by row r before step t (the rows' own tokens only, not the prompt)."""
    n, t = tokens.shape
    seen = np.zeros((n, t, vocab), bool)
    for r in range(n):
        for s in range(1, t):
            seen[r, s] = seen[r, s - 1]
            seen[r, s, tokens[r, s - 1]] = True
    return seen


@pytest.mark.parametrize("temperature,top_k,top_p,penalty", [(0.0, 0, 1.0, 1.5), (1.0, 0, 1.0, 1.5),
                                                             (0.8, 5, 0.9, 1.5), (1.0, 0, 1.0, -1.0)])
def test_presence_penalty_logprobs_equal_reference(model, batch, temperature, top_k, top_p, penalty):
    """Against teacher-forced logits: at step t, logits - penalty * [token generated before t] (vLLM's
    definition), then temperature / top-k / top-p. Tokens are drawn from, and log-probs reported under, that
    penalised distribution (vLLM's processed log-probs); greedy is its argmax with log_softmax of the
    penalised logits."""
    tokens, mask = batch
    steps = 16
    n = 1 if temperature == 0 else 2
    params = SamplingParams(n=n, max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p,
                            presence_penalty=penalty, seed=13)
    out = sample(model, tokens, mask, params, pad_id=PAD)
    logits = np.asarray(teacher_forced_logits(model, tokens, mask, out.tokens, n), np.float64)
    sampled = np.asarray(out.tokens)
    seen = generated_before(sampled, CONFIG.vocab_size)
    penalised = logits - penalty * seen
    assert np.all(np.asarray(out.lengths) == steps)

    def reference_logprobs(x):
        if temperature == 0:
            return picked(x - np.log(np.exp(x).sum(-1, keepdims=True)), sampled)
        filtered = reference_filter(x, temperature, top_k, top_p)
        lse = np.log(np.sum(np.exp(filtered - filtered.max(-1, keepdims=True)), -1)) + filtered.max(-1)
        return picked(filtered, sampled) - lse

    if temperature == 0:
        np.testing.assert_array_equal(sampled, np.argmax(penalised, -1))
        assert not np.array_equal(sampled, np.argmax(logits, -1)), "the penalty changed no greedy choice"
    expected = reference_logprobs(penalised)
    assert np.isfinite(expected).all(), "sampled a token the filters removed"
    np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=1e-4, rtol=0)
    # the check can tell: the unpenalised distribution gives other log-probs for the same tokens
    assert np.nanmax(np.abs(reference_logprobs(logits) - expected)) > 0.05
    if penalty < 0:
        assert any(len(set(row)) < steps for row in sampled.tolist()), "a bonus for repeats should repeat"


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), temperature=st.sampled_from([0.0, 1.0]), penalty=st.floats(1e4, 1e8))
def test_huge_presence_penalty_never_repeats_a_generated_token(model, batch, seed, temperature, penalty):
    tokens, mask = batch
    params = SamplingParams(n=1, max_new_tokens=16, temperature=temperature, presence_penalty=penalty, seed=seed)
    out = sample(model, tokens, mask, params, pad_id=PAD)
    for row in np.asarray(out.tokens).tolist():
        assert len(set(row)) == len(row), row


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (0.8, 5)])
def test_zero_presence_penalty_is_the_unpenalised_sampler(model, batch, temperature, top_k):
    """presence_penalty=0 (the default) compiles the sampler without the penalty (bit-identical to it by
    construction); the penalty's own code path at 0 gives the same tokens and log-probs too."""
    from capojax.rollout.sampler import _stop_array

    tokens, mask = batch
    params = SamplingParams(n=2, max_new_tokens=T, temperature=temperature, top_k=top_k, seed=21)
    assert params.presence_penalty == 0.0
    default = sample(model, tokens, mask, params, pad_id=PAD)
    graphdef, state = nnx.split(model)
    cpu_tuned = jax.default_backend() == "cpu"
    penalised_path = (_cpu_tuned_jit() if cpu_tuned else _sample_jit)(
        graphdef, state, tokens, mask, jax.random.key(params.seed), jnp.float32(temperature or 1.0),
        jnp.int32(top_k), jnp.float32(1.0), jnp.int32(T), jnp.asarray(_stop_array(())), jnp.int32(PAD),
        jnp.float32(0.0), n=2, buffer_len=T, greedy=temperature == 0, use_filter=top_k > 0, penalize=True,
        cpu_tuned=cpu_tuned, mesh=None)
    np.testing.assert_array_equal(np.asarray(penalised_path.tokens), np.asarray(default.tokens))
    np.testing.assert_array_equal(np.asarray(penalised_path.logprobs), np.asarray(default.logprobs))


def test_presence_penalty_must_be_finite():
    with pytest.raises(ValueError, match="presence_penalty must be finite"):
        SamplingParams(presence_penalty=float("inf"))
