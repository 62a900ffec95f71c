"""Teacher-forced log-probs of completion tokens: the trainer's view of what the rollout engine sampled, and the
one definition of them: the PPO update, the old/reference log-prob passes, the validation and `capojax.evaluate`
(through `capojax.eval_pipeline`) all compute them here.

Rows come from `batch.SequenceBatch`: the completion starts at the static column `prompt_len`, so the
logits that score completion token `t` sit at column `prompt_len - 1 + t`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from capojax.sharding import activation_mesh


def completion_logprobs(
    model: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    positions: jax.Array,
    *,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = True,
    time_chunk: int | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-prob and entropy of every completion position.

    input_ids, attention_mask, positions: [N, P+T] -> (logp f32[N, T], entropy f32[N, T] or None).
    Logits are divided by the sampling temperature so that, at ratio 1, these equal the sampler's log-probs.
    with_entropy=False skips the entropy: a softmax over the vocabulary that, at 152k, costs as much as the head.
    time_chunk: compute the head over `time_chunk` positions at a time (lax.map), so that the logits of a long
    completion never exist as one f32[N, T, V] array (evaluation: 3k tokens x 152k vocabulary); None = all at once.
    """
    hidden = model.hidden(input_ids, attention_mask=attention_mask, positions=positions)
    hidden = hidden[:, prompt_len - 1 : -1]  # the state before completion token t predicts token t
    targets = input_ids[:, prompt_len:]
    rows, length, width = hidden.shape
    if not time_chunk or time_chunk >= length:
        return _head_logprobs(model, hidden, targets, temperature, with_entropy)
    chunks = -(-length // time_chunk)
    pad = chunks * time_chunk - length  # the padded tail positions are computed, then dropped
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(rows, chunks, time_chunk, width).swapaxes(0, 1)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(rows, chunks, time_chunk).swapaxes(0, 1)
    logp, entropy = jax.lax.map(lambda c: _head_logprobs(model, *c, temperature, with_entropy), (hidden, targets))

    def unchunk(x):  # [chunks, N, time_chunk] -> [N, T]
        return x.swapaxes(0, 1).reshape(rows, chunks * time_chunk)[:, :length]

    return unchunk(logp), None if entropy is None else unchunk(entropy)


def _head_logprobs(model, hidden, targets, temperature: float, with_entropy: bool):
    """hidden [N, T, H], targets i32[N, T] -> (logp f32[N, T], entropy f32[N, T] or None) through the LM head."""
    logits = model.logits(hidden).astype(jnp.float32) / temperature
    # logsumexp written out so that the entropy reuses its exponentials: with jax.nn.softmax on top, XLA makes a
    # second exp pass over [N, T, V] (at a 152k vocabulary a third of the update's time); this way both sums come
    # from one pass.
    top = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    unnormalised = jnp.exp(logits - top)
    total = unnormalised.sum(axis=-1)
    log_z = jnp.log(total) + top[..., 0]
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = target_logits - log_z
    if not with_entropy:
        return logp, None
    entropy = log_z - (unnormalised * logits).sum(axis=-1) / total  # log Z - E_p[logits]
    return logp, entropy


def split_rows(x: jax.Array, micro_batches: int) -> jax.Array:
    """[N, ...] -> [micro_batches, N / micro_batches, ...]."""
    n = x.shape[0]
    if n % micro_batches:
        raise ValueError(f"{n} rows do not split into {micro_batches} micro-batches; pick a divisor")
    return x.reshape(micro_batches, n // micro_batches, *x.shape[1:])


def chunk_count(rows: int, rows_per_chunk: int | None) -> int:
    """How many sequential chunks to cut `rows` into so that none exceeds `rows_per_chunk` rows (the smallest
    count that divides `rows` evenly; 1 when `rows_per_chunk` is None or 0)."""
    if not rows_per_chunk or rows <= rows_per_chunk:
        return 1
    return next(k for k in range(-(-rows // rows_per_chunk), rows + 1) if rows % k == 0)


def make_logprob_fn(graphdef: nnx.GraphDef, *, temperature: float, rows_per_chunk: int | None = None,
                    mesh: Mesh | None = None, with_entropy: bool = True, time_chunk: int | None = None):
    """A jitted pass `(state, input_ids, attention_mask, positions, prompt_len) -> (logp f32[N,T], entropy f32[N,T])`
    with `prompt_len` static (it is bucketed, so few shapes compile). The entropy is None when `with_entropy` is False.

    The rows go through in sequential chunks of at most `rows_per_chunk` rows (lax.map) so that the
    [rows, T, V] logits of only one chunk are alive at a time; `time_chunk` also splits each row's positions
    (see `completion_logprobs`). With `mesh`, each chunk's activations and logits are split by rows over its
    "fsdp" axis (`capojax.sharding.constrain_activations`).
    """

    @functools.partial(jax.jit, static_argnames=("prompt_len",))
    def logprob_fn(state, input_ids, attention_mask, positions, prompt_len: int):
        def one_chunk(chunk):
            model = nnx.merge(graphdef, state)
            with activation_mesh(mesh):
                return completion_logprobs(model, *chunk, prompt_len=prompt_len, temperature=temperature,
                                           with_entropy=with_entropy, time_chunk=time_chunk)

        chunks = chunk_count(input_ids.shape[0], rows_per_chunk)
        parts = tuple(split_rows(x, chunks) for x in (input_ids, attention_mask, positions))
        logp, entropy = jax.lax.map(one_chunk, parts)
        rows = input_ids.shape[0]
        return logp.reshape(rows, -1), None if entropy is None else entropy.reshape(rows, -1)

    return logprob_fn
