"""The embedded JAX rollout engine: batched KV-cache sampling under one `jax.jit`.

Data flow of one `sample` call (`B` prompts, `n` samples each, `N = B * n` rows, prompt-major):

  prompt_tokens i32[B,P] (left-padded) --prefill, once per prompt--> KV cache of P slots + last logits
  --repeat each prompt's cache n times, one buffer per layer (keys [N,kv,D,S], values [N,kv,S,D])-->
  --first token sampled from the prefill logits--> `lax.while_loop`s over new tokens, one per segment of
  the completion buffer (see `_segment_ends`), each after growing the cache by the segment's slots:
       decode the previous token (S=1) -> logits f32[N,V] -> presence penalty -> temperature / top-k / top-p
       -> sample
  --> until every row has stopped (stop id emitted) or `max_new_tokens` tokens exist.

Cache slots: the prompt sits in slots [0, P) (left padding masked out by `cache_mask`), generated token t
in slot P + t. Generated slots are marked valid up front: the model's causal rule (a query at slot i only
sees slots j <= i) already hides slots that are not written yet, so the mask never changes in the loop.

Randomness: row r (prompt r // n, sample r % n) draws token t by inverting the CDF at a uniform from
`fold_in(fold_in(key, r), t)` (all drawn before the loop), so a row's samples depend on (seed, row, step)
only: not on the rows appended after it (the engine's batch padding) nor on how many steps other rows run.

The layer is the model's own (`capojax.models.layer.decoder_layer`), run on weights laid out for this loop by
the layer module's adapters (`as_matrices`, `fuse_projections`) and on a per-layer cache the loop writes itself.

Speed on CPU (scripts/bench_sampler.py): the step is a chain of small-batch dots whose cost is mostly fixed
overhead and weight traffic, so the loop keeps the dot count low (fused q/k/v and gate/up on CPU, weights laid
out as 2-D matrices once per call), runs them on XLA:CPU's faster path for this shape (`_CPU_COMPILER_OPTIONS`)
with attention as matrix-vector products (`attention(per_member=True)`), keeps RNG and arg-max out of the loop
(one uniform per row and step, inverse-CDF pick) and lets attention read only the slots its segment can have
filled.

Recompiles: shapes are the only compile keys besides the static switches (greedy, top-k/top-p on or off,
presence penalty on or off, samples per prompt; `cpu_tuned`, fixed by the backend). `JaxRolloutEngine` buckets
the prompt count, prompt length and the completion buffer to powers of two, and temperature, top-p, top-k, the
presence penalty, max_new_tokens and the stop ids are traced values, so a training run compiles once per bucket.

Presence penalty (`SamplingParams.presence_penalty`, off at 0: then the compiled program is the one without it):
the loop carries bool[N,V] "row r has generated token v" and subtracts penalty * that from the logits before
temperature, as vLLM does (`apply_penalties`: output tokens only, the prompt does not count). The reported
log-probs are those of the penalised distribution, like vLLM's `--logprobs-mode processed_logprobs` (which the
sidecar uses); greedy reports log_softmax of the penalised logits (vLLM's greedy processed log-probs, too).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from capojax.rollout.base import Rollout, SamplingParams, check_prompts
from capojax.models.layer import (LayerWeights, as_matrices, attention, decoder_layer, fuse_projections,
                                  rms_norm, rope_tables)
from capojax.sharding import logical_to_spec, to_host

# Stop ids are a traced i32[MAX_STOP_IDS] array padded with -1, so changing them does not recompile.
MAX_STOP_IDS = 16
_NEG_INF = -jnp.inf


# --------------------------------------------------------------------------------------------------
# Logits processing
# --------------------------------------------------------------------------------------------------


def apply_presence_penalty(logits: jax.Array, generated: jax.Array, penalty: jax.Array) -> jax.Array:
    """vLLM's / OpenAI's presence penalty: logits f32[N,V] - penalty f32[] * generated bool[N,V] -> f32[N,V].

    generated[r, v]: row r has already generated token v (its prompt does not count). Applied to the raw
    logits, before temperature, top-k and top-p (vLLM's `apply_penalties` runs before its sampler's temperature).
    """
    return logits.astype(jnp.float32) - penalty * generated.astype(jnp.float32)


def process_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                   *, use_filter: bool = True) -> jax.Array:
    """The sampling distribution's logits: temperature, then top-k, then top-p (vLLM's order).

    logits f32[N,V]; temperature f32[] (> 0), top_k i32[] (0 = off), top_p f32[] (1 = off) -> f32[N,V]
    with removed tokens at -inf. `softmax` of the result is the distribution tokens are drawn from, and
    `log_softmax` of it gives the log-probs the sampler reports.

    top-k keeps the tokens whose logit is >= the k-th largest (ties at the boundary are all kept).
    top-p keeps the smallest prefix of the sorted (top-k-renormalised) distribution whose mass reaches
    top_p: a token is kept iff the mass strictly before it is < top_p, so the most likely token always
    survives. `use_filter=False` (static) skips the O(V log V) sort when neither filter is on.
    """
    x = logits.astype(jnp.float32) / temperature
    if not use_filter:
        return x
    vocab = x.shape[-1]
    sorted_x = -jnp.sort(-x, axis=-1)  # descending
    kth = jnp.take(sorted_x, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)[..., None]
    thresh_k = jnp.where(top_k > 0, kth, _NEG_INF)
    sorted_k = jnp.where(sorted_x >= thresh_k, sorted_x, _NEG_INF)
    probs = jax.nn.softmax(sorted_k, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # top_p == 1 must keep every token even when float rounding pushes the running mass to 1 early.
    keep = (mass_before < top_p) | (top_p >= 1.0)
    thresh_p = jnp.min(jnp.where(keep, sorted_k, jnp.inf), axis=-1, keepdims=True)
    thresh = jnp.maximum(thresh_k, thresh_p)
    return jnp.where(x >= thresh, x, _NEG_INF)


def _last_index(condition: jax.Array) -> jax.Array:
    """bool[N, K] -> i32[N]: the last k where condition holds (-1 where it never does)."""
    index = jnp.arange(condition.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(condition, index, -1), axis=-1)


def _inverse_cdf(weights: jax.Array, uniforms: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Draws one index per row with probability proportional to `weights` by inverting the CDF.

    weights f32[N,V] >= 0 (each row with a positive entry), uniforms f32[N] in (0, 1) -> (i32[N] indices,
    f32[N] row totals). The pick is the last index of positive weight whose exclusive prefix sum is below
    u * total: the usual "first index whose CDF reaches u * total" in exact arithmetic, but written so that
    rounding in the prefix sums can never pick an index of weight 0 (a filtered token would get log-prob -inf).

    Two levels, each a prefix sum over ~sqrt(V) entries: pick the block of the vocabulary, then the index inside
    it. A V-wide prefix sum costs XLA:CPU a log-depth chain of V-wide passes, more than the whole pick below.
    The first positive entry of the first positive block has exclusive prefix 0 < u * total, so both picks exist.
    """
    n, vocab = weights.shape
    size = 1 << max(0, math.ceil(math.log2(math.sqrt(vocab))))
    count = -(-vocab // size)
    blocks = jnp.pad(weights, ((0, 0), (0, count * size - vocab))).reshape(n, count, size)
    block_total = blocks.sum(-1)  # [N, count]
    block_before = jnp.cumsum(block_total, axis=-1) - block_total
    total = block_before[:, -1] + block_total[:, -1]
    target = uniforms * total
    block = _last_index((block_total > 0) & (block_before < target[:, None]))
    inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [N, size]
    rest = target - jnp.take_along_axis(block_before, block[:, None], axis=1)[:, 0]
    inner_before = jnp.cumsum(inner, axis=-1) - inner
    return block * size + _last_index((inner > 0) & (inner_before < rest[:, None])), total


def _select(logits: jax.Array, uniforms: jax.Array, temperature, top_k, top_p, *, greedy: bool,
            use_filter: bool) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row. logits f32[N,V], uniforms f32[N] in (0, 1) -> (tokens i32[N], logprobs f32[N]).

    Sampling inverts the CDF of the processed distribution at `uniforms` (`_inverse_cdf`: one draw per row
    instead of a Gumbel draw per vocabulary entry, whose V-wide random bits and arg-max cost CPUs a large
    share of a decode step); the log-prob is under the processed distribution. Greedy: the point-mass
    distribution has log-prob 0, which says nothing, so greedy reports the model's own (temperature-1)
    log-prob instead.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
        return tokens, picked - jax.nn.logsumexp(logits, axis=-1)
    x = process_logits(logits, temperature, top_k, top_p, use_filter=use_filter)
    top = jnp.max(x, axis=-1)
    tokens, total = _inverse_cdf(jnp.exp(x - top[:, None]), uniforms)
    picked = jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked - top - jnp.log(total)  # log-softmax from the CDF's own normaliser


# --------------------------------------------------------------------------------------------------
# The functional core
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Result of `sample` (device arrays; N = B * n rows, prompt-major, T = completion buffer length).

    tokens:   i32[N,T] completion ids, `pad_id` after the end of each row
    logprobs: f32[N,T] log-prob of each token under the sampling distribution, 0 after the end
    lengths:  i32[N]   real tokens per row (a stop token that ended the row counts)
    finished: bool[N]  True when the row ended on a stop id, False when it hit max_new_tokens
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finished: jax.Array


jax.tree_util.register_dataclass(SampleOutput, data_fields=["tokens", "logprobs", "lengths", "finished"],
                                 meta_fields=[])


def _constrain_rows(x: jax.Array, axis: int, mesh: Mesh | None) -> jax.Array:
    """Shards the row axis of x over the mesh's "fsdp" axis (no-op without a mesh)."""
    if mesh is None:
        return x
    spec = [None] * x.ndim
    spec[axis] = "fsdp"
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _constrain_step_cache(x: jax.Array, mesh: Mesh | None, axes: tuple[str, ...]) -> jax.Array:
    """A layer's cache ([N, kv, D, S] keys or [N, kv, S, D] values, named by `axes`): rows over "fsdp", kv
    heads over "tp" when they divide (else replicated)."""
    if mesh is None:
        return x
    spec = logical_to_spec(axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


class _StepCache(NamedTuple):
    """Per-layer KV for the token-by-token loop: k[l]: [N, n_kv, D, S], v[l]: [N, n_kv, S, D].

    Each layer's cache is its own loop-carried buffer with kv heads before slots, so both attention dots
    read it in place as plain batched matmuls (the model's [L, N, S, n_kv, D] layout makes XLA copy and
    transpose a layer's whole cache at every step). Keys are stored transposed (slots last): q @ K^T is then
    a [G, D] x [D, S] product, which XLA:CPU runs about twice as fast as contracting two D-minor operands.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def _decode_layers(model, *, fuse: bool) -> list[LayerWeights]:
    """The scanned layer stack as L `LayerWeights` of plain matrices in the compute dtype (static slices of the
    stacked params), built once per `sample` call, outside the token loop. fuse: q/k/v and gate/up concatenated
    (`fuse_projections`); `sample` fuses on CPU only by default."""
    layers = [as_matrices(model.layer_weights(i)) for i in range(model.config.num_layers)]
    return [fuse_projections(w) for w in layers] if fuse else layers


def _decode_one(model, layers: list[LayerWeights], head, tokens, rope, cache: _StepCache, valid, slot, *,
                cpu_tuned: bool):
    """One new token per row through the unrolled layers: `decoder_layer` over each layer's own cache buffers.

    The parity tests (sampler log-probs == a teacher-forced `Qwen.__call__`) pin this to the model's math.
    tokens: i32[N]; rope: (cos, sin) f32[N, 1, D] at each row's position; head: [H, V]; valid: bool[N, S] slots
    a query may attend (prompt + generated so far, including `slot`); slot: i32[] where this token's k/v go;
    cpu_tuned: attention as per-member products (`attention(per_member=True)`) -> (logits f32[N, V], cache).
    """
    c = model.config
    n, nkv, d = tokens.shape[0], c.num_kv_heads, c.head_dim
    cos, sin = rope
    x = model.embed[...][tokens][:, None].astype(model.dtype)  # [N, 1, H]
    zero = jnp.zeros((), jnp.int32)
    ks, vs = [], []
    for w, k_cache, v_cache in zip(layers, cache.k, cache.v):
        def attend(q, k, v, k_cache=k_cache, v_cache=v_cache):
            # k, v [N, 1, nKV, D] -> slot `slot` of keys [N, nKV, D, S] and values [N, nKV, S, D] (a free reshape)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k.reshape(n, nkv, d, 1).astype(k_cache.dtype),
                                                   (zero, zero, zero, slot))
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.reshape(n, nkv, 1, d).astype(v_cache.dtype),
                                                   (zero, zero, slot, zero))
            out = attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), valid[:, None, :],
                            keys_transposed=True, per_member=cpu_tuned)
            return out, (k_cache, v_cache)

        x, (k_cache, v_cache) = decoder_layer(x, w, c, cos, sin, attend)
        ks.append(k_cache)
        vs.append(v_cache)
    x = rms_norm(x[:, 0], model.norm[...], c.rms_norm_eps)
    return jnp.dot(x, head, preferred_element_type=jnp.float32), _StepCache(tuple(ks), tuple(vs))


_KEY_AXES = ("batch", "kv_heads", "head_dim", "cache_len")
_VALUE_AXES = ("batch", "kv_heads", "cache_len", "head_dim")


def _segment_ends(buffer_len: int, min_segment: int = 32, max_segments: int = 4) -> list[int]:
    """Ends of the decode loop's segments over a completion buffer of `buffer_len` tokens.

    Each segment is its own while_loop whose cache holds only the slots that can be filled by its end, so
    attention reads P + end slots instead of P + T (about a third less over a 4-segment run). Each segment
    compiles its own copy of the step, hence few of them and none shorter than `min_segment`.
    """
    count = max(1, min(max_segments, buffer_len // min_segment))
    size = -(-buffer_len // count)
    return [min(buffer_len, size * (i + 1)) for i in range(count)]


def _grow_cache(cache: _StepCache, extra: int, mesh: Mesh | None) -> _StepCache:
    """Appends `extra` empty slots to every layer's cache (keys [N, kv, D, S], values [N, kv, S, D])."""
    k = tuple(_constrain_step_cache(jnp.pad(x, [(0, 0)] * 3 + [(0, extra)]), mesh, _KEY_AXES) for x in cache.k)
    v = tuple(_constrain_step_cache(jnp.pad(x, [(0, 0), (0, 0), (0, extra), (0, 0)]), mesh, _VALUE_AXES)
              for x in cache.v)
    return _StepCache(k, v)


def _sample_impl(graphdef, state, prompt_tokens, prompt_mask, key, temperature, top_k, top_p,
                 max_new_tokens, stop_ids, pad_id, presence_penalty, *, n: int, buffer_len: int, greedy: bool,
                 use_filter: bool, penalize: bool, cpu_tuned: bool, mesh: Mesh | None):
    model = nnx.merge(graphdef, state)
    B, P = prompt_tokens.shape
    N = B * n
    prompt_mask = prompt_mask.astype(bool)
    prompt_len = prompt_mask.sum(-1).astype(jnp.int32)  # [B]
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)

    # Prefill once per prompt into a P-slot cache: attention costs P x P, not P x (P + T).
    cache = model.init_cache(B, P)
    logits, cache = model.decode(prompt_tokens, positions=positions, cache=cache, cache_mask=prompt_mask,
                                 index=jnp.asarray(0, jnp.int32))
    last_logits = jnp.repeat(logits[:, -1].astype(jnp.float32), n, axis=0)  # [N,V], left padding: last col is real

    # Each prompt's cache -> its n rows, per layer; `_grow_cache` adds the completion slots segment by segment.
    def split(x, order, axes):  # [L, B, P, kv, D] -> L x [N, kv, D, P] (keys) or [N, kv, P, D] (values)
        x = jnp.repeat(x, n, axis=1).transpose(order)
        return tuple(_constrain_step_cache(x[i], mesh, axes) for i in range(x.shape[0]))

    cache = _StepCache(split(cache.k, (0, 1, 3, 4, 2), _KEY_AXES), split(cache.v, (0, 1, 3, 2, 4), _VALUE_AXES))
    layers = _decode_layers(model, fuse=cpu_tuned)
    head = model.output_matrix()  # [H, V], transposed once here rather than in every step's dot
    cache_mask = jnp.concatenate(
        [jnp.repeat(prompt_mask, n, axis=0), jnp.ones((N, buffer_len), bool)], axis=1)
    cache_mask = _constrain_rows(cache_mask, 0, mesh)
    slots = jnp.arange(P + buffer_len, dtype=jnp.int32)
    row_len = jnp.repeat(prompt_len, n, axis=0)  # [N] real prompt tokens per row
    # cos/sin of every position the loop can reach, f32[P + T, D] each, looked up per step: computed in the step,
    # XLA fuses (so recomputes) the transcendentals into each of the ~10 ops that read them.
    rope = tuple(x[0] for x in rope_tables(jnp.arange(P + buffer_len, dtype=jnp.int32)[None], model.config.head_dim,
                                           model.config.rope_theta))
    # Every draw of the run up front (u[r, t] from fold_in(fold_in(key, r), t)): no RNG inside the loop.
    def draw(r, t):
        return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, r), t), (),
                                  minval=jnp.finfo(jnp.float32).tiny)

    uniforms = jax.vmap(jax.vmap(draw, (None, 0)), (0, None))(
        jnp.arange(N, dtype=jnp.int32), jnp.arange(buffer_len, dtype=jnp.int32))  # [N, T]
    uniforms = _constrain_rows(uniforms, 0, mesh)

    def pick(step_logits, t, generated):
        u = jax.lax.dynamic_index_in_dim(uniforms, t, axis=1, keepdims=False)
        if penalize:  # static: without a penalty the program has no trace of it
            step_logits = apply_presence_penalty(step_logits, generated, presence_penalty)
        return _select(step_logits, u, temperature, top_k, top_p, greedy=greedy, use_filter=use_filter)

    def record(carry_bufs, t, tok, lp):
        tokens_buf, lp_buf, lengths, done, finished, generated = carry_bufs
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        lp = jnp.where(live, lp, 0.0)
        tokens_buf = jax.lax.dynamic_update_slice_in_dim(tokens_buf, tok[:, None], t, axis=1)
        lp_buf = jax.lax.dynamic_update_slice_in_dim(lp_buf, lp[:, None], t, axis=1)
        lengths = jnp.where(live, t + 1, lengths)
        hit_stop = live & jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        finished = finished | hit_stop
        done = done | hit_stop | (t + 1 >= max_new_tokens)
        if generated is not None:  # rows that already ended keep theirs: nothing they draw is kept
            generated = generated.at[jnp.arange(N), tok].max(live)
        return (tokens_buf, lp_buf, lengths, done, finished, generated), tok

    bufs = (jnp.full((N, buffer_len), pad_id, jnp.int32), jnp.zeros((N, buffer_len), jnp.float32),
            jnp.zeros((N,), jnp.int32), jnp.zeros((N,), bool), jnp.zeros((N,), bool),
            jnp.zeros((N, last_logits.shape[-1]), bool) if penalize else None)  # generated: bool[N,V] or None
    bufs = tuple(None if b is None else _constrain_rows(b, 0, mesh) for b in bufs)
    tok0, lp0 = pick(last_logits, jnp.asarray(0, jnp.int32), bufs[5])
    bufs, tok0 = record(bufs, jnp.asarray(0, jnp.int32), tok0, lp0)

    carry = (jnp.asarray(1, jnp.int32), tok0, bufs, cache)
    filled = 0
    for end in _segment_ends(buffer_len):
        # Segment [filled, end): its loop attends over P + end slots, not P + T.
        def cond(carry, end=end):
            t, _, bufs, _ = carry
            return (t < jnp.minimum(max_new_tokens, end)) & ~jnp.all(bufs[3])

        def body(carry, mask=cache_mask[:, :P + end], seg_slots=slots[:P + end]):
            t, prev, bufs, cache = carry
            # Token t-1 goes into slot P + t - 1 at position prompt_len + t - 1; its logits give token t.
            slot = P + t - 1
            valid = mask & (seg_slots <= slot)[None, :]
            step_rope = tuple(jnp.take(table, row_len + t - 1, axis=0)[:, None] for table in rope)
            step_logits, cache = _decode_one(model, layers, head, prev, step_rope, cache, valid, slot,
                                             cpu_tuned=cpu_tuned)
            tok, lp = pick(step_logits, t, bufs[5])
            bufs, tok = record(bufs, t, tok, lp)
            return t + 1, tok, bufs, cache

        t, prev, bufs, cache = carry
        carry = jax.lax.while_loop(cond, body, (t, prev, bufs, _grow_cache(cache, end - filled, mesh)))
        filled = end
    bufs = carry[2]
    tokens_buf, lp_buf, lengths, _, finished, _ = bufs
    return SampleOutput(tokens=tokens_buf, logprobs=lp_buf, lengths=lengths, finished=finished)


_STATIC_ARGS = ("graphdef", "n", "buffer_len", "greedy", "use_filter", "penalize", "cpu_tuned", "mesh")
_sample_jit = jax.jit(_sample_impl, static_argnames=_STATIC_ARGS)

# XLA:CPU hands dots to YNNPACK by default. On the decode step's chain of 16-row dots, each against a different
# weight matrix, its Eigen path is ~1.5x faster; YNNPACK only wins on the batched attention dots, which
# `attention(per_member=True)` turns into matrix-vector products that neither library runs. Together: ~1.25x per sample call.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _jit_with_compiler_options(options: dict[str, Any]):
    """`_sample_impl` jitted with XLA `options`, or `_sample_jit` when this XLA rejects them (they are
    experimental flags: a jaxlib without them must still sample, only slower)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except Exception as err:  # noqa: BLE001 - any rejection means "use the defaults"
        logging.getLogger(__name__).warning("XLA rejected the sampler's compiler options %s (%s); sampling with "
                                            "the defaults", options, err)
        return _sample_jit
    return jax.jit(_sample_impl, static_argnames=_STATIC_ARGS, compiler_options=options)


@functools.cache
def _cpu_tuned_jit():
    """The jitted sampler `cpu_tuned` calls use (one per process, so its compile cache is shared)."""
    return _jit_with_compiler_options(_CPU_COMPILER_OPTIONS)


def _stop_array(ids: Sequence[int]) -> np.ndarray:
    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) > MAX_STOP_IDS:
        raise ValueError(f"at most {MAX_STOP_IDS} stop ids are supported, got {len(ids)}: {ids}")
    return np.asarray(ids + [-1] * (MAX_STOP_IDS - len(ids)), np.int32)


def sample(model: nnx.Module | tuple[Any, Any], prompt_tokens: jax.Array, prompt_mask: jax.Array,
           params: SamplingParams, key: jax.Array | None = None, *, eos_ids: Sequence[int] = (),
           pad_id: int = 0, buffer_len: int | None = None, mesh: Mesh | None = None,
           cpu_tuned: bool | None = None) -> SampleOutput:
    """Samples `params.n` completions per prompt with a KV cache; one jitted prefill + while_loop.

    model: a `Qwen` (or `(graphdef, state)` from `nnx.split`, to skip the split on hot paths).
    prompt_tokens i32[B,P] left-padded, prompt_mask bool[B,P] (every row needs >= 1 real token);
    key: PRNG key (default `jax.random.key(params.seed)`); eos_ids + params.stop_token_ids end a row.
    buffer_len: completion buffer T (static; default max_new_tokens) — a larger bucket avoids recompiles,
    generation still stops at params.max_new_tokens.
    cpu_tuned: decode the way XLA:CPU runs fastest (static; default: on the CPU backend only): fused q/k/v and
    gate/up matrices (`_decode_layers`), attention as per-query-head matrix-vector products (`attention`'s
    per_member),
    Eigen dots instead of YNNPACK (`_CPU_COMPILER_OPTIONS`). Same numbers either way up to float rounding.
    Returns SampleOutput with N = B * n prompt-major rows and T = buffer_len columns.
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
        raise ValueError(f"prompt_tokens and prompt_mask must both be [B, P]; got {prompt_tokens.shape} "
                         f"and {prompt_mask.shape}")
    if not bool(to_host(jnp.all(prompt_mask.any(-1)))):
        raise ValueError("every prompt needs at least one real token (a row of prompt_mask is all False)")
    buffer_len = params.max_new_tokens if buffer_len is None else int(buffer_len)
    if buffer_len < params.max_new_tokens:
        raise ValueError(f"buffer_len={buffer_len} is shorter than max_new_tokens={params.max_new_tokens}")
    if key is None:
        key = jax.random.key(params.seed)
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    greedy = params.temperature == 0
    use_filter = (not greedy) and (params.top_k > 0 or params.top_p < 1.0)
    penalize = params.presence_penalty != 0
    if cpu_tuned is None:
        cpu_tuned = jax.default_backend() == "cpu"
    return (_cpu_tuned_jit() if cpu_tuned else _sample_jit)(
        graphdef, state, prompt_tokens, prompt_mask, key,
        jnp.asarray(params.temperature if not greedy else 1.0, jnp.float32),
        jnp.asarray(params.top_k, jnp.int32), jnp.asarray(params.top_p, jnp.float32),
        jnp.asarray(params.max_new_tokens, jnp.int32),
        jnp.asarray(_stop_array(tuple(eos_ids) + tuple(params.stop_token_ids))), jnp.asarray(pad_id, jnp.int32),
        jnp.asarray(params.presence_penalty, jnp.float32),
        n=params.n, buffer_len=buffer_len, greedy=greedy, use_filter=use_filter, penalize=penalize,
        cpu_tuned=cpu_tuned, mesh=mesh)


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


def bucket(x: int, minimum: int = 1) -> int:
    """Next power of two >= max(x, minimum): the shapes the engine compiles for."""
    return 1 << max(0, math.ceil(math.log2(max(x, minimum, 1))))


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to `length` -> (tokens i32[B,length], mask bool[B,length])."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p):] = p
            mask[i, length - len(p):] = True
    return tokens, mask


class JaxRolloutEngine:
    """`RolloutEngine` that samples in-process with `sample` (see the module docstring).

    model: a `Qwen` (its params are held as an nnx.State; the module itself is not kept mutable).
    pad_id: pads prompts and completions; eos_ids: stop ids added to every request's stop_token_ids.
    mesh: with a mesh, rows are sharded over "fsdp" (the prompt count is padded to a multiple of its size)
    and the params keep whatever sharding the model was given (e.g. `shard_model`).
    """

    def __init__(self, model: nnx.Module, *, pad_id: int, eos_ids: Sequence[int] = (), mesh: Mesh | None = None,
                 min_prompt_bucket: int = 16, min_new_bucket: int = 16):
        self.graphdef, state = nnx.split(model)
        # Commit every leaf to its current placement: jit keys its cache on committed-ness, and
        # update_weights hands in committed arrays, so an uncommitted start would compile twice.
        self.state = jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)
        self.pad_id = int(pad_id)
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.mesh = mesh
        self.min_prompt_bucket = min_prompt_bucket
        self.min_new_bucket = min_new_bucket
        self._row_multiple = 1 if mesh is None else int(mesh.shape["fsdp"])
        self._closed = False

    def _device_put_rows(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        spec = PartitionSpec("fsdp", *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> Rollout:
        """Samples params.n completions per prompt (token id lists) -> Rollout, prompt-major rows."""
        if self._closed:
            raise RuntimeError("JaxRolloutEngine.generate called after close()")
        check_prompts(prompts)
        num = len(prompts)
        b_bucket = bucket(num)
        b_bucket = -(-b_bucket // self._row_multiple) * self._row_multiple
        p_bucket = bucket(max(len(p) for p in prompts), self.min_prompt_bucket)
        t_bucket = bucket(params.max_new_tokens, self.min_new_bucket)
        # Filler prompts (one pad token) only make the shapes static; their rows are dropped below.
        padded = list(prompts) + [[self.pad_id]] * (b_bucket - num)
        tokens, mask = pad_prompts(padded, p_bucket, self.pad_id)
        out = sample((self.graphdef, self.state), self._device_put_rows(tokens), self._device_put_rows(mask),
                     params, jax.random.key(params.seed), eos_ids=self.eos_ids, pad_id=self.pad_id,
                     buffer_len=t_bucket, mesh=self.mesh)
        rows = num * params.n
        T = params.max_new_tokens
        out = jax.tree.map(to_host, out)  # multi-process: every process gets all rows
        lengths = np.asarray(out.lengths[:rows], np.int32)
        return Rollout(
            tokens=np.asarray(out.tokens[:rows, :T], np.int32),
            logprobs=np.asarray(out.logprobs[:rows, :T], np.float32),
            mask=np.arange(T)[None, :] < lengths[:, None],
            lengths=lengths,
            finished=np.asarray(out.finished[:rows], bool),
            prompt_index=np.repeat(np.arange(num, dtype=np.int32), params.n),
            pad_id=self.pad_id,
        )

    def update_weights(self, params: Any) -> dict[str, float]:
        """Replaces the sampled params with `params` (an nnx.State or a Qwen module of the same structure).

        Same structure, shapes and dtypes keep the compiled sampler (no recompile); leaves are cast to the
        engine's dtypes and placed like the current params (so a trainer in f32 can feed a bf16 sampler).
        """
        t0 = time.perf_counter()
        if isinstance(params, nnx.Module):
            params = nnx.state(params)
        old_leaves, old_tree = jax.tree.flatten(self.state)
        new_leaves, new_tree = jax.tree.flatten(params)
        if old_tree != new_tree:
            raise ValueError("update_weights got params whose structure differs from the engine's model; "
                             f"pass nnx.state(model) of the same architecture.\n engine: {old_tree}\n got: {new_tree}")
        moved = []
        for i, (old, new) in enumerate(zip(old_leaves, new_leaves)):
            if old.shape != new.shape:
                path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(self.state)[0][i][0])
                raise ValueError(f"update_weights: param {path} has shape {new.shape}, engine expects {old.shape}")
            new = jnp.asarray(new, old.dtype)
            sharding = getattr(old, "sharding", None)
            moved.append(jax.device_put(new, sharding) if sharding is not None else new)
        moved = jax.block_until_ready(moved)
        self.state = jax.tree.unflatten(old_tree, moved)
        secs = time.perf_counter() - t0
        nbytes = sum(x.size * x.dtype.itemsize for x in moved)
        return {"timing/sync": secs, "sync/gbps": nbytes / max(secs, 1e-9) / 1e9}

    def close(self) -> None:
        self._closed = True
        self.state = None
