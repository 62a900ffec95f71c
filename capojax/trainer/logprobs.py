"""Teacher-forced log-probs of completion tokens: the trainer's view of what the rollout engine sampled.

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
) -> tuple[jax.Array, jax.Array | None]:
    """Log-prob and entropy of every completion position.

    input_ids, attention_mask, positions: [N, P+T] -> (logp f32[N, T], entropy f32[N, T] or None).
    Logits are divided by the sampling temperature so that, at ratio 1, these equal the sampler's log-probs.
    with_entropy=False skips the entropy: a softmax over the vocabulary that, at 152k, costs as much as the head.
    """
    hidden = model.hidden(input_ids, attention_mask=attention_mask, positions=positions)
    hidden = hidden[:, prompt_len - 1 : -1]
    logits = model.logits(hidden).astype(jnp.float32) / temperature
    log_z = jax.nn.logsumexp(logits, axis=-1)
    targets = input_ids[:, prompt_len:]
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = target_logits - log_z
    if not with_entropy:
        return logp, None
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = log_z - jnp.sum(probs * logits, axis=-1)
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
                    mesh: Mesh | None = None):
    """A jitted pass `(state, input_ids, attention_mask, positions, prompt_len) -> (logp f32[N,T], entropy f32[N,T])`
    with `prompt_len` static (it is bucketed, so few shapes compile).

    The rows go through in sequential chunks of at most `rows_per_chunk` rows (lax.map) so that the
    [rows, T, V] logits of only one chunk are alive at a time. With `mesh`, each chunk's activations and logits
    are split by rows over its "fsdp" axis (`capojax.sharding.constrain_activations`).
    """

    @functools.partial(jax.jit, static_argnames=("prompt_len",))
    def logprob_fn(state, input_ids, attention_mask, positions, prompt_len: int):
        def one_chunk(chunk):
            model = nnx.merge(graphdef, state)
            with activation_mesh(mesh):
                return completion_logprobs(model, *chunk, prompt_len=prompt_len, temperature=temperature)

        chunks = chunk_count(input_ids.shape[0], rows_per_chunk)
        parts = tuple(split_rows(x, chunks) for x in (input_ids, attention_mask, positions))
        logp, entropy = jax.lax.map(one_chunk, parts)
        return logp.reshape(input_ids.shape[0], -1), entropy.reshape(input_ids.shape[0], -1)

    return logprob_fn
