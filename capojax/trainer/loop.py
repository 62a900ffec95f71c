"""The RL loop: `Trainer` owns the actor, the reference, the optimizer state, the data iterator and the rollout
engine, and `Trainer.train_step` runs one step as its phases, in this order (docs/architecture.md):

    rollout     rollout.n completions per prompt from the rollout engine (JAX sampler or vLLM)
    reward      grade them (math-verify) and parse a stated confidence               capojax.trainer.scoring
    old_logp    the actor's teacher-forced log-probs and entropy (then ref_logp: the reference's, when needed)
    advantage   the algorithm's advantages f32[B,G,T]                                  capojax.objectives
    update      PPO updates over shuffled mini-batches                                 capojax.trainer.update
    sync        the new weights to the rollout engine
    log         the step's metrics and text samples (written by `run` through capojax.trainer.logger)

Each phase from rollout to sync is a method wrapped by `phase`, which times it (`timing/<phase>`; `timing/step`
covers them all) and runs the fault-injection hook of its boundary (capojax.trainer.faults). The jitted programs
come from `capojax.trainer.programs`, the config checks and the algorithm's settings from
`capojax.trainer.settings`. The algorithm is data: `config.algo.name`
picks an `AlgorithmSpec`, whose advantage estimator and objective the loop calls without branching on the name.

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
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from capojax import checkpoint as ckpt_lib
from capojax import eval_pipeline
from capojax import metrics as metrics_lib
from capojax import objectives
from capojax.data import pipeline
from capojax.errors import ConfigError, StoppedBySignal
from capojax.host_memory import ResidentTemporaries
from capojax.models import load_pretrained, save_pretrained
from capojax.models.resolve import resolve_model_path
from capojax.rollout.base import RolloutEngine, SamplingParams
from capojax.rollout.layout import trainer_devices
from capojax.sharding import make_mesh, to_host
from capojax.tokenizer import load_tokenizer, special_token_ids
from capojax.trainer import batch as batch_lib
from capojax.trainer import faults
from capojax.trainer.logger import MetricsLogger
from capojax.trainer.optim import current_learning_rate
from capojax.trainer.preemption import StopSignals
from capojax.trainer.programs import build_step_programs, init_opt_state
from capojax.trainer.scoring import score_rollout
# Re-exported: the config checks used to live here (tests, capojax.train and scripts import them from the loop).
from capojax.trainer.settings import (DTYPES, ROLLOUT_ENGINES, algo_overrides, algorithm_settings,  # noqa: F401
                                      check_algorithm_fits_data, config_dtype, parses_confidence, validate_config)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite updates in a row); the message says why."""


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


@dataclasses.dataclass
class StepClock:
    """The step a phase belongs to and the wall time of each phase so far (`timing/<phase>` seconds)."""

    step: int
    start: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def phase(name: str) -> Callable:
    """Decorator of a Trainer phase method `(self, clock: StepClock, ...)`: adds its wall time to
    `timing/<name>`, then runs the fault hook of the phase boundary, `faults.after_phase(name, step, output)`.

    A phase that measures itself more precisely (the rollout engine's own weight-sync time) returns a metrics dict
    holding `timing/<name>`; that value replaces the wall clock."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def timed(self, clock: StepClock, *args, **kwargs):
            start = time.perf_counter()
            out = method(self, clock, *args, **kwargs)
            key = f"timing/{name}"
            elapsed = time.perf_counter() - start
            if isinstance(out, dict) and key in out:
                elapsed = float(out.pop(key))
            clock.timings[key] = clock.timings.get(key, 0.0) + elapsed
            return faults.after_phase(name, clock.step, out)

        return timed

    return decorate


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
        self.algorithm = algorithm_settings(config)
        self.spec = self.algorithm.spec
        self.needs_reference = self.algorithm.needs_reference
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
        self._load_models()

        self.data = pipeline.build_prompt_data(config.data, self.tokenizer)
        # Every process reads the same global batch rather than a 1/num_processes shard: the rollout and the
        # updates are SPMD programs over the global mesh whose host inputs must agree, and prompts are a few KB.
        self.iterator = pipeline.make_iterator(
            self.data, batch_size=int(config.train.prompts_per_step), seed=int(config.data.shuffle_seed), multihost=False
        )
        self.programs = build_step_programs(config, self.mesh, self.graphdef, ref_graphdef=self.ref_graphdef,
                                            algorithm=self.algorithm)
        self.val_logprob_fn = self.programs.val_logprob
        self._resident_update = ResidentTemporaries()  # active after capojax.host_memory.configure_host, on CPU
        self.opt_state = init_opt_state(self.programs.optimizer, self.params, self.mesh)
        self.rng = jax.random.key(int(config.train.seed))
        self.step = 0
        self._bad_in_a_row = 0
        self._saved_step: int | None = None
        self._open_resources()

    # ------------------------------------------------------------------------------------------ setup

    def _load_models(self) -> None:
        """The actor (param_dtype master weights, compute dtype activations) and, when the algorithm needs one,
        the frozen reference (ref_dtype) from `self.model_path`."""
        model_cfg = self.config.model
        compute_dtype = config_dtype(model_cfg, "dtype")
        actor, self.model_config = load_pretrained(
            self.model_path, dtype=config_dtype(model_cfg, "param_dtype"), compute_dtype=compute_dtype,
            mesh=self.mesh, remat=bool(model_cfg.remat),
        )
        self.graphdef, self.params = nnx.split(actor)
        self.ref_graphdef = self.ref_params = None
        if self.needs_reference:
            ref, _ = load_pretrained(self.model_path, dtype=config_dtype(model_cfg, "ref_dtype"),
                                     compute_dtype=compute_dtype, mesh=self.mesh)
            self.ref_graphdef, self.ref_params = nnx.split(ref)

    def _open_resources(self) -> None:
        """From here on the run writes to the workdir and holds resources; a failure closes what was opened."""
        with contextlib.ExitStack() as opened:
            self.checkpointer = ckpt_lib.Checkpointer(self.workdir, config=self.config)
            opened.callback(self.checkpointer.close)
            self.logger = MetricsLogger(self.workdir)
            opened.callback(self.logger.close)
            if jax.process_index() == 0:
                pipeline.write_manifest(self.data, os.path.join(self.workdir, "data_manifest.json"))
            self._restore_if_any()
            self.engine = make_rollout_engine(
                self.config, nnx.merge(self.graphdef, self.params), self.special, mesh=self.mesh,
                checkpoint_dir=self.model_path,
            )
            opened.callback(self.engine.close)
            self._resources = opened.pop_all()

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
        """One RL step, phase by phase. Returns None, with the step undone (data iterator rewound), when `stop`
        agrees right after the rollout that the run must stop: the rollout is abandoned rather than graded and
        trained on."""
        clock = StepClock(self.step + 1)
        data_state = self.iterator.get_state()
        prompts = next(self.iterator)
        rollout = self._rollout(clock, prompts)
        if stop is not None and stop.agreed():
            self.iterator.set_state(data_state)  # the resumed run redoes this step from its first prompt
            return None
        if hasattr(self.engine, "sleep"):  # a co-located vLLM server frees its GPU memory until the weight sync
            self.engine.sleep()
        seq, scores = self._reward(clock, prompts, rollout)
        rows = {k: self._put(getattr(seq, k)) for k in ("input_ids", "attention_mask", "positions", "response_mask")}
        if not self.programs.old_logp_in_update:
            rows["old_logp"], entropy = self._old_logp(clock, rows, seq.prompt_len)
        if self.needs_reference:
            rows["ref_logp"] = self._ref_logp(clock, rows, seq.prompt_len)
        shape = (len(prompts), int(self.config.rollout.n), seq.response_mask.shape[1])  # B, G, T
        inputs = self._advantage_inputs(rows, scores, shape)
        rows["advantages"] = self._advantage(clock, inputs)
        update_metrics, before_update = self._update(clock, rows)
        if before_update is not None:  # on-policy step: the update's forward gave the old log-probs
            rows["old_logp"], entropy = before_update
            inputs = inputs.replace(lpm=objectives.lpm(rows["old_logp"].reshape(shape), inputs.response_mask))
        sync_metrics = self._sync(clock)
        clock.timings["timing/step"] = time.perf_counter() - clock.start
        metrics = self._step_metrics(shape, rollout, seq, scores, inputs, rows, entropy, clock.timings)
        metrics.update(update_metrics)
        metrics.update(sync_metrics)
        self.step = clock.step
        return StepResult(metrics, self._text_samples(prompts, rollout, scores))

    @phase("rollout")
    def _rollout(self, clock: StepClock, prompts):
        params = self.sampling_params(clock.step, n=int(self.config.rollout.n),
                                      temperature=float(self.config.rollout.temperature))
        return self.engine.generate(prompts.prompt_ids, params)

    @phase("reward")
    def _reward(self, clock: StepClock, prompts, rollout):
        """(the rows as a SequenceBatch, their grades and stated confidences)."""
        config = self.config
        seq = batch_lib.assemble(prompts.prompt_ids, rollout, pad_id=self.special.pad_id)
        scores = score_rollout(
            rollout, prompts.answers, self.tokenizer, timeout=float(config.reward.timeout),
            workers=int(config.reward.workers) or None, with_confidence=parses_confidence(self.spec, config.data),
            length=seq.response_mask.shape[1], require_boxed=bool(config.reward.require_boxed),
        )
        return seq, scores

    @phase("old_logp")
    def _old_logp(self, clock: StepClock, rows, prompt_len: int):
        """(log-probs f32[B*G,T], entropy f32[B*G,T]) of the actor before the updates."""
        logp, entropy = self.programs.logprob(self.params, rows["input_ids"], rows["attention_mask"],
                                              rows["positions"], prompt_len=prompt_len)
        return jax.block_until_ready(logp), entropy

    @phase("ref_logp")
    def _ref_logp(self, clock: StepClock, rows, prompt_len: int):
        logp, _ = self.programs.ref_logprob(self.ref_params, rows["input_ids"], rows["attention_mask"],
                                            rows["positions"], prompt_len=prompt_len)
        return jax.block_until_ready(logp)

    def _advantage_inputs(self, rows, scores, shape) -> objectives.AdvantageInputs:
        """What the advantage estimators read, in the [B,G] / [B,G,T] layout of the groups."""
        B, G, T = shape
        mask3 = rows["response_mask"].reshape(B, G, T)
        ref_logp, old_logp = rows.get("ref_logp"), rows.get("old_logp")
        correct = scores.correct.reshape(B, G)
        return objectives.AdvantageInputs(
            rewards=jnp.asarray(correct, jnp.float32),
            response_mask=mask3,
            correct=jnp.asarray(correct),
            lpm=None if old_logp is None else objectives.lpm(old_logp.reshape(B, G, T), mask3),
            ref_ppl=None if ref_logp is None else jnp.exp(-objectives.lpm(ref_logp.reshape(B, G, T), mask3)),
            confidence=jnp.asarray(scores.confidence.reshape(B, G)),
            confidence_mask=jnp.asarray(scores.confidence_mask.reshape(B, G, T)),
        )

    @phase("advantage")
    def _advantage(self, clock: StepClock, inputs: objectives.AdvantageInputs) -> jax.Array:
        """Token-level advantages f32[B*G,T], rows over fsdp."""
        advantages = self.programs.advantages(inputs).reshape(-1, inputs.response_mask.shape[-1])
        return jax.block_until_ready(jax.device_put(advantages, self.batch_sharding))

    @phase("update")
    def _update(self, clock: StepClock, rows: dict[str, jax.Array]):
        """ppo_epochs passes over the step's rows in shuffled mini-batches. Returns (the mean of the updates'
        metrics, and on an on-policy step (`programs.old_logp_in_update`) the actor's log-probs f32[B*G,T] and
        entropy before the update, in the rows' order; else None)."""
        t = self.config.train
        n_rows = rows["input_ids"].shape[0]
        per_update = int(t.ppo_mini_batch) * int(self.config.rollout.n)
        gen = np.random.default_rng([int(t.seed), clock.step])
        host_rows = {k: to_host(v) for k, v in rows.items()}
        collected: list[dict[str, Any]] = []
        before_update = None
        for _ in range(int(t.ppo_epochs)):
            order = gen.permutation(n_rows)
            for first in range(0, n_rows, per_update):
                minibatch = {k: self._put(v[order[first : first + per_update]]) for k, v in host_rows.items()}
                # its temporaries (201 MB for the benchmark model) from resident pages, not page-faulted afresh
                out = self._resident_update.call(self.programs.update, self.params, self.opt_state, minibatch)
                self.params, self.opt_state, m = out[:3]
                collected.append(m)
                if self.programs.old_logp_in_update:  # one update covering every row: undo its shuffle
                    inverse = jnp.asarray(np.argsort(order))
                    before_update = jax.tree.map(lambda x: x[inverse], out[3])  # (logp, entropy)
        return self._update_metrics([jax.tree.map(to_host, m) for m in collected], clock.step), before_update

    def _update_metrics(self, collected: list[dict[str, Any]], step: int) -> dict[str, float]:
        """The mean of the updates' metrics; stops the run after `train.max_bad_steps` skipping steps in a row."""
        skipped = sum(float(m["update/skipped"]) for m in collected)
        self._bad_in_a_row = self._bad_in_a_row + 1 if skipped else 0
        out = {k: float(np.mean([m[k] for m in collected])) for k in collected[0] if k != "update/skipped"}
        out["update/skipped"] = skipped
        out["update/count"] = float(len(collected))
        out["lr"] = current_learning_rate(self.opt_state, self.programs.schedule, default=float(self.config.optim.lr))
        if self._bad_in_a_row >= int(self.config.train.max_bad_steps):
            raise TrainingError(
                f"{self._bad_in_a_row} steps in a row had a non-finite loss or gradient (the updates were skipped, "
                f"parameters untouched); stopping at step {step}. Lower config.optim.lr, check config.model.dtype, or "
                f"raise config.train.max_bad_steps. The last good checkpoint is in {self.checkpointer.directory}."
            )
        return out

    @phase("sync")
    def _sync(self, clock: StepClock) -> dict[str, float]:
        """The new weights to the rollout engine; its metrics (its own `timing/sync` replaces the wall clock)."""
        return dict(self.engine.update_weights(self.params) or {})

    def _step_metrics(self, shape, rollout, seq, scores, inputs, rows, entropy, timings) -> dict[str, float]:
        """The log phase: reward, calibration of exp(lpm), entropy, advantages, sampler gap, timings."""
        B, G, _ = shape
        correct = scores.correct.reshape(B, G)
        mask = seq.response_mask
        lpm = to_host(inputs.lpm).reshape(B, G)
        advantages, entropy = to_host(rows["advantages"]), to_host(entropy)
        conf = np.exp(lpm)
        tokens = int(mask.sum())
        gap = np.abs(to_host(rows["old_logp"]) - seq.sampler_logp)[mask]
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
        if inputs.ref_ppl is not None:
            m["ref_ppl/mean"] = float(np.mean(to_host(inputs.ref_ppl)))
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
        faults.after_phase("checkpoint", self.step)

    def run(self) -> dict[str, float]:
        """Trains up to `config.train.steps`, then exports the actor. On SIGTERM / SIGINT (agreed by all processes)
        it stops at the next step boundary, or abandons the rollout it is in, saves a checkpoint of the last
        completed step, exports nothing and raises `StoppedBySignal`."""
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(total=int(config.train.steps), initial=self.step, desc=f"{config.algo.name}", unit="step",
                   disable=jax.process_index() != 0, dynamic_ncols=True)
        stopped_by = ""
        try:
            with StopSignals() as stop:
                if self.step == 0 and config.log.val_every and config.log.val_at_start:
                    self.logger.scalars(0, self.validate())
                last, stopping = self._train_until_done_or_stopped(stop, bar)
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
            self._export_hf()
        return last

    def _train_until_done_or_stopped(self, stop: StopSignals, bar) -> tuple[dict[str, float], bool]:
        """Steps up to `train.steps`; (the last step's metrics, whether a signal stopped the run first).

        Each stop.agreed() is a collective in a multi-host run: the processes call it at the same points, so they
        all stop after the same step (a local flag alone would deadlock the next collective)."""
        last: dict[str, float] = {}
        while self.step < int(self.config.train.steps):
            if stop.agreed():
                return last, True
            result = self.train_step(stop)
            if result is None:  # stopped right after the rollout: the step was abandoned
                return last, True
            last = self._after_step(result, stop)
            bar.update(1)
            bar.set_postfix(reward=f"{last['reward/mean']:.3f}", acc=f"{last['accuracy']:.3f}",
                            auc=f"{last['auc_mean']:.2f}", s=f"{last['timing/step']:.1f}")
        return last, False

    def _after_step(self, result: StepResult, stop: StopSignals) -> dict[str, float]:
        """Validation when due, the step's metrics and samples to the logger, the checkpoint; the metrics."""
        config, total = self.config, int(self.config.train.steps)
        last = result.metrics
        if config.log.val_every and self.step % int(config.log.val_every) == 0 and not stop.agreed():
            last.update(self.validate())  # skipped when stopping: minutes of sampling for a paper model
        if self.step % max(1, int(config.log.every)) == 0 or self.step == total:
            self.logger.scalars(self.step, last)
            self.logger.samples(self.step, result.samples)
        self.save(force=self.step == total)
        return last

    def _export_hf(self) -> None:
        """The final actor in HF format (safetensors + config + tokenizer) to WORKDIR/hf."""
        host_params = jax.tree.map(to_host, self.params)  # every process joins the gather; process 0 writes
        if jax.process_index() == 0:
            out = os.path.join(self.workdir, "hf")
            save_pretrained(nnx.merge(self.graphdef, host_params), self.model_config, out)
            self.tokenizer.save_pretrained(out)

    def close(self) -> None:
        """Closes the rollout engine, the logger and the checkpointer (waiting for a pending save); idempotent."""
        self._resources.close()

