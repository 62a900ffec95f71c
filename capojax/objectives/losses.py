"""PPO-clip policy loss (token- or sequence-level ratio), loss aggregations, KL estimators and entropy.

The pieces are registered by name, as verl's `core_algos`: `RATIO_LEVELS` (how the importance ratio of a token is
formed: "token" for PPO / GRPO, "sequence" for GSPO), `AGGREGATIONS` (how per-token values reduce to the loss) and
`KL_ESTIMATORS` (k1, k2, k3). `policy_loss` composes a ratio, the PPO clip and an aggregation; a new ratio or
aggregation is one decorated function, e.g. `@AGGREGATIONS.register("my-agg")`.

Every function takes arrays with any leading shape `[...]` and a trailing token axis `T` (e.g. [B,G,T] or the
trainer's flattened rows [N,T]) and a bool mask of the same shape. Padded positions may hold anything, even
NaN or inf: inputs are replaced by 0 under the mask *before* any arithmetic, so neither the value nor the
gradient of a loss ever sees them ("double where").
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from capojax.objectives.registry import Registry

# ratio_fn(logp f32[...,T], old_logp f32[...,T], mask bool[...,T]) -> log importance ratio f32[...,T]; inputs are
# already 0 on padding.
RatioFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# aggregation(values f32[...,T] (0 on padding), mask bool[...,T], *, norm_len) -> scalar.
Aggregation = Callable[..., jax.Array]

RATIO_LEVELS = Registry("ratio_level", "capojax.objectives.RATIO_LEVELS")
AGGREGATIONS = Registry("agg", "capojax.objectives.AGGREGATIONS")
KL_ESTIMATORS = Registry("kl_kind", "capojax.objectives.KL_ESTIMATORS")
KL_KINDS = KL_ESTIMATORS  # the names k1, k2, k3 (kept for callers that only need the names)
# verl's low_var_kl bounds (verl/trainer/ppo/core_algos.py kl_penalty): log-ratio to +-20, the k3 estimate to +-10.
K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def _check_same_shape(**arrays) -> None:
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"these arrays must share one shape [..., T]: {shapes}")
    if len(next(iter(shapes.values()))) < 1:
        raise ValueError(f"expected arrays with a token axis [..., T], got shapes {shapes}")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask=True entries (all axes); 0 when the mask is empty."""
    mask = jnp.asarray(mask, bool)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


# ------------------------------------------------------------------------------------------- aggregations
# Sequences without any valid token (padding rows) are left out of the sequence means, so padding never changes
# the result; an all-padding input gives 0.


def _sequence_sums(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(token sum f32[...], valid tokens i32[...] of each sequence, number of non-empty sequences (at least 1))."""
    n_tok = jnp.sum(mask, axis=-1)
    return jnp.sum(values, axis=-1), n_tok, jnp.maximum(jnp.sum(n_tok > 0), 1)


@AGGREGATIONS.register("token-mean")
def token_mean(values: jax.Array, mask: jax.Array, *, norm_len: int | None = None) -> jax.Array:
    """Sum of all valid tokens / number of valid tokens (DAPO, verl's default)."""
    return jnp.sum(values) / jnp.maximum(jnp.sum(mask), 1)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values: jax.Array, mask: jax.Array, *, norm_len: int | None = None) -> jax.Array:
    """Mean over sequences of each sequence's token mean (GRPO)."""
    seq_sum, n_tok, n_seq = _sequence_sums(values, mask)
    return jnp.sum(seq_sum / jnp.maximum(n_tok, 1)) / n_seq


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(values: jax.Array, mask: jax.Array, *, norm_len: int | None = None) -> jax.Array:
    """Mean over sequences of each sequence's token sum."""
    seq_sum, _, n_seq = _sequence_sums(values, mask)
    return jnp.sum(seq_sum) / n_seq


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values: jax.Array, mask: jax.Array, *, norm_len: int | None = None) -> jax.Array:
    """seq-mean-token-sum / norm_len, norm_len a constant such as the maximum response length (Dr.GRPO).
    Required: defaulting to the padded T would make the loss depend on the padding bucket."""
    if norm_len is None:
        raise ValueError(
            "agg='seq-mean-token-sum-norm' needs norm_len, the constant Dr.GRPO divides by: pass the maximum "
            "response length of the run (e.g. the sampler's max_tokens)."
        )
    if isinstance(norm_len, (int, float)) and norm_len <= 0:
        raise ValueError(f"norm_len must be > 0, got {norm_len}.")
    seq_sum, _, n_seq = _sequence_sums(values, mask)
    return jnp.sum(seq_sum) / n_seq / norm_len


def aggregate(values: jax.Array, mask: jax.Array, agg: str = "token-mean", *, norm_len: int | None = None) -> jax.Array:
    """Reduce per-token values f32[..., T] under mask bool[..., T] to a scalar with `AGGREGATIONS[agg]`:

    token-mean:               sum of all valid tokens / number of valid tokens (DAPO)
    seq-mean-token-mean:      mean over sequences of each sequence's token mean (GRPO)
    seq-mean-token-sum:       mean over sequences of each sequence's token sum
    seq-mean-token-sum-norm:  seq-mean-token-sum / norm_len (Dr.GRPO; norm_len required)
    """
    reduce = AGGREGATIONS.get(agg)
    values = jnp.asarray(values, jnp.float32)
    mask = jnp.asarray(mask, bool)
    _check_same_shape(values=values, mask=mask)
    return reduce(jnp.where(mask, values, 0.0), mask, norm_len=norm_len)


# ----------------------------------------------------------------------------------------- ratio levels


def sequence_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """GSPO's log s_i = (1/|o_i|) sum_t (logp - old_logp): f32[...] from f32[..., T]; 0 for empty rows."""
    mask = jnp.asarray(mask, bool)
    _check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    diff = jnp.where(mask, logp, 0.0) - jnp.where(mask, old_logp, 0.0)
    return jnp.sum(diff, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1)


def sequence_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """GSPO's sequence importance ratio s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|), f32[...]."""
    return jnp.exp(sequence_log_ratio(logp, old_logp, mask))


@RATIO_LEVELS.register("token")
def token_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """log r_t = logp_t - old_logp_t (PPO / GRPO)."""
    return logp - old_logp


@RATIO_LEVELS.register("sequence")
def sequence_log_ratio_per_token(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """log r_t = log s_i for every token t of sequence o_i (GSPO)."""
    return jnp.broadcast_to(sequence_log_ratio(logp, old_logp, mask)[..., None], mask.shape)


# ------------------------------------------------------------------------------------------- PPO clip


def _token_advantages(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """Token-level f32[..., T] from token-level or sequence-level f32[...] advantages."""
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.shape == mask.shape[:-1]:  # sequence-level advantages f32[...]
        advantages = advantages[..., None]
    try:
        return jnp.broadcast_to(advantages, mask.shape)
    except ValueError:
        raise ValueError(
            f"advantages {advantages.shape} must be token-level {mask.shape} or sequence-level {mask.shape[:-1]}."
        ) from None


def _check_clip_range(clip_low, clip_high, dual_clip) -> None:
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    if isinstance(clip_low, (int, float)) and clip_low >= 1:
        raise ValueError(f"clip_low must be < 1 (the lower bound is 1 - clip_low > 0), got {clip_low}.")
    if dual_clip is not None and isinstance(dual_clip, (int, float)) and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (it caps the loss at -A * dual_clip), got {dual_clip}.")


def ppo_clip(ratio: jax.Array, adv: jax.Array, *, clip_low: float, clip_high: float,
             dual_clip: float | None) -> tuple[jax.Array, jax.Array]:
    """Per-token PPO-clip loss max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), with dual_clip = c > 1 capped at
    -A c for negative advantages (dual-clip PPO). Returns (loss f32[..., T], where the dual cap is active bool)."""
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    if dual_clip is None:
        return per_token, jnp.zeros(ratio.shape, bool)
    cap = -adv * dual_clip
    dual_active = (adv < 0) & (cap < per_token)
    return jnp.where(adv < 0, jnp.minimum(per_token, cap), per_token), dual_active


def _clip_metrics(ratio, log_ratio, adv, mask, dual_active, *, clip_low, clip_high) -> dict[str, jax.Array]:
    low = (ratio < 1.0 - clip_low) & (adv < 0)
    high = (ratio > 1.0 + clip_high) & (adv > 0)
    ratio_sg = jax.lax.stop_gradient(ratio)
    any_valid = jnp.any(mask)
    return {
        "clip_frac/low": masked_mean(low.astype(jnp.float32), mask),
        "clip_frac/high": masked_mean(high.astype(jnp.float32), mask),
        "clip_frac": masked_mean((low | high).astype(jnp.float32), mask),
        "clip_frac/dual": masked_mean(dual_active.astype(jnp.float32), mask),
        "ratio/mean": masked_mean(ratio_sg, mask),
        "ratio/max": jnp.where(any_valid, jnp.max(jnp.where(mask, ratio_sg, -jnp.inf)), 1.0),
        "ratio/min": jnp.where(any_valid, jnp.min(jnp.where(mask, ratio_sg, jnp.inf)), 1.0),
        "ppo_kl": masked_mean(jax.lax.stop_gradient(-log_ratio), mask),
    }


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ratio_level: str = "token",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    norm_len: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO-clip surrogate loss (to minimise) and its metrics.

    logp, old_logp f32[..., T] (current and behaviour policy log-probs of the sampled tokens), advantages
    f32[..., T] (token-level), f32[...] or anything else broadcastable to [..., T], mask bool[..., T].

    The log-ratio comes from `RATIO_LEVELS[ratio_level]` ("token": logp_t - old_logp_t, PPO / GRPO; "sequence":
    GSPO's length-normalised sequence log-ratio on every token), the per-token loss from `ppo_clip`, the scalar
    from `AGGREGATIONS[agg]`.

    Metrics (token-weighted over valid tokens): pg_loss, clip_frac/low (r < 1-clip_low and A < 0, gradient cut),
    clip_frac/high (r > 1+clip_high and A > 0), clip_frac (their sum), clip_frac/dual, ratio/mean|max|min,
    ppo_kl (k1 estimate of KL(pi_old || pi)).
    """
    log_ratio_fn = RATIO_LEVELS.get(ratio_level)
    mask = jnp.asarray(mask, bool)
    logp = jnp.asarray(logp, jnp.float32)
    old_logp = jnp.asarray(old_logp, jnp.float32)
    advantages = _token_advantages(advantages, mask)
    _check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    _check_clip_range(clip_low, clip_high, dual_clip)

    # Zero padding before arithmetic: keeps NaN/inf in padded slots out of values and gradients.
    logp = jnp.where(mask, logp, 0.0)
    old_logp = jnp.where(mask, old_logp, 0.0)
    adv = jnp.where(mask, advantages, 0.0)
    log_ratio = jnp.where(mask, log_ratio_fn(logp, old_logp, mask), 0.0)
    ratio = jnp.exp(log_ratio)
    per_token, dual_active = ppo_clip(ratio, adv, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
    loss = aggregate(per_token, mask, agg, norm_len=norm_len)
    metrics = {"pg_loss": jax.lax.stop_gradient(loss),
               **_clip_metrics(ratio, log_ratio, adv, mask, dual_active, clip_low=clip_low, clip_high=clip_high)}
    return loss, metrics


# ----------------------------------------------------------------------------------------- KL, entropy


@KL_ESTIMATORS.register("k1")
def kl_k1(x: jax.Array) -> jax.Array:
    """x = log(pi / pi_ref): unbiased, can be negative."""
    return x


@KL_ESTIMATORS.register("k2")
def kl_k2(x: jax.Array) -> jax.Array:
    """x^2 / 2: biased, low variance."""
    return 0.5 * x * x


@KL_ESTIMATORS.register("k3")
def kl_k3(x: jax.Array) -> jax.Array:
    """exp(-x) - 1 + x: unbiased, >= 0 (GRPO's "low_var_kl"), clamped as verl's `low_var_kl`."""
    neg = jnp.clip(-x, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return jnp.clip(jnp.expm1(neg) - neg, -K3_CLAMP, K3_CLAMP)


def kl_per_token(logp: jax.Array, ref_logp: jax.Array, kind: str = "k3") -> jax.Array:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3), f32[..., T].

    With x = logp - ref_logp = log(pi / pi_ref):  k1 = x (unbiased, can be negative),
    k2 = x^2 / 2 (biased, low variance), k3 = exp(-x) - 1 + x (unbiased, >= 0; GRPO's "low_var_kl").
    k3 is clamped as verl's `low_var_kl`: the log-ratio to [-20, 20] (so exp cannot overflow into an inf whose
    zero clamp-gradient would be NaN) and the estimate to [-10, 10] (one token far off the reference cannot
    dominate the penalty; its gradient is 0 there).
    """
    estimator = KL_ESTIMATORS.get(kind)
    return estimator(jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32))


def kl_penalty(
    logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array,
    kind: str = "k3",
    *,
    agg: str = "token-mean",
    norm_len: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """KL(pi || pi_ref) penalty aggregated like the policy loss: (scalar, {"kl": token-mean value})."""
    mask = jnp.asarray(mask, bool)
    _check_same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    kl = kl_per_token(jnp.where(mask, logp, 0.0), jnp.where(mask, ref_logp, 0.0), kind)
    loss = aggregate(kl, mask, agg, norm_len=norm_len)
    return loss, {"kl": jax.lax.stop_gradient(masked_mean(kl, mask))}


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) over the last axis: f32[..., V] -> f32[...].

    Stable for large logits (log_softmax) and for -inf logits (banned tokens: 0 log 0 counts as 0, and the
    gradient stays finite because the log is replaced before the product).
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    p = jnp.exp(logp)
    safe_logp = jnp.where(p > 0, logp, 0.0)
    return -jnp.sum(p * safe_logp, axis=-1)


def entropy_bonus(
    entropy: jax.Array, mask: jax.Array, *, agg: str = "token-mean", norm_len: int | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Aggregated token entropy (to be *subtracted* from the loss times a coefficient) and {"entropy": token mean}."""
    mask = jnp.asarray(mask, bool)
    value = aggregate(entropy, mask, agg, norm_len=norm_len)
    return value, {"entropy": jax.lax.stop_gradient(masked_mean(entropy, mask))}


__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "KL_KINDS",
    "RATIO_LEVELS",
    "aggregate",
    "entropy_bonus",
    "entropy_from_logits",
    "kl_penalty",
    "kl_per_token",
    "masked_mean",
    "policy_loss",
    "ppo_clip",
    "sequence_log_ratio",
    "sequence_ratio",
]
