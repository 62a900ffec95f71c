"""Orbax checkpoints of an RL run: save every N steps, keep the last k, resume the latest, refuse foreign workdirs.

    ckpt = Checkpointer(workdir, config=config)            # checks WORKDIR/config.json against `config`
    if (step := ckpt.latest_step()) is not None:
        state = ckpt.restore(params=abstract_params, opt_state=abstract_opt)   # into the given shardings
    ...
    ckpt.save(step, params=..., opt_state=..., rng=key, data_state=it.get_state())
    ckpt.close()                                            # waits for the async write to finish

Layout: ``WORKDIR/checkpoints/<step>/{params,opt_state,rng,data,meta}``; ``WORKDIR/config.json`` is the config
the workdir was made with. Each save is written by orbax into ``<step>.orbax-checkpoint-tmp-*`` and renamed
only when complete (or marked with ``commit_success.txt`` on object stores), so a save cut short by a
kill is never listed, never restored, and is cleaned up on the next start.

Config fingerprint: a hash of the config without the fields that may change across a resume (``train.steps``,
``checkpoint.*``, ``log.*``, ``dry_run``, ``rollout.vllm_url``); restoring a workdir made with another config
raises ``ConfigMismatchError`` naming the differing keys unless ``checkpoint.force_resume`` is set. A workdir with
a ``config.json`` but no finalized checkpoint (a start that failed or stopped before its first save) is not a
resume target: it is taken over, with a note. ``check_workdir`` does that check without writing anything, so a
run can refuse a foreign workdir before it loads a model; the ``Checkpointer`` repeats it and then writes.

Which model folder a run loads (``config.model``) is resolved by ``capojax.models.resolve``, not here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from capojax.errors import UserError

log = logging.getLogger(__name__)

# Keys that may differ between the run that made a workdir and the run that resumes it.
RESUMABLE_KEYS = ("train.steps", "checkpoint.", "log.", "dry_run", "rollout.vllm_url")


class ConfigMismatchError(UserError, RuntimeError):
    """The workdir holds checkpoints of a run with a different config."""


def _to_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v.tolist() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, tuple) else v)
    return out


def _relevant(flat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)}


def config_fingerprint(config) -> str:
    """sha256 (16 hex digits) of the config's resume-relevant fields."""
    flat = _relevant(flatten(_to_dict(config)))
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(old: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
    a, b = _relevant(flatten(old)), _relevant(flatten(new))
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _key_data(rng) -> np.ndarray:
    """A PRNG key (typed or raw uint32) as the raw u32 array orbax can store."""
    if jax.dtypes.issubdtype(getattr(rng, "dtype", np.uint32), jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return np.asarray(rng)


def _abstract(tree):
    """ShapeDtypeStructs carrying the target shardings, so orbax restores each array straight into place."""

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    return jax.tree.map(one, tree)


@dataclasses.dataclass
class Restored:
    step: int
    params: Any  # same structure as the `params` target (e.g. nnx.State), arrays in the target shardings
    opt_state: Any  # same structure as the `opt_state` target
    rng: np.ndarray  # u32 key data; wrap with jax.random.wrap_key_data if you use typed keys
    data_state: dict  # PromptIterator.get_state() at save time
    meta: dict  # step, fingerprint and whatever `extra` was given to save()


class Checkpointer:
    """One run's checkpoints under ``WORKDIR/checkpoints`` (see module docstring)."""

    def __init__(self, workdir: str | os.PathLike, *, config, every: int | None = None, keep: int | None = None,
                 force: bool | None = None, async_save: bool = True):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.config_dict = _to_dict(config)
        ck = self.config_dict.get("checkpoint", {})
        self.every = int(every if every is not None else ck.get("every", 1))
        keep = int(keep if keep is not None else ck.get("keep", 3))
        force = bool(force if force is not None else ck.get("force_resume", False))
        self.fingerprint = config_fingerprint(self.config_dict)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._closed = False
        previous = check_workdir(self.workdir, self.config_dict, force=force)
        os.makedirs(self.workdir, exist_ok=True)
        self._write_config(previous)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a killed save are deleted, never restored
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "rng", "data", "meta")
        )

    # -- config guard ------------------------------------------------------------------------------

    def _write_config(self, previous: str | None) -> None:
        if jax.process_index() != 0:
            return
        path = os.path.join(self.workdir, "config.json")
        if previous is not None:
            with open(path + ".prev", "w") as f:
                f.write(previous)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.config_dict, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)  # atomic: a kill never leaves a half-written config.json

    # -- save / restore ----------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int, *, last: bool = False) -> bool:
        return last or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, *, params, opt_state, rng, data_state: Mapping, extra: Mapping | None = None,
             force: bool = False) -> bool:
        """Saves (asynchronously) unless ``step`` is off-cadence and not ``force``; returns whether it saved."""
        if not (force or self.should_save(step)):
            return False
        meta = {"step": int(step), "fingerprint": self.fingerprint, **dict(extra or {})}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            rng=ocp.args.StandardSave({"key": _key_data(rng)}),
            data=ocp.args.JsonSave(dict(data_state)),
            meta=ocp.args.JsonSave(meta),
        )
        return bool(self.manager.save(int(step), args=args, force=True))

    def restore(self, step: int | None = None, *, params, opt_state) -> Restored:
        """Restores ``step`` (default: the latest finalized one) into the structure and shardings of the
        targets (concrete arrays or ShapeDtypeStructs, e.g. from ``nnx.eval_shape``)."""
        self.manager.wait_until_finished()
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("fingerprint") != self.fingerprint:
            # config.json was checked in __init__; this catches checkpoints copied between workdirs.
            log.warning("checkpoint %d has config fingerprint %s, this run %s", step, meta.get("fingerprint"),
                        self.fingerprint)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(params)),
                opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
                rng=ocp.args.StandardRestore(),
                data=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step=step, params=out["params"], opt_state=out["opt_state"],
                        rng=np.asarray(out["rng"]["key"]), data_state=dict(out["data"]), meta=dict(meta))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the async write to finish; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.manager.wait_until_finished()
        self.manager.close()


def finalized_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under WORKDIR/checkpoints (half-written saves are not listed)."""
    directory = os.path.join(os.fspath(workdir), "checkpoints")
    return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def check_workdir(workdir: str | os.PathLike, config, *, force: bool = False) -> str | None:
    """Refuses (``ConfigMismatchError``) a workdir whose checkpoints were made with a different config, unless
    ``force``; writes nothing. A differing ``config.json`` without a finalized checkpoint is taken over with a note.
    Returns the text of a differing config.json that the run will replace (kept as config.json.prev), else None."""
    workdir = os.path.abspath(os.fspath(workdir))
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    diff = config_diff(json.loads(text), _to_dict(config))
    if not diff:
        return None
    changes = "; ".join(f"{k}: {a!r} (workdir) -> {b!r} (now)" for k, (a, b) in list(diff.items())[:20])
    steps = finalized_steps(workdir)
    if not steps:
        log.warning("workdir %s has a config.json of another config but no complete checkpoint (a start that "
                    "failed or stopped before its first save): taking it over (%s)", workdir, changes)
        return text
    if not force:
        raise ConfigMismatchError(
            f"workdir {workdir} has checkpoints (up to step {steps[-1]}) of a different config: {changes}. "
            "Use a new --workdir, run with the workdir's config, or pass --config.checkpoint.force_resume=True "
            "to resume anyway."
        )
    log.warning("resuming %s with a different config (force_resume): %s", workdir, changes)
    return text
