"""The PPO update: micro-batch accumulation is exact, non-finite updates are skipped, log-probs are the model's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from capojax.models import PRESETS, init_model
from capojax.objectives import get_algorithm
from capojax.trainer.logprobs import chunk_count, make_logprob_fn
from capojax.trainer.update import make_update_fn

CONFIG = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                       num_kv_heads=1, head_dim=32, vocab_size=97)


@pytest.fixture(scope="module")
def model():
    return init_model(CONFIG, seed=3)


def _minibatch(rows=8, P=4, T=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, rows)
    plens = rng.integers(1, P + 1, rows)
    input_ids = rng.integers(1, CONFIG.vocab_size, (rows, P + T)).astype(np.int32)
    attention = np.zeros((rows, P + T), bool)
    for r in range(rows):
        attention[r, P - plens[r] : P + lengths[r]] = True
    response = np.arange(T)[None] < lengths[:, None]
    positions = np.maximum(np.cumsum(attention, 1) - 1, 0).astype(np.int32)
    return {
        "input_ids": jnp.asarray(input_ids), "attention_mask": jnp.asarray(attention),
        "positions": jnp.asarray(positions), "response_mask": jnp.asarray(response),
        "old_logp": jnp.asarray(-rng.uniform(0.5, 3.0, (rows, T)).astype(np.float32) * response),
        "advantages": jnp.asarray(rng.normal(size=(rows, T)).astype(np.float32) * response),
    }


@pytest.mark.parametrize("algo", ["grpo", "dcpo"])  # seq-mean-token-mean and token-mean aggregations
def test_micro_batches_accumulate_to_the_one_shot_update(model, algo):
    graphdef, params = nnx.split(model)
    objective = get_algorithm(algo).objective()
    token_mean = get_algorithm(algo).loss_hparams["agg"] == "token-mean"
    sgd = optax.sgd(1.0)
    batch = _minibatch()
    results = []
    for micro in (1, 4):
        fn = make_update_fn(graphdef, sgd, objective, temperature=1.0, micro_batches=micro, weight_by_tokens=token_mean)
        p = jax.tree.map(jnp.copy, params)
        new_params, _, metrics = fn(p, sgd.init(p), batch)
        results.append((new_params, metrics))
    chex.assert_trees_all_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], atol=1e-5, rtol=1e-5)
    assert float(results[0][1]["update/skipped"]) == 0.0


def test_non_finite_loss_leaves_params_and_optimizer_untouched(model):
    graphdef, params = nnx.split(model)
    adam = optax.adam(1e-2)
    fn = make_update_fn(graphdef, adam, get_algorithm("grpo").objective(), temperature=1.0)
    batch = _minibatch()
    batch["advantages"] = batch["advantages"].at[0, 0].set(jnp.nan)
    p = jax.tree.map(jnp.copy, params)
    before = jax.tree.map(np.asarray, p)
    opt_state = adam.init(p)
    opt_before = jax.tree.map(np.asarray, opt_state)
    new_params, new_opt, metrics = fn(p, opt_state, batch)
    assert float(metrics["update/skipped"]) == 1.0
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, new_params), before)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, new_opt), opt_before)


def test_logprob_pass_equals_the_model_forward(model):
    graphdef, params = nnx.split(model)
    batch = _minibatch(rows=4, seed=1)
    P = batch["input_ids"].shape[1] - batch["response_mask"].shape[1]
    fn = make_logprob_fn(graphdef, temperature=0.7, rows_per_chunk=2)
    logp, entropy = fn(params, batch["input_ids"], batch["attention_mask"], batch["positions"], prompt_len=P)
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], positions=batch["positions"]) / 0.7
    expected = jax.nn.log_softmax(logits, -1)[:, P - 1 : -1]
    expected_logp = jnp.take_along_axis(expected, batch["input_ids"][:, P:, None], -1)[..., 0]
    np.testing.assert_allclose(logp, expected_logp, atol=1e-5)
    np.testing.assert_allclose(entropy, -(jnp.exp(expected) * expected).sum(-1), atol=1e-5)


@pytest.mark.parametrize("rows,per_chunk,expected", [(8, None, 1), (8, 8, 1), (8, 3, 4), (8, 2, 4), (12, 5, 3), (7, 2, 7)])
def test_chunk_count_divides_rows_within_the_cap(rows, per_chunk, expected):
    k = chunk_count(rows, per_chunk)
    assert k == expected and rows % k == 0


def test_bf16_params_accumulate_in_f32_and_update(model):
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.split(model)[1])
    graphdef = nnx.split(model)[0]
    sgd = optax.sgd(1e-2)
    fn = make_update_fn(graphdef, sgd, get_algorithm("grpo").objective(), temperature=1.0, micro_batches=2)
    new_params, _, metrics = fn(jax.tree.map(jnp.copy, bf16), sgd.init(bf16), _minibatch())
    assert float(metrics["update/skipped"]) == 0.0
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new_params))
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), new_params, bf16))
    assert any(changed)


def test_update_without_entropy_skips_it_and_changes_nothing_else(model):
    graphdef, params = nnx.split(model)
    sgd = optax.sgd(1.0)
    objective = get_algorithm("grpo").objective()  # entropy_coef 0: the entropy is only a metric
    batch = _minibatch()
    results = []
    for with_entropy in (True, False):
        fn = make_update_fn(graphdef, sgd, objective, temperature=1.0, with_entropy=with_entropy)
        p = jax.tree.map(jnp.copy, params)
        results.append(fn(p, sgd.init(p), batch))
    chex.assert_trees_all_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    assert "entropy" in results[0][2] and "entropy" not in results[1][2]
    np.testing.assert_allclose(results[0][2]["loss"], results[1][2]["loss"], atol=1e-6)


@pytest.mark.parametrize("micro", [1, 2])
def test_on_policy_update_takes_the_old_logprobs_from_its_forward(model, micro):
    """Without "old_logp" the update uses its own forward's log-probs, detached (ratio 1): the same step as with
    old log-probs from a separate pass at the same parameters, and it returns those log-probs, rows in order."""
    graphdef, params = nnx.split(model)
    sgd = optax.sgd(1.0)  # Adam's first step is sign-like: it would amplify 1e-7 differences
    objective = get_algorithm("grpo").objective()
    batch = _minibatch(seed=2)
    P = batch["input_ids"].shape[1] - batch["response_mask"].shape[1]
    old_logp, entropy = make_logprob_fn(graphdef, temperature=0.8)(
        params, batch["input_ids"], batch["attention_mask"], batch["positions"], prompt_len=P)
    with_pass = make_update_fn(graphdef, sgd, objective, temperature=0.8, micro_batches=micro, with_entropy=False)
    fused = make_update_fn(graphdef, sgd, objective, temperature=0.8, micro_batches=micro, returns_logprobs=True)
    p = jax.tree.map(jnp.copy, params)
    expected_params, _, expected = with_pass(p, sgd.init(p), dict(batch, old_logp=old_logp))
    without_old = {k: v for k, v in batch.items() if k != "old_logp"}
    p = jax.tree.map(jnp.copy, params)
    new_params, _, metrics, (logp, ent) = fused(p, sgd.init(p), without_old)
    chex.assert_trees_all_close(new_params, expected_params, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], expected["loss"], atol=1e-6)
    np.testing.assert_allclose(logp, old_logp, atol=1e-5)
    np.testing.assert_allclose(ent, entropy, atol=1e-5)
    assert float(metrics["clip_frac"]) == 0.0  # ratio exactly 1: nothing clipped


def test_estimators_that_read_the_policy_logprobs_are_known():
    from capojax.objectives import estimator_reads_policy_logprobs

    assert [name for name in ("grpo", "capo", "pairwise", "dcpo") if estimator_reads_policy_logprobs(name)] == [
        "capo", "pairwise"]
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        estimator_reads_policy_logprobs("nope")
