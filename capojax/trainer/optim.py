"""The optax optimizer from `config.optim`: AdamW with a schedule, global-norm clipping first."""

from __future__ import annotations

from typing import Any

import jax
import optax

from capojax.errors import ConfigError

SCHEDULES = ("constant", "cosine", "linear")


def build_schedule(optim_cfg, total_updates: int) -> optax.Schedule:
    """Learning rate by optimizer step: linear warmup from 0 over `warmup_steps`, then constant, cosine decay or
    linear decay to 0 at `total_updates`."""
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
    if optim_cfg.schedule not in SCHEDULES:
        raise ConfigError(f"config.optim.schedule={optim_cfg.schedule!r} is not one of {SCHEDULES}")
    if optim_cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    elif optim_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, total_updates - warmup))
    else:
        after = optax.linear_schedule(lr, 0.0, max(1, total_updates - warmup))
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def build_optimizer(optim_cfg, total_updates: int) -> optax.GradientTransformation:
    """`total_updates` = optimizer steps over the whole run (RL steps x updates per step), for decaying schedules."""
    parts = []
    if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    parts.append(
        optax.adamw(
            build_schedule(optim_cfg, total_updates),
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
        )
    )
    return optax.chain(*parts)


def current_learning_rate(opt_state: Any, schedule: optax.Schedule, *, default: float) -> float:
    """The learning rate of the next optimizer step: `schedule` at the step count kept in `opt_state` (`default`
    when the state holds no schedule count)."""
    is_count = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    for state in jax.tree.leaves(opt_state, is_leaf=is_count):
        if is_count(state):
            return float(schedule(int(state.count)))
    return float(default)
