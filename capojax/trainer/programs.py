"""The jitted programs of one RL step, built from a config in one place: used by `Trainer.__init__` (real
parameters) and by the dry run `capojax.memory_plan` (abstract ones), so the two cannot drift apart
(docs/architecture.md: where each phase's program runs).

`build_step_programs(config, mesh, graphdef, ref_graphdef=...)` returns a `StepPrograms`:

    algorithm     the AlgorithmSpec and the config's overrides of its defaults, incl. norm_len (settings.py)
    optimizer     optax AdamW + schedule over the run's optimizer steps (optim.py), and that schedule
    logprob       actor log-probs and entropy of the step's rows at the sampling temperature (logprobs.py)
    ref_logprob   the same for the reference model (None when the algorithm needs no reference)
    val_logprob   actor log-probs at temperature 1 (validation: the policy's own likelihood)
    advantages    AdvantageInputs -> f32[B,G,T], the spec's estimator with the config's hyper-parameters
    update        one PPO update of a mini-batch: (params, opt_state, minibatch) -> (params, opt_state, metrics),
                  plus the actor's log-probs and entropy before it when `old_logp_in_update`

On-policy steps skip the old-log-prob pass (`old_logp_in_update`): with one optimizer update per step the
old log-probs are the current policy's, which the update's forward computes anyway, and unless the advantages
read them (CAPO's lpm) nothing needs them before it. TRL does the same with num_iterations=1; the step's
calibration metrics read the log-probs the update returns. `train.old_logp_from_update=False` keeps the pass.

None of them is compiled here; jax.jit compiles on the first call (or on `.lower(...).compile()` in the plan).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from capojax.trainer.logprobs import make_logprob_fn
from capojax.trainer.optim import build_optimizer, build_schedule
from capojax.trainer.settings import AlgorithmSettings, algorithm_settings
from capojax.trainer.update import make_update_fn


@dataclasses.dataclass(frozen=True)
class StepPrograms:
    algorithm: AlgorithmSettings
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule  # learning rate by optimizer step (the one inside `optimizer`)
    updates_per_step: int  # optimizer steps per RL step: ppo_epochs x mini-batches
    micro_batches: int  # micro-batches of one update (gradient accumulation)
    logprob_chunk_rows: int | None  # rows per chunk of the log-prob passes (None: all rows at once)
    temperature: float  # the sampling temperature the log-probs are taken at
    old_logp_in_update: bool  # no old-log-prob pass: the update's forward gives them (and returns them)
    logprob: Callable
    ref_logprob: Callable | None
    val_logprob: Callable
    advantages: Callable
    update: Callable


def updates_per_step(config) -> int:
    t = config.train
    return int(t.ppo_epochs) * (int(t.prompts_per_step) // int(t.ppo_mini_batch))


def old_logp_in_update(config, algorithm: AlgorithmSettings) -> bool:
    """Whether a step takes the actor's old log-probs from its (single) update instead of a separate pass."""
    return (bool(config.train.get("old_logp_from_update", True)) and updates_per_step(config) == 1
            and not algorithm.spec.reads_policy_logprobs)


def build_step_programs(config, mesh: Mesh, graphdef: nnx.GraphDef, *, ref_graphdef: nnx.GraphDef | None = None,
                        algorithm: AlgorithmSettings | None = None) -> StepPrograms:
    """The step's programs for `config` on `mesh`. `graphdef` is the actor's, `ref_graphdef` the reference's
    (required when the algorithm needs a reference); `algorithm` defaults to `algorithm_settings(config)`."""
    algorithm = algorithm or algorithm_settings(config)
    if algorithm.needs_reference and ref_graphdef is None:
        raise ValueError(f"{algorithm.spec.name} with these settings reads a reference model: pass ref_graphdef")
    t, r = config.train, config.rollout
    per_step = updates_per_step(config)
    total_updates = int(t.steps) * per_step
    rows_per_update = int(t.ppo_mini_batch) * int(r.n)
    micro_batches = rows_per_update // int(t.micro_batch) if t.micro_batch else 1
    chunk = int(t.micro_batch) or None
    temperature = float(r.temperature) or 1.0
    optimizer = build_optimizer(config.optim, total_updates)
    logprob = functools.partial(make_logprob_fn, rows_per_chunk=chunk, mesh=mesh)
    fused = old_logp_in_update(config, algorithm)
    return StepPrograms(
        algorithm=algorithm, optimizer=optimizer, schedule=build_schedule(config.optim, total_updates),
        updates_per_step=per_step, micro_batches=micro_batches, logprob_chunk_rows=chunk, temperature=temperature,
        old_logp_in_update=fused,
        logprob=logprob(graphdef, temperature=temperature),
        ref_logprob=logprob(ref_graphdef, temperature=temperature) if algorithm.needs_reference else None,
        val_logprob=logprob(graphdef, temperature=1.0),
        advantages=jax.jit(functools.partial(algorithm.spec.advantages, **algorithm.advantage_overrides)),
        update=make_update_fn(
            graphdef, optimizer, algorithm.spec.objective(**algorithm.loss_overrides), temperature=temperature,
            micro_batches=micro_batches, weight_by_tokens=algorithm.agg == "token-mean", mesh=mesh,
            # the entropy metric comes from the update's forward when there is no separate pass
            with_entropy=algorithm.with_entropy or fused, returns_logprobs=fused,
        ),
    )


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """Shardings of `optimizer.init(params)`: per-parameter leaves (Adam's mu, nu) like their parameter, the
    rest (step counters) replicated. `params` may be arrays or ShapeDtypeStructs with shardings."""
    abstract = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract,
                                 jax.tree.map(lambda x: x.sharding, params),
                                 transform_non_params=lambda _: replicated)


def init_opt_state(optimizer: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """The optimizer state of `params`, created directly in its shardings."""
    return jax.jit(optimizer.init, out_shardings=opt_state_shardings(optimizer, params, mesh))(params)


def abstract_opt_state(optimizer: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """The optimizer state of abstract `params` as ShapeDtypeStructs with the shardings `init_opt_state` gives."""
    abstract = jax.eval_shape(optimizer.init, params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                        opt_state_shardings(optimizer, params, mesh))
