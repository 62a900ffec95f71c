"""Algorithm specs: each algorithm is data (advantage estimator name, ratio level, default hyper-parameters),
so the training loop calls `spec.advantages(inputs)` and `spec.objective()` and never branches on a name.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

import jax

from capojax.errors import ConfigError

from capojax.objectives.advantages import (ADVANTAGE_ESTIMATORS, REF_MASK_HPARAMS, AdvantageInputs,
                                           compute_advantages, estimator_reads_policy_logprobs,
                                           estimator_reads_reference)
from capojax.objectives.losses import entropy_bonus, kl_penalty, policy_loss

# objective(logp f32[n,T], entropy f32[n,T] | None, batch dict) -> (loss scalar, metrics dict of scalars);
# batch holds "old_logp" f32[n,T], "advantages" f32[n,T], "response_mask" bool[n,T] and, when kl_coef > 0,
# "ref_logp" f32[n,T]. This is the trainer's `Objective` type (capojax/trainer/update.py).
Objective = Callable[[jax.Array, jax.Array | None, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]

_LOSS_KEYS = ("clip_low", "clip_high", "dual_clip", "agg", "norm_len", "kl_coef", "kl_kind", "entropy_coef")
# The `config.algo` name of a hyper-parameter where it differs from the keyword (configs/base.py).
CONFIG_KEYS = {"agg": "loss_agg"}
# Hyper-parameters the trainer sets from other config sections, never from config.algo (norm_len: the response
# limit rollout.max_new_tokens).
_NOT_IN_ALGO_CONFIG = ("norm_len",)


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(d))


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """What distinguishes one algorithm from another.

    advantage:         key in ADVANTAGE_ESTIMATORS
    ratio_level:       "token" (PPO/GRPO) or "sequence" (GSPO)
    advantage_hparams: keyword defaults for the estimator, plus the reference-PPL mask's (`REF_MASK_HPARAMS`:
                       use_ref_mask, ref_high, ref_low; off unless the spec turns it on), which any estimator takes
    loss_hparams:      clip_low, clip_high, dual_clip, agg, norm_len, kl_coef, kl_kind, entropy_coef
    config_keys:       (derived) the `config.algo` keys this algorithm reads: its advantage and loss
                       hyper-parameters under their config names (`CONFIG_KEYS`), without `norm_len`. The trainer
                       refuses a key set in the config that only other algorithms read (capojax.trainer.settings).
    needs_confidence:  the advantages read a stated confidence (AdvantageInputs.confidence / confidence_mask), so
                       the prompts must ask for a `CONFIDENCE: p` line and the responses must be parsed for it
                       (DCPO). The trainer refuses such an algorithm on a template that asks for none, instead of
                       training on a constant "unparsed" calibration reward.
    """

    name: str
    advantage: str
    ratio_level: str
    advantage_hparams: Mapping[str, Any]
    loss_hparams: Mapping[str, Any]
    needs_confidence: bool = False

    def __post_init__(self):
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"{self.name}: unknown advantage estimator {self.advantage!r}.")
        unknown = set(self.loss_hparams) - set(_LOSS_KEYS)
        if unknown:
            raise ValueError(f"{self.name}: unknown loss hparams {sorted(unknown)}; known: {list(_LOSS_KEYS)}.")
        object.__setattr__(self, "advantage_hparams", _frozen({**REF_MASK_HPARAMS, **self.advantage_hparams}))
        object.__setattr__(self, "loss_hparams", _frozen({**_LOSS_DEFAULTS, **self.loss_hparams}))

    @property
    def config_keys(self) -> frozenset[str]:
        loss = (CONFIG_KEYS.get(k, k) for k in self.loss_hparams if k not in _NOT_IN_ALGO_CONFIG)
        return frozenset((*self.advantage_hparams, *loss))

    def config_default(self, config_key: str) -> Any:
        """This algorithm's default of one of its `config_keys`."""
        if config_key in self.advantage_hparams:
            return self.advantage_hparams[config_key]
        by_config_name = {CONFIG_KEYS.get(k, k): k for k in self.loss_hparams}
        if config_key not in by_config_name or config_key in _NOT_IN_ALGO_CONFIG:
            raise KeyError(f"{self.name} does not read config.algo.{config_key}; it reads {sorted(self.config_keys)}")
        return self.loss_hparams[by_config_name[config_key]]

    def advantages(self, inputs: AdvantageInputs, **overrides: Any) -> jax.Array:
        """Token-level advantages f32[B,G,T] with the spec's defaults, `overrides` taking precedence."""
        return compute_advantages(self.advantage, inputs, **{**self.advantage_hparams, **overrides})

    def reads_reference(self, **overrides: Any) -> bool:
        """Whether the advantages (with the spec's defaults, `overrides` taking precedence) read the reference
        perplexity, i.e. whether the trainer needs a reference model even without a KL penalty."""
        return estimator_reads_reference(self.advantage, {**self.advantage_hparams, **overrides})

    @property
    def reads_policy_logprobs(self) -> bool:
        """Whether the advantages read the actor's own log-probs (AdvantageInputs.lpm), so that they need the
        old-log-prob pass before the update (CAPO); see `capojax.trainer.programs.StepPrograms.old_logp_in_update`."""
        return estimator_reads_policy_logprobs(self.advantage)

    def objective(self, **overrides: Any) -> Objective:
        """The trainer's objective with the spec's loss defaults; see `make_objective`."""
        unknown = set(overrides) - set(_LOSS_KEYS)
        if unknown:
            raise ValueError(f"{self.name}: unknown loss overrides {sorted(unknown)}; known: {list(_LOSS_KEYS)}.")
        return make_objective(ratio_level=self.ratio_level, **{**self.loss_hparams, **overrides})


_LOSS_DEFAULTS = dict(
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    agg="token-mean",
    norm_len=None,
    kl_coef=0.0,
    kl_kind="k3",
    entropy_coef=0.0,
)


def make_objective(
    *,
    ratio_level: str = "token",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    norm_len: int | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    entropy_coef: float = 0.0,
) -> Objective:
    """loss = policy_loss + kl_coef * KL(pi || pi_ref) - entropy_coef * entropy, all aggregated with `agg`.

    The KL term (and the "ref_logp" batch entry) is only needed when kl_coef > 0; it is still logged when
    "ref_logp" is present. Metrics: those of `policy_loss`, plus kl, entropy, loss/policy|kl|entropy.
    """

    def objective(logp, entropy, batch):
        mask = batch["response_mask"]
        loss, metrics = policy_loss(
            logp,
            batch["old_logp"],
            batch["advantages"],
            mask,
            ratio_level=ratio_level,
            clip_low=clip_low,
            clip_high=clip_high,
            dual_clip=dual_clip,
            agg=agg,
            norm_len=norm_len,
        )
        metrics = dict(metrics)
        if kl_coef or "ref_logp" in batch:
            if "ref_logp" not in batch:
                raise ValueError("kl_coef > 0 needs batch['ref_logp'] (reference-model log-probs, f32[n,T]).")
            kl_loss, kl_metrics = kl_penalty(logp, batch["ref_logp"], mask, kl_kind, agg=agg, norm_len=norm_len)
            metrics.update(kl_metrics)
            if kl_coef:
                loss = loss + kl_coef * kl_loss
                metrics["loss/kl"] = jax.lax.stop_gradient(kl_loss)
        if entropy is not None:
            ent, ent_metrics = entropy_bonus(entropy, mask, agg=agg, norm_len=norm_len)
            metrics.update(ent_metrics)
            if entropy_coef:
                loss = loss - entropy_coef * ent
        elif entropy_coef:
            raise ValueError("entropy_coef > 0 needs the per-token entropy (pass it, not None).")
        metrics["loss/policy"] = metrics["pg_loss"]
        metrics["loss/total"] = jax.lax.stop_gradient(loss)
        return loss, metrics

    return objective


ALGORITHMS: dict[str, AlgorithmSpec] = {
    # GRPO (DeepSeekMath): std-normalised group advantage, token ratio, per-sequence token mean.
    "grpo": AlgorithmSpec(
        name="grpo",
        advantage="grpo",
        ratio_level="token",
        advantage_hparams={"scale": "group_std", "eps": 1e-6},
        loss_hparams={"clip_low": 0.2, "clip_high": 0.2, "agg": "seq-mean-token-mean"},
    ),
    # Dr.GRPO: no std division, token sums divided by a constant length (pass norm_len = max response length).
    "drgrpo": AlgorithmSpec(
        name="drgrpo",
        advantage="grpo",
        ratio_level="token",
        advantage_hparams={"scale": "none"},
        loss_hparams={"clip_low": 0.2, "clip_high": 0.2, "agg": "seq-mean-token-sum-norm"},
    ),
    # GSPO: GRPO advantage, sequence-level length-normalised ratio, very narrow clip range (paper: 3e-4 / 4e-4).
    "gspo": AlgorithmSpec(
        name="gspo",
        advantage="grpo",
        ratio_level="sequence",
        advantage_hparams={"scale": "group_std", "eps": 1e-6},
        loss_hparams={"clip_low": 3e-4, "clip_high": 4e-4, "agg": "seq-mean-token-mean"},
    ),
    # CAPO: logistic pairwise advantage on lpm with the reference-perplexity noise mask. seq-mean-token-mean
    # makes the first PPO step the surrogate's gradient through lpm (theorem 7); the paper presets use verl's
    # token-mean (configs/README.md). tau 0.6 is both papers' 1.5B value (0.5 at 7B, set by capo_7b).
    "capo": AlgorithmSpec(
        name="capo",
        advantage="capo",
        ratio_level="token",
        advantage_hparams={"tau": 0.6, "ref_high": 2.5, "ref_low": 1.05, "use_ref_mask": True},
        loss_hparams={"clip_low": 0.2, "clip_high": 0.2, "agg": "seq-mean-token-mean"},
    ),
    # DCPO: accuracy advantage on reasoning tokens, calibration advantage on confidence tokens.
    "dcpo": AlgorithmSpec(
        name="dcpo",
        advantage="dcpo",
        ratio_level="token",
        advantage_hparams={"lam": 0.5, "error": "squared", "scale": "group_std", "eps": 1e-6},
        loss_hparams={"clip_low": 0.2, "clip_high": 0.2, "agg": "token-mean"},
        needs_confidence=True,
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}.")
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "CONFIG_KEYS", "AlgorithmSpec", "Objective", "get_algorithm", "make_objective"]
