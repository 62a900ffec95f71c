"""The RL loop: one step is prompts -> rollouts -> rewards -> old/reference log-probs -> advantages -> PPO
updates -> metrics -> checkpoint -> weight sync (see DESIGN.md). Every phase is timed (`timing/*`).

The algorithm is data: `config.algo.name` picks an `AlgorithmSpec` from `capojax.objectives.ALGORITHMS`, whose
advantage estimator and objective this loop calls without ever branching on the name.

Start-up writes nothing to the workdir until the config is validated, the workdir checked, the model and
tokenizer loaded and the data built; the resources opened after that (checkpointer, logger, rollout engine) are
closed again if a later part of `Trainer.__init__` fails. SIGTERM / SIGINT stop the run at the next step boundary
(or right after the rollout, abandoning it) with a checkpoint of the last completed step; see
`capojax.trainer.preemption`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from capojax import checkpoint as ckpt_lib
from capojax import eval_pipeline
from capojax import metrics as metrics_lib
from capojax import objectives
from capojax.data import pipeline
from capojax.data.templates import asks_for_confidence
from capojax.errors import ConfigError, StoppedBySignal
from capojax.models import load_pretrained, save_pretrained
from capojax.models.resolve import resolve_model_path
from capojax.rollout.base import RolloutEngine, SamplingParams
from capojax.rollout.layout import trainer_devices
from capojax.sharding import make_mesh, to_host
from capojax.tokenizer import load_tokenizer, special_token_ids
from capojax.trainer import batch as batch_lib
from capojax.trainer import faults
from capojax.trainer.logger import MetricsLogger
from capojax.trainer.logprobs import make_logprob_fn
from capojax.trainer.optim import build_optimizer
from capojax.trainer.preemption import StopSignals
from capojax.trainer.scoring import score_rollout
from capojax.trainer.update import make_update_fn

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROLLOUT_ENGINES = ("jax", "vllm")


def algo_overrides(defaults, algo_cfg, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """The config.algo values of a spec's own hyper-parameters (`defaults`' keys, config key renamed by `renames`);
    an empty string or None keeps the spec's default."""
    renames = renames or {}
    out = {}
    for key in defaults:
        cfg_key = renames.get(key, key)
        if cfg_key in algo_cfg and algo_cfg[cfg_key] not in ("", None):
            out[key] = algo_cfg[cfg_key]
    return out


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite updates in a row); the message says why."""


def _dtype(name: str, key: str):
    if name not in DTYPES:
        raise ConfigError(f"config.{key}={name!r} is not a dtype; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def validate_config(config) -> None:
    """Catches inconsistent sizes before anything expensive happens."""
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


def _timer(timings: dict[str, float], name: str):
    @contextlib.contextmanager
    def timed():
        start = time.perf_counter()
        yield
        timings[f"timing/{name}"] = timings.get(f"timing/{name}", 0.0) + time.perf_counter() - start

    return timed()


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    mask = np.asarray(mask, bool)
    return float(np.asarray(x)[mask].mean()) if mask.any() else float("nan")


def make_rollout_engine(config, model, special, *, mesh, checkpoint_dir: str) -> RolloutEngine:
    """The engine named by `config.rollout.engine`."""
    engine = config.rollout.engine
    if engine == "jax":
        from capojax.rollout.sampler import JaxRolloutEngine

        return JaxRolloutEngine(model, pad_id=special.pad_id, eos_ids=special.eos_ids, mesh=mesh)
    if engine == "vllm":
        from capojax.rollout.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine.from_config(config, model=model, checkpoint_dir=checkpoint_dir, eos_ids=special.eos_ids,
                                             pad_id=special.pad_id)
    raise ConfigError(f"config.rollout.engine={engine!r} is not one of 'jax', 'vllm'")


@dataclasses.dataclass
class StepResult:
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


def _make_configured_mesh(mesh_cfg, devices):
    try:
        return make_mesh(int(mesh_cfg.fsdp), int(mesh_cfg.tp), devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh.fsdp={mesh_cfg.fsdp}, config.mesh.tp={mesh_cfg.tp} is impossible here: {e}; "
                          f"choose fsdp x tp <= {len(devices)} (fsdp=-1 takes all devices / tp)") from e


class Trainer:
    """Owns the actor, the reference, the optimizer state, the data iterator and the rollout engine."""

    def __init__(self, config, workdir: str):
        # Everything up to the data pipeline only reads: a failed start leaves the workdir as it was (or absent).
        validate_config(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.spec = objectives.get_algorithm(config.algo.name)
        t = config.train
        # Refuse a foreign workdir before the (slow) model load; the Checkpointer repeats the check and writes.
        ckpt_lib.check_workdir(self.workdir, config, force=bool(config.checkpoint.force_resume))

        self.mesh = _make_configured_mesh(config.mesh, trainer_devices(config, jax.devices()))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("fsdp"))
        self.model_path = resolve_model_path(config.model)
        if config.rollout.engine == "vllm" and config.rollout.vllm_url and not config.rollout.vllm_launch:
            from capojax.rollout.vllm_engine import require_server

            require_server(str(config.rollout.vllm_url), self.model_path)  # before anything is written
        self.tokenizer = load_tokenizer(config.model.tokenizer_path or self.model_path)
        self.special = special_token_ids(self.tokenizer, self.model_path)

        param_dtype = _dtype(config.model.param_dtype, "model.param_dtype")
        compute_dtype = _dtype(config.model.dtype, "model.dtype")
        actor, self.model_config = load_pretrained(
            self.model_path, dtype=param_dtype, compute_dtype=compute_dtype, mesh=self.mesh, remat=bool(config.model.remat)
        )
        self.graphdef, self.params = nnx.split(actor)
        self._adv_overrides = algo_overrides(self.spec.advantage_hparams, config.algo)
        self.needs_reference = bool(config.algo.kl_coef) or self.spec.reads_reference(**self._adv_overrides)
        self.ref_params = None
        if self.needs_reference:
            ref_dtype = _dtype(config.model.ref_dtype, "model.ref_dtype")
            ref, _ = load_pretrained(self.model_path, dtype=ref_dtype, compute_dtype=compute_dtype, mesh=self.mesh)
            self.ref_graphdef, self.ref_params = nnx.split(ref)

        self.data = pipeline.build_prompt_data(config.data, self.tokenizer)
        # Every process reads the same global batch rather than a 1/num_processes shard: the rollout and the
        # updates are SPMD programs over the global mesh whose host inputs must agree, and prompts are a few KB.
        self.iterator = pipeline.make_iterator(
            self.data, batch_size=int(t.prompts_per_step), seed=int(config.data.shuffle_seed), multihost=False
        )

        self.updates_per_step = int(t.ppo_epochs) * (int(t.prompts_per_step) // int(t.ppo_mini_batch))
        self.optimizer = build_optimizer(config.optim, int(t.steps) * self.updates_per_step)
        self.opt_state = self._init_opt_state()
        self.rng = jax.random.key(int(t.seed))
        self.step = 0

        self._loss_overrides = algo_overrides(self.spec.loss_hparams, config.algo, {"agg": "loss_agg"})
        # seq-mean-token-sum-norm (Dr.GRPO) divides token sums by a constant length: the response limit, not the
        # padded bucket, so the loss does not depend on batch shapes. The other aggregations ignore it.
        self._loss_overrides["norm_len"] = int(config.rollout.max_new_tokens)
        objective = self.spec.objective(**self._loss_overrides)
        rows_per_update = int(t.ppo_mini_batch) * int(config.rollout.n)
        micro_batches = rows_per_update // int(t.micro_batch) if t.micro_batch else 1
        temperature = float(config.rollout.temperature) or 1.0
        agg = self._loss_overrides.get("agg", self.spec.loss_hparams["agg"])
        self.update_fn = make_update_fn(
            self.graphdef, self.optimizer, objective, temperature=temperature, micro_batches=micro_batches,
            weight_by_tokens=agg == "token-mean", mesh=self.mesh,
            with_entropy=bool(self._loss_overrides.get("entropy_coef", self.spec.loss_hparams["entropy_coef"])),
        )
        chunk = int(t.micro_batch) or None
        self.logprob_fn = make_logprob_fn(self.graphdef, temperature=temperature, rows_per_chunk=chunk, mesh=self.mesh)
        if self.needs_reference:
            self.ref_logprob_fn = make_logprob_fn(self.ref_graphdef, temperature=temperature, rows_per_chunk=chunk,
                                                 mesh=self.mesh)
        self.val_logprob_fn = make_logprob_fn(self.graphdef, temperature=1.0, rows_per_chunk=chunk, mesh=self.mesh)
        self.advantage_fn = jax.jit(functools.partial(self.spec.advantages, **self._adv_overrides))

        self._bad_in_a_row = 0
        self._saved_step: int | None = None

        # From here on the run writes to the workdir and holds resources; a failure closes what was opened.
        with contextlib.ExitStack() as opened:
            self.checkpointer = ckpt_lib.Checkpointer(self.workdir, config=config)
            opened.callback(self.checkpointer.close)
            self.logger = MetricsLogger(self.workdir)
            opened.callback(self.logger.close)
            if jax.process_index() == 0:
                pipeline.write_manifest(self.data, os.path.join(self.workdir, "data_manifest.json"))
            self._restore_if_any()
            self.engine = make_rollout_engine(
                config, nnx.merge(self.graphdef, self.params), self.special, mesh=self.mesh,
                checkpoint_dir=self.model_path,
            )
            opened.callback(self.engine.close)
            self._resources = opened.pop_all()

    # ------------------------------------------------------------------------------------------ setup

    def _init_opt_state(self):
        param_shardings = jax.tree.map(lambda x: x.sharding, self.params)
        abstract = jax.eval_shape(self.optimizer.init, self.params)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        shardings = optax.tree_map_params(
            self.optimizer,
            lambda _, sharding: sharding,
            abstract,
            param_shardings,
            transform_non_params=lambda _: replicated,
        )
        return jax.jit(self.optimizer.init, out_shardings=shardings)(self.params)

    def _restore_if_any(self) -> None:
        latest = self.checkpointer.latest_step()
        if latest is None:
            # A fresh start, possibly over the leftovers of a start that never saved: those rows are not this run's.
            self.logger.truncate_after(-1)
            return
        restored = self.checkpointer.restore(params=self.params, opt_state=self.opt_state)
        self.params, self.opt_state = restored.params, restored.opt_state
        self.rng = jax.random.wrap_key_data(jnp.asarray(restored.rng, jnp.uint32))
        self.iterator.set_state(restored.data_state)
        self.step = self._saved_step = restored.step
        self.logger.truncate_after(self.step)
        log.info("resumed from %s at step %d", self.checkpointer.directory, self.step)

    # ------------------------------------------------------------------------------------------ one step

    def _put(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(x, self.batch_sharding)

    def sampling_params(self, step: int, *, n: int, temperature: float, key: jax.Array | None = None) -> SamplingParams:
        """The sampling settings of one engine call; its seed is drawn from `key` (default: the run's RNG) and `step`."""
        r = self.config.rollout
        key = self.rng if key is None else key
        seed = int(jax.random.randint(jax.random.fold_in(key, step), (), 0, 2**31 - 1))
        return SamplingParams(
            n=n, max_new_tokens=int(r.max_new_tokens), temperature=temperature, top_p=float(r.top_p),
            top_k=int(r.top_k), stop_token_ids=tuple(self.special.eos_ids), seed=seed,
        )

    def train_step(self, stop: StopSignals | None = None) -> StepResult | None:
        """One RL step. Returns None, with the step undone (data iterator rewound), when `stop` agrees right after
        the rollout that the run must stop: the rollout is abandoned rather than graded and trained on."""
        config, t = self.config, self.config.train
        step = self.step + 1
        timings: dict[str, float] = {}
        start = time.perf_counter()
        data_state = self.iterator.get_state()
        prompts = next(self.iterator)
        G = int(config.rollout.n)
        B = len(prompts)

        with _timer(timings, "rollout"):
            rollout = self.engine.generate(
                prompts.prompt_ids, self.sampling_params(step, n=G, temperature=float(config.rollout.temperature))
            )
        faults.maybe_signal("rollout", step)
        if stop is not None and stop.agreed():
            self.iterator.set_state(data_state)  # the resumed run redoes this step from its first prompt
            return None
        if hasattr(self.engine, "sleep"):  # a co-located vLLM server frees its GPU memory until the weight sync
            self.engine.sleep()
        seq = batch_lib.assemble(prompts.prompt_ids, rollout, pad_id=self.special.pad_id)
        T = seq.response_mask.shape[1]
        with _timer(timings, "reward"):
            scores = score_rollout(
                rollout, prompts.answers, self.tokenizer, timeout=float(config.reward.timeout),
                workers=int(config.reward.workers) or None, with_confidence=parses_confidence(self.spec, config.data),
                length=T, require_boxed=bool(config.reward.require_boxed),
            )
        correct = scores.correct

        arrays = {k: self._put(getattr(seq, k)) for k in ("input_ids", "attention_mask", "positions", "response_mask")}
        with _timer(timings, "old_logp"):
            old_logp, entropy = self.logprob_fn(
                self.params, arrays["input_ids"], arrays["attention_mask"], arrays["positions"], prompt_len=seq.prompt_len
            )
            old_logp = jax.block_until_ready(old_logp)
        ref_logp = None
        if self.needs_reference:
            with _timer(timings, "ref_logp"):
                ref_logp, _ = self.ref_logprob_fn(
                    self.ref_params, arrays["input_ids"], arrays["attention_mask"], arrays["positions"],
                    prompt_len=seq.prompt_len,
                )
                ref_logp = jax.block_until_ready(ref_logp)

        with _timer(timings, "advantage"):
            mask3 = arrays["response_mask"].reshape(B, G, T)
            lpm = objectives.lpm(old_logp.reshape(B, G, T), mask3)
            ref_ppl = jnp.exp(-objectives.lpm(ref_logp.reshape(B, G, T), mask3)) if ref_logp is not None else None
            inputs = objectives.AdvantageInputs(
                rewards=jnp.asarray(correct.reshape(B, G), jnp.float32),
                response_mask=mask3,
                correct=jnp.asarray(correct.reshape(B, G)),
                lpm=lpm,
                ref_ppl=ref_ppl,
                confidence=jnp.asarray(scores.confidence.reshape(B, G)),
                confidence_mask=jnp.asarray(scores.confidence_mask.reshape(B, G, T)),
            )
            advantages = self.advantage_fn(inputs).reshape(B * G, T)
            if faults.should("nan", "advantages", step):
                advantages = advantages * jnp.nan
            advantages = jax.block_until_ready(jax.device_put(advantages, self.batch_sharding))

        rows = {**arrays, "old_logp": old_logp, "advantages": advantages}
        if ref_logp is not None:
            rows["ref_logp"] = ref_logp
        with _timer(timings, "update"):
            update_metrics = self._ppo_updates(rows, step)

        with _timer(timings, "sync"):
            sync_metrics = self.engine.update_weights(self.params) or {}
        # The engine's own timing (if it reports one) is more precise than the wall clock around it.
        timings["timing/sync"] = float(sync_metrics.pop("timing/sync", timings["timing/sync"]))

        timings["timing/step"] = time.perf_counter() - start
        metrics = self._step_metrics(
            B, G, rollout, seq, scores, to_host(old_logp), to_host(entropy), to_host(lpm),
            None if ref_ppl is None else to_host(ref_ppl), to_host(advantages), timings,
        )
        metrics.update(update_metrics)
        metrics.update(sync_metrics)
        self.step = step
        return StepResult(metrics, self._text_samples(prompts, rollout, scores))

    def _ppo_updates(self, rows: dict[str, jax.Array], step: int) -> dict[str, float]:
        t = self.config.train
        n_rows = rows["input_ids"].shape[0]
        per_update = int(t.ppo_mini_batch) * int(self.config.rollout.n)
        gen = np.random.default_rng([int(t.seed), step])
        collected: list[dict[str, Any]] = []
        host_rows = {k: to_host(v) for k, v in rows.items()}
        for _ in range(int(t.ppo_epochs)):
            order = gen.permutation(n_rows)
            for first in range(0, n_rows, per_update):
                index = order[first : first + per_update]
                minibatch = {k: self._put(v[index]) for k, v in host_rows.items()}
                self.params, self.opt_state, m = self.update_fn(self.params, self.opt_state, minibatch)
                if not collected:
                    faults.maybe_signal("update", step)
                collected.append(m)
        collected = [jax.tree.map(to_host, m) for m in collected]
        skipped = sum(float(m["update/skipped"]) for m in collected)
        self._bad_in_a_row = self._bad_in_a_row + 1 if skipped else 0
        out = {k: float(np.mean([m[k] for m in collected])) for k in collected[0] if k != "update/skipped"}
        out["update/skipped"] = skipped
        out["update/count"] = float(len(collected))
        out["lr"] = float(self._current_lr())
        if self._bad_in_a_row >= int(t.max_bad_steps):
            raise TrainingError(
                f"{self._bad_in_a_row} steps in a row had a non-finite loss or gradient (the updates were skipped, "
                f"parameters untouched); stopping at step {step}. Lower config.optim.lr, check config.model.dtype, or "
                f"raise config.train.max_bad_steps. The last good checkpoint is in {self.checkpointer.directory}."
            )
        return out

    def _current_lr(self) -> float:
        for state in jax.tree.leaves(self.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState)):
            if isinstance(state, optax.ScaleByScheduleState):
                from capojax.trainer.optim import build_schedule

                return build_schedule(self.config.optim, 1)(int(state.count))
        return float(self.config.optim.lr)

    def _step_metrics(self, B, G, rollout, seq, scores, old_logp, entropy, lpm, ref_ppl, advantages, timings):
        correct = scores.correct.reshape(B, G)
        mask = seq.response_mask
        lpm = lpm.reshape(B, G)
        conf = np.exp(lpm)
        tokens = int(mask.sum())
        gap = np.abs(old_logp - seq.sampler_logp)[mask]
        group_std = correct.astype(np.float32).std(axis=1)
        m: dict[str, float] = {
            "reward/mean": float(correct.mean()),
            "accuracy": float(correct.mean()),
            "auc_mean": float(metrics_lib.auc_mean(lpm, correct)),
            "auroc": float(metrics_lib.auroc(lpm.ravel(), correct.ravel())),
            "ece": float(metrics_lib.ece(conf, correct)),
            "brier": float(metrics_lib.brier(conf, correct)),
            "lpm/correct": _masked_mean(lpm, correct),
            "lpm/wrong": _masked_mean(lpm, ~correct),
            "entropy": _masked_mean(entropy, mask),
            "response_len/mean": float(rollout.lengths.mean()),
            "response_len/max": float(rollout.lengths.max()),
            "response/finished_frac": float(rollout.finished.mean()),
            "frac_zero_std": float((group_std == 0).mean()),
            "adv/abs_mean": _masked_mean(np.abs(advantages), mask),
            "adv/max": float(advantages[mask].max()) if mask.any() else float("nan"),
            "adv/min": float(advantages[mask].min()) if mask.any() else float("nan"),
            "sampler/logp_gap_max": float(gap.max()) if gap.size else 0.0,
            "sampler/logp_gap_mean": float(gap.mean()) if gap.size else 0.0,
            "reward/grader_timeouts": float(scores.timeouts),
            "reward/grader_crashes": float(scores.crashes),
            "tokens_per_s": tokens / max(timings["timing/step"], 1e-9),
            "tokens": float(tokens),
            **timings,
        }
        if ref_ppl is not None:
            m["ref_ppl/mean"] = float(np.mean(ref_ppl))
        stated = scores.confidence.reshape(B, G)
        if np.isfinite(stated).any():
            m["confidence/parsed_frac"] = float(np.isfinite(stated).mean())
            m["confidence/mean"] = float(np.nanmean(stated))
            m["confidence/ece"] = float(metrics_lib.ece(np.nan_to_num(stated), correct, np.isfinite(stated)))
        return m

    def _text_samples(self, prompts, rollout, scores) -> list[dict[str, Any]]:
        k = int(self.config.log.num_text_samples)
        out = []
        for row in range(min(k, rollout.num_rows)):
            p = int(rollout.prompt_index[row])
            out.append({
                "problem": prompts.problems[p], "gold": str(prompts.answers[p]), "response": scores.texts[row],
                "extracted": scores.extracted[row], "correct": bool(scores.correct[row]),
                "reward": float(scores.correct[row]),
            })
        return out

    # ------------------------------------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        """Samples `rollout.val_n` completions per held-out prompt and scores them through `capojax.eval_pipeline`
        (the path `capojax.evaluate` takes too): accuracy and calibration of exp(lpm) (and of the stated confidence
        when there is one), token entropy and the mean lpm of correct and of wrong samples
        (`eval_pipeline.validation_metrics`).

        The sampling key comes from `rollout.val_seed`, not from the run's RNG: every evaluation of every run with
        the same held-out set draws the same uniforms, so two checkpoints (or two training seeds) are compared on
        common random numbers and the same model always gets the same score."""
        config = self.config
        val = self.data.val
        if not val:
            return {}
        n = int(config.rollout.val_n)
        val_key = jax.random.key(int(config.rollout.val_seed))
        start = time.perf_counter()
        batch = pipeline.to_batch(val)
        samples = eval_pipeline.run(
            self.engine, batch.prompt_ids, batch.answers, self.tokenizer, n=n,
            chunk_size=int(config.train.prompts_per_step),
            params_for=lambda first: self.sampling_params(
                first, n=n, temperature=float(config.rollout.val_temperature), key=val_key),
            # Teacher-forced at temperature 1: the policy's own likelihood, whatever the sampling settings.
            scorer=eval_pipeline.TeacherForced(self.val_logprob_fn, self.params, pad_id=self.special.pad_id,
                                               put=self._put),
            grading=eval_pipeline.Grading(
                timeout=float(config.reward.timeout), workers=int(config.reward.workers) or None,
                require_boxed=bool(config.reward.require_boxed),
                with_confidence=parses_confidence(self.spec, config.data)),
        )
        out = eval_pipeline.validation_metrics(samples)
        out["timing/validation"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------------------------ the run

    def save(self, *, force: bool = False) -> None:
        if self._saved_step == self.step:
            return
        if self.checkpointer.save(
            self.step, params=self.params, opt_state=self.opt_state, rng=self.rng,
            data_state=self.iterator.get_state(), force=force,
        ):
            self._saved_step = self.step
        faults.maybe_signal("checkpoint", self.step)

    def run(self) -> dict[str, float]:
        """Trains up to `config.train.steps`, then exports the actor. On SIGTERM / SIGINT (agreed by all processes)
        it stops at the next step boundary, or abandons the rollout it is in, saves a checkpoint of the last
        completed step, exports nothing and raises `StoppedBySignal`."""
        from tqdm.auto import tqdm

        config = self.config
        total = int(config.train.steps)
        last: dict[str, float] = {}
        bar = tqdm(total=total, initial=self.step, desc=f"{config.algo.name}", unit="step",
                   disable=jax.process_index() != 0, dynamic_ncols=True)
        stopped_by = ""
        try:
            with StopSignals() as stop:
                if self.step == 0 and config.log.val_every and config.log.val_at_start:
                    self.logger.scalars(0, self.validate())
                # Each stop.agreed() is a collective in a multi-host run: the processes call it at the same points,
                # so they all stop after the same step (a local flag alone would deadlock the next collective).
                stopping = False
                while self.step < total:
                    if stop.agreed():
                        stopping = True
                        break
                    result = self.train_step(stop)
                    if result is None:  # stopped right after the rollout: the step was abandoned
                        stopping = True
                        break
                    last = result.metrics
                    if config.log.val_every and self.step % int(config.log.val_every) == 0 and not stop.agreed():
                        last.update(self.validate())  # skipped when stopping: minutes of sampling for a paper model
                    if self.step % max(1, int(config.log.every)) == 0 or self.step == total:
                        self.logger.scalars(self.step, last)
                        self.logger.samples(self.step, result.samples)
                    self.save(force=self.step == total)
                    bar.update(1)
                    bar.set_postfix(reward=f"{last['reward/mean']:.3f}", acc=f"{last['accuracy']:.3f}",
                                    auc=f"{last['auc_mean']:.2f}", s=f"{last['timing/step']:.1f}")
                if stopping:
                    stopped_by = stop.name
                    self.save(force=True)
        finally:
            bar.close()
            self.checkpointer.close()
            self.logger.close()
        if stopped_by:
            raise StoppedBySignal(stopped_by, self.step, self.checkpointer.directory)
        if config.checkpoint.export_hf:
            host_params = jax.tree.map(to_host, self.params)  # every process joins the gather; process 0 writes
            if jax.process_index() == 0:
                out = os.path.join(self.workdir, "hf")
                save_pretrained(nnx.merge(self.graphdef, host_params), self.model_config, out)
                self.tokenizer.save_pretrained(out)
        return last

    def close(self) -> None:
        """Closes the rollout engine, the logger and the checkpointer (waiting for a pending save); idempotent."""
        self._resources.close()

