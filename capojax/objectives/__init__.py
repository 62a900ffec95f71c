r"""Objectives for GRPO, Dr.GRPO, GSPO, CAPO and DCPO: pure, jit-compatible functions of arrays.

Shapes: B prompts, G samples per prompt, T tokens. No model, config or Python-side state: everything here can be
jitted, vmapped and differentiated, and algorithms are data (`ALGORITHMS`, `ADVANTAGE_ESTIMATORS`).

Pairwise advantages, the 1/tau factor and the normalisation by G
------------------------------------------------------------------
For one group with correctness c in {0,1}^G and scores s (CAPO: s = lpm, the length-normalised log-prob), the
pairwise surrogate loss is L(s) = sum_{i: c_i=1} sum_{j: c_j=0} phi(s_i - s_j), and `pairwise_advantages`
returns A_k = -(1/G) dL/ds_k with dL/ds_k = c_k sum_{j wrong} phi'(s_k - s_j) - (1-c_k) sum_{i correct}
phi'(s_i - s_k). For the linear surrogate phi(t) = -t, phi' = -1, so A_k = (c_k n_wrong - (1-c_k) n_correct)/G
= c_k - n_correct/G = r_k - mean(r): dividing by G (not by the n_correct * n_wrong pairs an AUC would average
over) is exactly what makes Dr.GRPO the linear special case, so the algorithms differ only in phi (and the
policy-gradient weight of a group still grows with its reward variance, as in GRPO). For the logistic
phi_tau(t) = log(1 + exp(-t/tau)), phi_tau'(t) = -sigmoid(-t/tau)/tau, hence
A_k = +(1/(G tau)) sum_{j wrong} sigmoid((s_j - s_k)/tau) for a correct k and
A_k = -(1/(G tau)) sum_{i correct} sigmoid((s_k - s_i)/tau) for a wrong k. We keep the 1/tau: it is the exact
gradient of the contract's L; a write-up that omits it is differentiating tau * phi_tau instead, which only
rescales every advantage by the constant tau (an effective learning-rate change that Adam largely absorbs but
gradient clipping and KL/entropy coefficients do not). Two consequences worth knowing: as tau -> infinity,
2 tau A_capo -> A_drgrpo; and at CAPO's default tau = 0.6 the advantages are 0.83x Dr.GRPO's for tied scores
and up to 1.67x, weighted towards misranked pairs (a wrong sample with high lpm, a correct one with low lpm).

DCPO and the advantage swap
---------------------------
`dcpo_advantages` follows the paper's intent: the reasoning tokens (every response token outside the `CONFIDENCE:
p` segment) receive only the group-normalised *accuracy* advantage, and the confidence-segment tokens receive only
the group-normalised *calibration* advantage (minus the squared/absolute error between the stated confidence and
lam * group_accuracy + (1 - lam) * correct; `lam` mixes the calibration *target*, it does not weight the
calibration advantage against the accuracy one). Span: only the tokens of the `CONFIDENCE: p` segment itself get
the calibration advantage; the released code gives it to every token from the confidence line to the end of the
response (the same tokens plus whatever trails the number on that line, e.g. a period). An unparsable
or missing confidence line gets the worst calibration reward, -1: it has no confidence tokens, so the -1 only
lowers its group's calibration baseline, and all its tokens get the accuracy advantage. The released DCPO code
appears to assign the two the other way round; we do not reproduce that, and
`tests/objectives/test_dcpo_advantages.py::test_tokens_get_their_own_advantage_not_swapped` pins the choice.
"""

from capojax.objectives.advantages import (
    ADVANTAGE_ESTIMATORS,
    REF_MASK_HPARAMS,
    AdvantageInputs,
    broadcast_to_tokens,
    capo_advantages,
    capo_mask,
    compute_advantages,
    estimator_reads_policy_logprobs,
    estimator_reads_reference,
    dcpo_advantages,
    dcpo_rewards,
    grpo_advantages,
    lpm,
    pairwise_advantages,
    pairwise_surrogate_loss,
    register_advantage_estimator,
)
from capojax.objectives.algorithms import ALGORITHMS, AlgorithmSpec, Objective, get_algorithm, make_objective
from capojax.objectives.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    KL_KINDS,
    RATIO_LEVELS,
    aggregate,
    entropy_bonus,
    entropy_from_logits,
    kl_penalty,
    kl_per_token,
    masked_mean,
    policy_loss,
    ppo_clip,
    sequence_log_ratio,
    sequence_ratio,
)
from capojax.objectives.surrogates import (
    SURROGATES,
    Exponential,
    Hinge,
    Linear,
    Logistic,
    Surrogate,
    get_surrogate,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "ALGORITHMS",
    "AdvantageInputs",
    "AlgorithmSpec",
    "Exponential",
    "Hinge",
    "KL_ESTIMATORS",
    "KL_KINDS",
    "Linear",
    "Logistic",
    "Objective",
    "RATIO_LEVELS",
    "REF_MASK_HPARAMS",
    "SURROGATES",
    "Surrogate",
    "aggregate",
    "broadcast_to_tokens",
    "capo_advantages",
    "capo_mask",
    "compute_advantages",
    "estimator_reads_policy_logprobs",
    "estimator_reads_reference",
    "dcpo_advantages",
    "dcpo_rewards",
    "entropy_bonus",
    "entropy_from_logits",
    "get_algorithm",
    "get_surrogate",
    "grpo_advantages",
    "kl_penalty",
    "kl_per_token",
    "lpm",
    "make_objective",
    "masked_mean",
    "pairwise_advantages",
    "pairwise_surrogate_loss",
    "policy_loss",
    "ppo_clip",
    "register_advantage_estimator",
    "sequence_log_ratio",
    "sequence_ratio",
]
