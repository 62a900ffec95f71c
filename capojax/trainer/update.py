"""One PPO update on a mini-batch: gradient accumulation over micro-batches, clipping, a guard against
non-finite values, and the optax step. Pure and jitted; the objective is injected, so this module knows
nothing about which algorithm is trained.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from capojax.sharding import activation_mesh
from capojax.trainer.logprobs import completion_logprobs, split_rows

# objective(logp f32[n,T], entropy f32[n,T], minibatch dict) -> (loss scalar, metrics dict of scalars)
Objective = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def _tree_where(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make_update_fn(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    *,
    temperature: float,
    micro_batches: int = 1,
    weight_by_tokens: bool = False,
    mesh: Mesh | None = None,
    with_entropy: bool = True,
    returns_logprobs: bool = False,
):
    """Returns jitted `update(params, opt_state, minibatch) -> (params, opt_state, metrics)`.

    minibatch: dict of arrays with leading dim n (rows): input_ids/attention_mask/positions i32|bool[n, P+T],
    response_mask bool[n,T], old_logp f32[n,T], ref_logp f32[n,T], advantages f32[n,T].
    Without "old_logp" the update's own forward log-probs, detached, stand in for them: the ratio is exactly 1
    and its gradient that of on-policy PPO, which is what the old log-probs would give when this is the only
    update on these rows (the on-policy step, `StepPrograms.old_logp_in_update`).
    returns_logprobs: also return the forward's log-probs and entropy, i.e. the actor's before this update:
    `(params, opt_state, metrics, (logp f32[n,T], entropy f32[n,T] or None))`, rows in the minibatch's order.

    The loss of the whole mini-batch is `sum_k w_k loss_k` over its micro-batches: equal weights `1/K`, exact
    for the sequence-mean aggregations, or (`weight_by_tokens`) each micro-batch's share of the response tokens,
    exact for token-mean. Either way the accumulated gradient equals the one-shot gradient of the mini-batch.
    A non-finite loss or gradient leaves params and optimizer state untouched and reports `update/skipped = 1`.
    With `mesh`, each micro-batch's activations and logits are split by rows over its "fsdp" axis.
    with_entropy=False hands the objective `entropy=None` (no softmax over the vocabulary in the forward; for
    objectives without an entropy term, which then report no entropy metric).
    """

    def micro_loss(params, micro):
        model = nnx.merge(graphdef, params)
        with activation_mesh(mesh):
            logp, entropy = completion_logprobs(
                model,
                micro["input_ids"],
                micro["attention_mask"],
                micro["positions"],
                prompt_len=micro["input_ids"].shape[1] - micro["response_mask"].shape[1],
                temperature=temperature,
                with_entropy=with_entropy,
            )
        if "old_logp" not in micro:
            micro = dict(micro, old_logp=jax.lax.stop_gradient(logp))
        loss, metrics = objective(logp, entropy, micro)
        return loss, (metrics, jax.lax.stop_gradient((logp, entropy)))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, minibatch):
        micros = jax.tree.map(lambda x: split_rows(x, micro_batches), minibatch)
        if weight_by_tokens:
            tokens = micros["response_mask"].sum(axis=tuple(range(1, micros["response_mask"].ndim)))
            weights = tokens / jnp.maximum(tokens.sum(), 1)
        else:
            weights = jnp.full((micro_batches,), 1.0 / micro_batches)

        def accumulate(grads, inputs):
            micro, weight = inputs
            (loss, (metrics, logprobs)), g = grad_fn(params, micro)
            grads = jax.tree.map(lambda acc, x: acc + weight * x.astype(jnp.float32), grads, g)
            return grads, (loss * weight, jax.tree.map(lambda m: m * weight, metrics),
                           logprobs if returns_logprobs else None)

        # f32 accumulator whatever the param dtype: bf16 sums of micro-batch gradients lose the small ones.
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads, (losses, metrics, logprobs) = jax.lax.scan(accumulate, zeros, (micros, weights))
        loss = losses.sum()
        metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        updates, new_opt_state = optimizer.update(safe_grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params = _tree_where(finite, new_params, params)
        opt_state = _tree_where(finite, new_opt_state, opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, **{"update/skipped": 1.0 - finite})
        if returns_logprobs:  # [K, n/K, T] per micro-batch -> [n, T]
            return params, opt_state, metrics, jax.tree.map(lambda x: x.reshape(-1, x.shape[-1]), logprobs)
        return params, opt_state, metrics

    return update
