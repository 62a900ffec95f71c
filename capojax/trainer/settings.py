"""What the trainer reads from a config before it builds anything, and the start-up checks of those values.

- `validate_config`: sizes that cannot work, an unknown rollout engine, an algorithm on data it cannot use, and
  `config.algo` keys set for another algorithm (`check_algo_keys`).
- `algorithm_settings`: the `AlgorithmSpec` named by `config.algo.name` with the config's overrides of its
  hyper-parameters (incl. Dr.GRPO's `norm_len`) and whether it needs a reference model.
- `config_dtype`: a dtype name of `config.model`.

Used by `Trainer.__init__` and by the dry run (`capojax.memory_plan`), through `capojax.trainer.programs`
(docs/architecture.md).

`config.algo` is one flat namespace that holds every algorithm's hyper-parameters (configs/base.py gives each a
default). Each `AlgorithmSpec` declares the keys it reads (`AlgorithmSpec.config_keys`); a key that only other
algorithms read and that was set — its value differs from the default of the algorithms that read it, or it was
given on the command line — is a start-up error instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax.numpy as jnp

from capojax import objectives
from capojax.data.templates import asks_for_confidence
from capojax.errors import ConfigError
from capojax.objectives.algorithms import CONFIG_KEYS, AlgorithmSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROLLOUT_ENGINES = ("jax", "vllm")
UNSET = ("", None)  # a config.algo value that keeps the algorithm's own default


def config_dtype(model_cfg, key: str):
    """The jnp dtype named by `config.model.<key>`; a ConfigError listing the known names otherwise."""
    name = str(model_cfg[key])
    if name not in DTYPES:
        raise ConfigError(f"config.model.{key}={name!r} is not a dtype; use one of {sorted(DTYPES)}")
    return DTYPES[name]


# ------------------------------------------------------------------------------------------------ the algorithm


def algo_overrides(defaults, algo_cfg, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """The config.algo values of a spec's own hyper-parameters (`defaults`' keys, config key renamed by `renames`);
    an empty string or None keeps the spec's default."""
    renames = renames or {}
    out = {}
    for key in defaults:
        cfg_key = renames.get(key, key)
        if cfg_key in algo_cfg and algo_cfg[cfg_key] not in UNSET:
            out[key] = algo_cfg[cfg_key]
    return out


@dataclasses.dataclass(frozen=True)
class AlgorithmSettings:
    """The configured algorithm: its spec and the config's overrides of the spec's defaults.

    advantage_overrides: keyword arguments of `spec.advantages` (e.g. tau, use_ref_mask)
    loss_overrides:      keyword arguments of `spec.objective`, always with `norm_len` = rollout.max_new_tokens
    needs_reference:     a reference model is loaded (KL penalty, or advantages that read the reference PPL)
    """

    spec: AlgorithmSpec
    advantage_overrides: Mapping[str, Any]
    loss_overrides: Mapping[str, Any]
    needs_reference: bool

    def loss_hparam(self, key: str) -> Any:
        return self.loss_overrides.get(key, self.spec.loss_hparams[key])

    @property
    def agg(self) -> str:
        return self.loss_hparam("agg")

    @property
    def with_entropy(self) -> bool:
        """Whether the update computes the token entropy (only an entropy bonus needs it)."""
        return bool(self.loss_hparam("entropy_coef"))


def algorithm_settings(config) -> AlgorithmSettings:
    """The algorithm of `config.algo.name` with the config's overrides; checks the `config.algo` keys first."""
    spec = objectives.get_algorithm(str(config.algo.name))
    check_algo_keys(config.algo)
    adv = algo_overrides(spec.advantage_hparams, config.algo)
    loss = algo_overrides(spec.loss_hparams, config.algo, CONFIG_KEYS)
    # seq-mean-token-sum-norm (Dr.GRPO) divides token sums by a constant length: the response limit, not the
    # padded bucket, so the loss does not depend on batch shapes. The other aggregations ignore it.
    loss["norm_len"] = int(config.rollout.max_new_tokens)
    needs_reference = bool(config.algo.kl_coef) or spec.reads_reference(**adv)
    return AlgorithmSettings(spec, adv, loss, needs_reference)


def _readers(key: str) -> list[AlgorithmSpec]:
    return [spec for spec in objectives.ALGORITHMS.values() if key in spec.config_keys]


def check_algo_keys(algo_cfg, explicit: Iterable[str] = ()) -> None:
    """A ConfigError for a `config.algo` key that the algorithm `algo_cfg.name` does not read but that was set:
    given on the command line (`explicit`, keys without the "algo." prefix) or different from the default of every
    algorithm that reads it. Base-config defaults of other algorithms' keys are fine. A key no algorithm reads is
    an error too (a misspelt key added in a config file)."""
    spec = objectives.get_algorithm(str(algo_cfg.name))
    explicit = set(explicit)
    for key in algo_cfg.keys():
        if key == "name" or key in spec.config_keys:
            continue
        readers = _readers(key)
        if not readers:
            known = sorted(set().union(*(s.config_keys for s in objectives.ALGORITHMS.values())))
            raise ConfigError(f"config.algo.{key} is read by no algorithm; remove it (config.algo keys: name, "
                              f"{', '.join(known)})")
        value = algo_cfg[key]
        defaults = [reader.config_default(key) for reader in readers]
        if key in explicit or (value not in UNSET and value not in defaults):
            names = ", ".join(r.name for r in readers)
            raise ConfigError(
                f"config.algo.{key}={value!r} is read only by {names}, not by config.algo.name={spec.name!r}, so it "
                f"would be ignored; remove the {key} setting (from the command line or the config file), or set "
                f"--config.algo.name to an algorithm that reads it ({names})")


def drop_foreign_algo_keys(algo_cfg) -> None:
    """Puts every `config.algo` key that the algorithm `algo_cfg.name` does not read back to the default of the
    algorithms that read it, in place. For a config shared by several algorithms (a preset derived from another
    algorithm's recipe, the study's run config) where another algorithm's setting is meant for that algorithm."""
    spec = objectives.get_algorithm(str(algo_cfg.name))
    for key in algo_cfg.keys():
        readers = _readers(key)
        if key != "name" and key not in spec.config_keys and readers:
            algo_cfg[key] = readers[0].config_default(key)


# ------------------------------------------------------------------------------------------------ other checks


def validate_config(config) -> None:
    """Catches inconsistent sizes and settings before anything expensive happens."""
    t, r = config.train, config.rollout
    if t.prompts_per_step <= 0 or t.ppo_mini_batch <= 0:
        raise ConfigError("config.train.prompts_per_step and config.train.ppo_mini_batch must be positive")
    if t.prompts_per_step % t.ppo_mini_batch:
        raise ConfigError(
            f"config.train.prompts_per_step={t.prompts_per_step} is not a multiple of "
            f"config.train.ppo_mini_batch={t.ppo_mini_batch}; each rollout batch must split into whole mini-batches"
        )
    rows = t.ppo_mini_batch * r.n
    if t.micro_batch and rows % t.micro_batch:
        raise ConfigError(
            f"config.train.micro_batch={t.micro_batch} does not divide a mini-batch of {rows} rows "
            f"(ppo_mini_batch x rollout.n); pick a divisor"
        )
    if t.steps <= 0:
        raise ConfigError(f"config.train.steps must be positive, got {t.steps}")
    if r.engine not in ROLLOUT_ENGINES:
        raise ConfigError(f"config.rollout.engine={r.engine!r} is not one of {', '.join(ROLLOUT_ENGINES)}")
    check_algorithm_fits_data(config)
    check_algo_keys(config.algo)


def check_algorithm_fits_data(config) -> None:
    """An algorithm that declares it needs a stated confidence (`AlgorithmSpec.needs_confidence`, DCPO) cannot
    train on prompts that ask for none: every calibration reward would be the constant "unparsed" value."""
    spec = objectives.get_algorithm(config.algo.name)
    if spec.needs_confidence and not asks_for_confidence(config.data.template):
        raise ConfigError(
            f"config.algo.name={spec.name!r} needs a stated confidence, but config.data.template="
            f"{config.data.template!r} does not ask for a CONFIDENCE line. Set --config.data.template=dcpo "
            f"(or pick an algorithm that does not read confidences, e.g. grpo)."
        )


def parses_confidence(spec, data_cfg) -> bool:
    """Whether responses are parsed for `CONFIDENCE: p`: when the algorithm needs it, or when the prompts ask for
    it anyway (e.g. GRPO on the DCPO template, DCPO's baseline: the confidence is logged, not rewarded)."""
    return spec.needs_confidence or asks_for_confidence(data_cfg.template)
