"""Advantage estimators: GRPO / Dr.GRPO, the pairwise-surrogate family (CAPO), DCPO, and their registry.

Sequence-level estimators return f32[B,G]; the registry wrappers in `ADVANTAGE_ESTIMATORS` all return the
token-level f32[B,G,T] (sequence advantages broadcast over `response_mask`, 0 on padding), so the training loop
treats every algorithm alike. See the package docstring for the 1/tau and 1/G conventions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from capojax.objectives.surrogates import Logistic, Surrogate, get_surrogate

_SCALES = ("group_std", "batch_std", "none")
_DCPO_ERRORS = ("squared", "absolute")


def _check_rank(x: jax.Array, rank: int, name: str, shape_doc: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {jnp.shape(x)}.")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}.")


def _centered(x: jax.Array) -> jax.Array:
    """x - mean_g x, computed as (G x - sum_g x) / G.

    Written this way so that for 0/1 rewards the numerator is an exact integer and the result is bit-identical
    to the linear-surrogate closed form n_wrong / G (theorem 2 holds exactly, not just to rounding).
    """
    g = x.shape[-1]
    return (g * x - jnp.sum(x, axis=-1, keepdims=True)) / g


def grpo_advantages(rewards: jax.Array, *, scale: str = "group_std", eps: float = 1e-6) -> jax.Array:
    """Group-relative advantage f32[B,G] from rewards f32[B,G].

    scale="group_std": (r - mean_g r) / (std_g r + eps), std unbiased (ddof=1)   -- GRPO
    scale="batch_std": (r - mean_g r) / (std of all B*G rewards + eps), ddof=1   -- group mean, batch std
    scale="none":      r - mean_g r                                              -- Dr.GRPO
    A group of one sample (G == 1) has no baseline and gets 0 (its ddof=1 std would be 0/0).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    _check_rank(rewards, 2, "rewards", "f32[B,G]")
    _check_choice("scale", scale, _SCALES)
    if rewards.shape[-1] == 1:
        return jnp.zeros_like(rewards)
    centered = _centered(rewards)
    if scale == "none":
        return centered
    if scale == "group_std":
        std = jnp.std(rewards, axis=-1, ddof=1, keepdims=True)
    else:
        std = jnp.std(rewards, ddof=1)
    return centered / (std + eps)


def pairwise_surrogate_loss(correct: jax.Array, scores: jax.Array, phi: Surrogate | str | Callable) -> jax.Array:
    """L(s) = sum_{i correct, j wrong} phi(s_i - s_j) per group: f32[B] from correct bool[B,G], scores f32[B,G]."""
    phi = get_surrogate(phi)
    correct, scores = _pair_inputs(correct, scores)
    diff = scores[:, :, None] - scores[:, None, :]  # [B,G,G]: diff[b,i,j] = s_i - s_j
    pair = correct[:, :, None] & ~correct[:, None, :]  # i correct, j wrong
    # where (not multiply) so that an overflowing phi on a non-pair cannot turn 0 into NaN.
    return jnp.sum(jnp.where(pair, phi(diff), 0.0), axis=(-2, -1))


def _pair_inputs(correct, scores):
    correct = jnp.asarray(correct)
    scores = jnp.asarray(scores, jnp.float32)
    _check_rank(correct, 2, "correct", "bool[B,G]")
    _check_rank(scores, 2, "scores", "f32[B,G]")
    if correct.shape != scores.shape:
        raise ValueError(f"correct {correct.shape} and scores {scores.shape} must have the same shape [B,G].")
    return correct.astype(bool), scores


def pairwise_advantages(correct: jax.Array, scores: jax.Array, phi: Surrogate | str | Callable) -> jax.Array:
    """A = -(1/G) dL/ds, f32[B,G], in closed form (O(B G^2) memory and time, no autodiff).

    dL/ds_k = c_k sum_{j wrong} phi'(s_k - s_j) - (1 - c_k) sum_{i correct} phi'(s_i - s_k).
    Groups that are all correct or all wrong have no pairs and get exactly 0.
    """
    phi = get_surrogate(phi)
    correct, scores = _pair_inputs(correct, scores)
    g = scores.shape[-1]
    diff = scores[:, :, None] - scores[:, None, :]
    pair = correct[:, :, None] & ~correct[:, None, :]
    dphi = jnp.where(pair, phi.derivative(diff), 0.0)  # dphi[b,i,j] = phi'(s_i - s_j) on pairs
    # Row k collects pairs where k is the correct member, column k pairs where k is the wrong member.
    grad = jnp.sum(dphi, axis=-1) - jnp.sum(dphi, axis=-2)
    return (0.0 - grad) / g  # 0.0 - x, not -x: a pair-free group gets +0, not -0


def capo_mask(correct: jax.Array, ref_ppl: jax.Array, *, ref_high: float = 2.5, ref_low: float = 1.05) -> jax.Array:
    """bool[B,G]: keep a correct sample iff PPL_ref <= ref_high (drop lucky guesses the reference finds
    implausible) and a wrong one iff PPL_ref >= ref_low (drop near-misses the reference finds near-certain).
    A NaN ref_ppl compares False and is dropped."""
    correct = jnp.asarray(correct, bool)
    ref_ppl = jnp.asarray(ref_ppl, jnp.float32)
    if ref_ppl.shape != correct.shape:
        raise ValueError(f"ref_ppl {ref_ppl.shape} must have the shape of correct {correct.shape} ([B,G]).")
    return jnp.where(correct, ref_ppl <= ref_high, ref_ppl >= ref_low)


def capo_advantages(
    correct: jax.Array,
    lpm: jax.Array,
    *,
    tau: float,
    ref_ppl: jax.Array | None = None,
    ref_high: float = 2.5,
    ref_low: float = 1.05,
) -> jax.Array:
    """CAPO advantage f32[B,G]: `pairwise_advantages` with the logistic surrogate phi_tau on scores = lpm,
    times `capo_mask` (none when ref_ppl is None).

    The mask is applied after the pairwise sums, so a masked sample still counts as the counterpart of every
    unmasked one; only its own advantage is zeroed. Uniform groups get 0.
    """
    adv = pairwise_advantages(correct, lpm, Logistic(tau=tau))
    if ref_ppl is None:
        return adv
    return jnp.where(capo_mask(correct, ref_ppl, ref_high=ref_high, ref_low=ref_low), adv, 0.0)


def lpm(logp: jax.Array, mask: jax.Array) -> jax.Array:
    """Length-normalised mean token log-prob f32[...] from logp f32[..., T], mask bool[..., T]; PPL = exp(-lpm).

    A row without valid tokens gets 0 (PPL 1) rather than 0/0. Padded positions may hold anything (even NaN).
    """
    logp = jnp.asarray(logp, jnp.float32)
    mask = jnp.asarray(mask, bool)
    if logp.shape != mask.shape:
        raise ValueError(f"logp {logp.shape} and mask {mask.shape} must have the same shape [..., T].")
    total = jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(mask, axis=-1), 1)


# ----------------------------------------------------------------------------------------------------- DCPO


def dcpo_rewards(
    correct: jax.Array, confidence: jax.Array, *, lam: float = 0.5, error: str = "squared"
) -> tuple[jax.Array, jax.Array]:
    """DCPO's two rewards, each f32[B,G]: (accuracy reward, calibration reward).

    accuracy = correct (0/1). calibration = -err(conf, target), target = lam * group_accuracy + (1 - lam) * correct,
    err = (conf - target)^2 ("squared") or |conf - target| ("absolute"). lam = 0: per-instance target; lam = 1:
    the group's accuracy. Confidence is clipped to [0, 1] (so the reward lies in [-1, 0]); an unparsed
    confidence (NaN) gets -1, the worst calibration reward possible.
    """
    correct = jnp.asarray(correct, bool)
    confidence = jnp.asarray(confidence, jnp.float32)
    _check_rank(correct, 2, "correct", "bool[B,G]")
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence {confidence.shape} must have the shape of correct {correct.shape} ([B,G]).")
    _check_choice("error", error, _DCPO_ERRORS)
    if isinstance(lam, (int, float)) and not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1] (0: per-instance target, 1: group accuracy), got {lam}.")
    acc = correct.astype(jnp.float32)
    target = lam * jnp.mean(acc, axis=-1, keepdims=True) + (1.0 - lam) * acc
    parsed = ~jnp.isnan(confidence)
    conf = jnp.clip(jnp.where(parsed, confidence, 0.0), 0.0, 1.0)
    diff = conf - target
    err = diff * diff if error == "squared" else jnp.abs(diff)
    return acc, jnp.where(parsed, -err, -1.0)


def dcpo_advantages(
    correct: jax.Array,
    confidence: jax.Array,
    response_mask: jax.Array,
    confidence_mask: jax.Array,
    *,
    lam: float = 0.5,
    error: str = "squared",
    scale: str = "group_std",
    eps: float = 1e-6,
) -> jax.Array:
    """Token-level DCPO advantage f32[B,G,T].

    correct bool[B,G], confidence f32[B,G] (NaN = unparsed), response_mask bool[B,G,T], confidence_mask
    bool[B,G,T] (the tokens of the stated `CONFIDENCE: p` segment). The two rewards of `dcpo_rewards` are
    normalised within their group separately (`grpo_advantages(scale=...)`); confidence tokens get only the
    calibration advantage, every other response token only the accuracy advantage, padding 0. `lam` sets the
    calibration target (see `dcpo_rewards`), not a weight between the two advantages. A row whose confidence did
    not parse has no confidence tokens: its calibration reward -1 enters only its group's normalisation.
    """
    response_mask = jnp.asarray(response_mask, bool)
    confidence_mask = jnp.asarray(confidence_mask, bool)
    _check_rank(response_mask, 3, "response_mask", "bool[B,G,T]")
    if confidence_mask.shape != response_mask.shape:
        raise ValueError(
            f"confidence_mask {confidence_mask.shape} must have the shape of response_mask {response_mask.shape}."
        )
    acc_reward, cal_reward = dcpo_rewards(correct, confidence, lam=lam, error=error)
    if acc_reward.shape != response_mask.shape[:2]:
        raise ValueError(f"correct {acc_reward.shape} does not match response_mask {response_mask.shape} on [B,G].")
    acc_adv = grpo_advantages(acc_reward, scale=scale, eps=eps)[..., None]
    cal_adv = grpo_advantages(cal_reward, scale=scale, eps=eps)[..., None]
    is_conf = confidence_mask & response_mask
    return jnp.where(is_conf, cal_adv, jnp.where(response_mask, acc_adv, 0.0))


# ------------------------------------------------------------------------------------------------- registry


@chex.dataclass(frozen=True, kw_only=True, mappable_dataclass=False)
class AdvantageInputs:
    """Everything any registered estimator may read (a pytree, so it passes through jit).

    rewards         f32[B,G]    scalar reward per sample
    response_mask   bool[B,G,T] completion tokens that are trained on
    correct         bool[B,G]   verifier outcome (CAPO, DCPO); None -> estimators that need it raise
    lpm             f32[B,G]    actor's length-normalised log-prob (`lpm(old_logp, response_mask)`; CAPO)
    ref_ppl         f32[B,G]    reference-model perplexity exp(-lpm_ref) (CAPO mask) or None (no mask)
    confidence      f32[B,G]    stated confidence, NaN = unparsed (DCPO)
    confidence_mask bool[B,G,T] tokens of the confidence segment (DCPO)
    """

    rewards: jax.Array
    response_mask: jax.Array
    correct: jax.Array | None = None
    lpm: jax.Array | None = None
    ref_ppl: jax.Array | None = None
    confidence: jax.Array | None = None
    confidence_mask: jax.Array | None = None


def _require(inputs: AdvantageInputs, field: str, estimator: str, hint: str) -> jax.Array:
    value = getattr(inputs, field)
    if value is None:
        raise ValueError(f"advantage estimator {estimator!r} needs AdvantageInputs.{field}; {hint}")
    return value


def broadcast_to_tokens(seq_advantages: jax.Array, response_mask: jax.Array) -> jax.Array:
    """f32[B,G] -> f32[B,G,T]: the sequence advantage on every response token, 0 on padding."""
    response_mask = jnp.asarray(response_mask, bool)
    _check_rank(response_mask, 3, "response_mask", "bool[B,G,T]")
    if seq_advantages.shape != response_mask.shape[:2]:
        raise ValueError(f"advantages {seq_advantages.shape} do not match response_mask {response_mask.shape} on [B,G].")
    return jnp.where(response_mask, seq_advantages[..., None], 0.0)


AdvantageEstimator = Callable[..., jax.Array]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
# name -> rule(hparams) saying whether the estimator reads AdvantageInputs.ref_ppl with those hyper-parameters:
# the trainer loads (and runs) a reference model only when some rule says so, the reference-PPL mask is on, or
# the KL penalty is on.
_READS_REFERENCE: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
# Estimators that read the actor's own log-probs (AdvantageInputs.lpm): they need the old-log-prob pass before the
# advantages; the others let an on-policy step take those log-probs from the update's forward instead.
_READS_POLICY_LOGPROBS: set[str] = set()
# The reference-perplexity noise mask (`capo_mask`) is not part of any one estimator: `compute_advantages` applies
# it after whichever estimator runs, so CAPO (on by default) and e.g. GRPO (the CAPO paper's mask-only ablation)
# share it. These are its hyper-parameters and their defaults (mask off).
REF_MASK_HPARAMS: Mapping[str, Any] = {"use_ref_mask": False, "ref_high": 2.5, "ref_low": 1.05}


def register_advantage_estimator(
    name: str, *, reads_reference: Callable[[Mapping[str, Any]], bool] | None = None,
    reads_policy_logprobs: bool = False,
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: `fn(inputs: AdvantageInputs, **hparams) -> f32[B,G,T]` becomes ADVANTAGE_ESTIMATORS[name].

    reads_reference: `rule(hparams) -> bool`, True when the estimator uses `inputs.ref_ppl` (default: never).
    reads_policy_logprobs: the estimator uses `inputs.lpm` (the actor's log-probs before the update).
    """

    def decorate(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered.")
        ADVANTAGE_ESTIMATORS[name] = fn
        if reads_reference is not None:
            _READS_REFERENCE[name] = reads_reference
        if reads_policy_logprobs:
            _READS_POLICY_LOGPROBS.add(name)
        return fn

    return decorate


def estimator_reads_reference(name: str, hparams: Mapping[str, Any]) -> bool:
    """Whether `compute_advantages(name, inputs, **hparams)` reads the reference perplexity (AdvantageInputs.ref_ppl):
    the reference-PPL mask is on, or the estimator's own rule says so."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}.")
    if hparams.get("use_ref_mask", REF_MASK_HPARAMS["use_ref_mask"]):
        return True
    rule = _READS_REFERENCE.get(name)
    own = {k: v for k, v in hparams.items() if k not in REF_MASK_HPARAMS}
    return bool(rule(own)) if rule is not None else False


def estimator_reads_policy_logprobs(name: str) -> bool:
    """Whether estimator `name` reads AdvantageInputs.lpm, the actor's length-normalised log-probs."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}.")
    return name in _READS_POLICY_LOGPROBS


@register_advantage_estimator("grpo")
def grpo_estimator(inputs: AdvantageInputs, *, scale: str = "group_std", eps: float = 1e-6) -> jax.Array:
    """GRPO (scale="group_std"), group-mean/batch-std ("batch_std") or Dr.GRPO ("none") on `inputs.rewards`."""
    return broadcast_to_tokens(grpo_advantages(inputs.rewards, scale=scale, eps=eps), inputs.response_mask)


@register_advantage_estimator("pairwise", reads_policy_logprobs=True)
def pairwise_estimator(inputs: AdvantageInputs, *, surrogate: str = "logistic", **surrogate_params: Any) -> jax.Array:
    """`pairwise_advantages` with a registered surrogate (e.g. surrogate="hinge", margin=0.1) on scores = lpm."""
    correct = _require(inputs, "correct", "pairwise", "pass the verifier outcomes.")
    scores = _require(inputs, "lpm", "pairwise", "pass lpm(old_logp, response_mask).")
    adv = pairwise_advantages(correct, scores, get_surrogate(surrogate, **surrogate_params))
    return broadcast_to_tokens(adv, inputs.response_mask)


@register_advantage_estimator("capo", reads_policy_logprobs=True)
def capo_estimator(inputs: AdvantageInputs, *, tau: float) -> jax.Array:
    """The logistic pairwise advantage on (correct, lpm); CAPO's noise mask is applied by `compute_advantages`
    (`use_ref_mask`, on in the "capo" AlgorithmSpec), as for any estimator."""
    correct = _require(inputs, "correct", "capo", "pass the verifier outcomes.")
    scores = _require(inputs, "lpm", "capo", "pass lpm(old_logp, response_mask) of the actor.")
    return broadcast_to_tokens(capo_advantages(correct, scores, tau=tau), inputs.response_mask)


@register_advantage_estimator("dcpo")
def dcpo_estimator(
    inputs: AdvantageInputs, *, lam: float = 0.5, error: str = "squared", scale: str = "group_std", eps: float = 1e-6
) -> jax.Array:
    """`dcpo_advantages` on (correct, confidence, response_mask, confidence_mask)."""
    correct = _require(inputs, "correct", "dcpo", "pass the verifier outcomes.")
    confidence = _require(inputs, "confidence", "dcpo", "pass parsed confidences (NaN where unparsed).")
    conf_mask = _require(inputs, "confidence_mask", "dcpo", "pass the confidence-segment token mask.")
    return dcpo_advantages(
        correct, confidence, inputs.response_mask, conf_mask, lam=lam, error=error, scale=scale, eps=eps
    )


def compute_advantages(
    name: str,
    inputs: AdvantageInputs,
    *,
    use_ref_mask: bool = False,
    ref_high: float = 2.5,
    ref_low: float = 1.05,
    **hparams: Any,
) -> jax.Array:
    """ADVANTAGE_ESTIMATORS[name](inputs, **hparams) -> f32[B,G,T], then, with `use_ref_mask`, the reference-PPL
    noise mask: a sample that `capo_mask(correct, inputs.ref_ppl, ref_high, ref_low)` drops gets advantage 0 on
    every token (no mask when `inputs.ref_ppl` is None). The mask acts after the estimator, so a dropped sample
    still counted as every other sample's counterpart (CAPO's convention, whatever the estimator)."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}.")
    adv = ADVANTAGE_ESTIMATORS[name](inputs, **hparams)
    if not use_ref_mask or inputs.ref_ppl is None:
        return adv
    correct = _require(inputs, "correct", name, "the reference-PPL mask needs the verifier outcomes.")
    keep = capo_mask(correct, inputs.ref_ppl, ref_high=ref_high, ref_low=ref_low)
    return jnp.where(keep[..., None], adv, 0.0)


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageInputs",
    "broadcast_to_tokens",
    "capo_advantages",
    "capo_mask",
    "compute_advantages",
    "estimator_reads_policy_logprobs",
    "estimator_reads_reference",
    "dcpo_advantages",
    "dcpo_rewards",
    "grpo_advantages",
    "lpm",
    "pairwise_advantages",
    "pairwise_surrogate_loss",
    "register_advantage_estimator",
    "REF_MASK_HPARAMS",
]
