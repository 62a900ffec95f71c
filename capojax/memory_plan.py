"""Per-device memory plan of a training config, before renting GPUs: `--config.dry_run=True`.

Nothing is materialised. The actor (`model.param_dtype`), the reference (`model.ref_dtype`) and the optimizer
state are built abstractly (`nnx.eval_shape` / `jax.eval_shape`) with the shardings `capojax.sharding` gives them
on the configured ("fsdp", "tp") mesh; then the trainer's own jitted programs, built by the same factory as the
Trainer's (`capojax.trainer.programs.build_step_programs`), are lowered and compiled with the real shapes and
shardings:

- the PPO update (the config's algorithm objective): a mini-batch of
  `train.ppo_mini_batch * rollout.n` rows of `data.max_prompt_len + rollout.max_new_tokens` tokens, split into
  micro-batches of `train.micro_batch` rows, and
- the teacher-forced log-prob pass over a whole step, `train.prompts_per_step * rollout.n`
  rows, for the actor and (when the algorithm reads it) the reference.

XLA's memory analysis of each compiled program gives the per-device bytes of its arguments, outputs (minus the
donated/aliased ones), temporaries (activations, gradients, logits) and generated code. Everything that stays
alive across the phases of a step (actor, optimizer state, reference, the step's batch) is added to each phase;
the plan's total is the peak over the phases, compared with `config.device_memory_gb` (default 80 GB).

Where the plan runs: with fewer real devices than the mesh needs, the CLI fakes them on the host
(`request_host_devices` sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` before jax starts its backend).
The numbers are then those of XLA:CPU's compiler, whose fusion and scheduling differ from XLA:GPU/TPU; parameter,
optimizer and batch bytes are exact, temporaries are an estimate (run the dry run on the target machine for the
backend's own number).

The rollout phase (`rollout.engine="jax"`): the sampler runs while the actor, the optimizer state and the reference
are alive, beside its KV cache (one step's rows, prompt and completion bucketed to powers of two as
`JaxRolloutEngine` does, rows over fsdp, kv heads over tp), a compute-dtype copy of the weights it decodes with
and its f32 logits. These are analytic (the sampler is not compiled here) and count in the peak. With
`rollout.engine="vllm"` the server's share is planned by `capojax.rollout.layout` (its own GPUs or a co-located
share) and printed below the trainer's table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any

DEFAULT_DEVICE_MEMORY_GB = 80.0
DEFAULT_PLAN_DEVICES = 8  # devices of the planned mesh when config.mesh.fsdp == -1 (one 8-GPU node)
GB = 1e9


# ------------------------------------------------------------------------------------------------ devices


def planned_device_count(config) -> int:
    """Devices the plan fakes: fsdp * tp, or `config.plan_devices` (default 8) when fsdp == -1 or when a launched
    vLLM server shares the node (`rollout.vllm_devices` takes GPUs from the node, see capojax.rollout.layout)."""
    from capojax.rollout.layout import layout_requested

    fsdp, tp = int(config.mesh.fsdp), int(config.mesh.tp)
    if fsdp == -1 or layout_requested(config):
        return int(config.get("plan_devices", DEFAULT_PLAN_DEVICES))
    return fsdp * tp


def request_host_devices(count: int) -> None:
    """Ask XLA for `count` fake CPU devices (no-op when the flag is already set). Must run before the jax
    backend starts (before the first `jax.devices()`); on a machine with GPUs/TPUs it changes nothing there."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


# ------------------------------------------------------------------------------------------------ model config


def hub_name_to_preset(hf_name: str) -> str | None:
    """"Qwen/Qwen2.5-Math-1.5B" -> "qwen2.5-math-1.5b" when that is a PRESETS key, else None."""
    from capojax.models import PRESETS

    key = str(hf_name).rstrip("/").split("/")[-1].lower()
    return key if key in PRESETS else None


def resolve_model_config(model_cfg):
    """(QwenConfig, where it came from) for `config.model`, without reading any weights.

    Order: `path` is a folder with config.json -> that file; `path` is a PRESETS key -> the preset;
    `path == "tiny"` -> the tiny SFT base's config (its cached folder, or its settings); `hf_name` maps to a
    preset (e.g. "Qwen/Qwen2.5-Math-1.5B" -> "qwen2.5-math-1.5b"); `preset` names one.
    """
    from capojax.models import PRESETS, QwenConfig

    path = str(model_cfg.get("path", "") or "")
    if path and os.path.isfile(os.path.join(os.path.expanduser(path), "config.json")):
        return QwenConfig.from_json(os.path.expanduser(path)), f"{path}/config.json"
    if path in PRESETS:
        return PRESETS[path], f"preset {path}"
    if path == "tiny":
        return _tiny_config(model_cfg)
    preset = str(model_cfg.get("preset", "") or "")
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"config.model.preset={preset!r} is not one of {sorted(PRESETS)}")
        return PRESETS[preset], f"preset {preset}"
    hf_name = str(model_cfg.get("hf_name", "") or "")
    if hf_name:
        key = hub_name_to_preset(hf_name)
        if key is None:
            raise ValueError(
                f"config.model.hf_name={hf_name!r} has no built-in preset ({sorted(PRESETS)}) and config.model.path "
                f"({path!r}) is not a folder with config.json; download the model's config.json and pass "
                f"--config.model.path=FOLDER (no weights are read by the dry run)"
            )
        return PRESETS[key], f"preset {key} (from hf_name {hf_name})"
    raise ValueError(
        f"cannot tell which model to plan for: config.model.path={path!r} is neither a folder with config.json nor a "
        f"preset ({sorted(PRESETS)}), and config.model.hf_name is empty; set one of them"
    )


def _tiny_config(model_cfg):
    from capojax import sft
    from capojax.models import QwenConfig

    settings = sft.SFTSettings.from_config(model_cfg.tiny_base)
    folder = os.path.join(os.path.expanduser(str(model_cfg.cache_dir)), f"tiny_base-{settings.key()}")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return QwenConfig.from_json(folder), f"{folder}/config.json"
    # Not built yet: the same shapes sft.model_config gives, with the vocabulary at its BPE target (rounded up
    # to 64 like sft does); the real tokenizer may add a few specials, i.e. at most one more block of 64.
    vocab = -(-settings.vocab_size // 64) * 64
    cfg = QwenConfig(
        vocab_size=vocab, hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_layers=settings.num_layers, num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        head_dim=settings.hidden_size // settings.num_heads, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, qkv_bias=True, max_position_embeddings=512, bos_token_id=None, eos_token_id=0,
        model_type="qwen2",
    )
    return cfg, "tiny base settings (not built yet; vocabulary approximate)"


# ------------------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class ProgramMemory:
    """XLA's per-device memory analysis of one compiled program (bytes)."""

    name: str
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    compile_seconds: float

    @classmethod
    def of(cls, name: str, compiled, seconds: float) -> "ProgramMemory":
        m = compiled.memory_analysis()
        if m is None:
            raise RuntimeError(f"XLA gave no memory analysis for the {name} program on this backend")
        return cls(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.alias_size_in_bytes),
                   int(m.temp_size_in_bytes), int(m.generated_code_size_in_bytes), seconds)

    @property
    def live(self) -> int:
        """Peak bytes of the program itself: arguments + outputs that are not aliased to arguments + temps + code."""
        return self.argument + self.output - self.alias + self.temp + self.code


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of a training config. `rows()` is the printed table."""

    model: str
    model_source: str
    num_params: int
    mesh: dict[str, int]
    dtypes: dict[str, str]
    remat: bool
    rows_per_update: int
    micro_batch_rows: int
    rows_per_step: int
    logprob_chunk_rows: int
    seq_len: int
    response_len: int
    vocab_size: int
    params: int  # actor parameters, per device
    params_total: int  # actor parameters, all devices together (unsharded size)
    opt_state: int
    opt_state_total: int
    reference: int  # 0 when the algorithm needs no reference
    reference_total: int
    step_batch: int  # the step's rows kept on device during the updates (ids, masks, old/ref log-probs, advantages)
    kv_cache_jax: int  # analytic: the JAX sampler's KV cache for one step's rollout (bucketed shapes)
    update: ProgramMemory
    logprob: ProgramMemory
    ref_logprob: ProgramMemory | None
    budget: int
    rollout_engine: str = "jax"
    rollout_rows: int = 0  # rows the JAX sampler decodes at once (bucketed prompt count x rollout.n)
    rollout_slots: int = 0  # KV-cache slots per row (bucketed prompt length + bucketed completion buffer)
    decode_weights: int = 0  # the sampler's compute-dtype copy of the actor's weights (0 when dtypes agree)
    sampler_logits: int = 0  # the sampler's f32 logits of a decode step (a few live copies)
    server: Any = None  # capojax.rollout.layout.ServerPlan when a launched vLLM server shares the node
    layout: str | None = None  # the node layout in words (which GPUs / shares the trainer and the server get)

    @property
    def rollout_peak(self) -> int:
        """JAX engine: actor + optimizer state + reference stay alive while the sampler holds its cache and
        decode weights. 0 for the vLLM engine (the server's memory is planned separately)."""
        if self.rollout_engine != "jax":
            return 0
        return self.resident + self.decode_weights + self.kv_cache_jax + self.sampler_logits

    @property
    def resident(self) -> int:
        return self.params + self.opt_state + self.reference

    @property
    def update_peak(self) -> int:
        # The update's arguments are actor + optimizer state + the mini-batch; the reference and the step batch
        # stay alive beside it.
        return self.update.live + self.reference + self.step_batch

    @property
    def logprob_peak(self) -> int:
        # Arguments: actor params + the step's token arrays; optimizer state and reference stay alive.
        return self.logprob.live + self.opt_state + self.reference

    @property
    def ref_logprob_peak(self) -> int:
        if self.ref_logprob is None:
            return 0
        return self.ref_logprob.live + self.params + self.opt_state + self.step_batch

    @property
    def total(self) -> int:
        return max(self.update_peak, self.logprob_peak, self.ref_logprob_peak, self.rollout_peak)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget and (self.server is None or self.server.fits)

    def rows(self) -> list[tuple[str, int | None, str]]:
        """(what, per-device bytes or None, note) rows of the table."""
        d = self.dtypes
        n_dev = self.mesh["fsdp"] * self.mesh["tp"]
        rows: list[tuple[str, int | None, str]] = [
            ("actor params", self.params, f"{d['param']}, {self.params_total / GB:.2f} GB over {n_dev} devices"),
            ("optimizer state", self.opt_state, f"AdamW mu+nu in {d['param']}, {self.opt_state_total / GB:.2f} GB total"),
            ("reference params", self.reference,
             f"{d['ref']}, {self.reference_total / GB:.2f} GB total" if self.reference_total else "not used by this algorithm"),
            ("step batch (kept during updates)", self.step_batch, f"{self.rows_per_step} rows x {self.seq_len} tokens"),
            ("update: mini-batch inputs", self.update.argument - self.params - self.opt_state,
             f"{self.rows_per_update} rows, micro-batches of {self.micro_batch_rows}"),
            ("update: activations/temp (XLA)", self.update.temp, "grads accumulator, logits, saved activations"),
            ("update: outputs not aliased", self.update.output - self.update.alias, "metrics (params/opt donated)"),
            ("update: generated code", self.update.code, f"compiled in {self.update.compile_seconds:.0f} s"),
            ("log-prob: activations/temp (XLA)", self.logprob.temp,
             f"{self.rows_per_step} rows in chunks of {self.logprob_chunk_rows}"),
        ]
        if self.ref_logprob is not None:
            rows.append(("ref log-prob: activations/temp", self.ref_logprob.temp, f"{d['ref']} reference"))
        if self.rollout_engine == "jax":
            rows += [
                ("rollout: KV cache (analytic)", self.kv_cache_jax,
                 f"{self.rollout_rows} rows x {self.rollout_slots} slots, {d['compute']}"),
                ("rollout: decode weights + logits", self.decode_weights + self.sampler_logits,
                 f"{d['compute']} copy of the actor for the sampler; f32 logits of a step"),
            ]
        rows += [
            ("peak: update phase", self.update_peak, ""),
            ("peak: actor log-prob phase", self.logprob_peak, ""),
        ]
        if self.ref_logprob is not None:
            rows.append(("peak: reference log-prob phase", self.ref_logprob_peak, ""))
        if self.rollout_engine == "jax":
            rows.append(("peak: rollout phase (JAX sampler)", self.rollout_peak, "actor + optimizer + reference live"))
        trainer_fits = self.total <= self.budget
        rows.append(("TOTAL (peak over phases)", self.total,
                     f"{'fits' if trainer_fits else 'DOES NOT FIT'} in {self.budget / GB:.1f} GB "
                     f"({100 * self.total / self.budget:.0f}%)"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(resident=self.resident, update_peak=self.update_peak, logprob_peak=self.logprob_peak,
                   ref_logprob_peak=self.ref_logprob_peak, rollout_peak=self.rollout_peak, total=self.total,
                   fits=self.fits)
        return out


def _bytes_per_device(tree) -> int:
    """Sum over ShapeDtypeStruct leaves (with shardings) of one device's shard in bytes."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _bytes_total(tree) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_model(qcfg, *, param_dtype, compute_dtype, remat: bool, mesh):
    """(graphdef, params as ShapeDtypeStructs carrying their NamedShardings on `mesh`) — nothing allocated."""
    import jax
    from flax import nnx

    from capojax.models import Qwen
    from capojax.sharding import param_shardings

    abstract = nnx.eval_shape(
        lambda: Qwen(qcfg, rngs=nnx.Rngs(0), dtype=compute_dtype, param_dtype=param_dtype, remat=remat))
    graphdef, state = nnx.split(abstract)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    return graphdef, params


def _validate(config, fsdp: int) -> None:
    t, r = config.train, config.rollout
    rows = int(t.ppo_mini_batch) * int(r.n)
    step_rows = int(t.prompts_per_step) * int(r.n)
    micro = int(t.micro_batch) or rows
    if rows % micro:
        raise ValueError(
            f"config.train.micro_batch={t.micro_batch} must divide the {rows} rows of a mini-batch "
            f"(ppo_mini_batch x rollout.n); pick a divisor")
    if micro % fsdp or step_rows % fsdp:
        raise ValueError(
            f"a micro-batch of {micro} rows (and a step of {step_rows} rows) must split evenly over mesh.fsdp={fsdp} "
            f"devices; use a multiple of {fsdp} for config.train.micro_batch")


def _planned_mesh(config):
    """(mesh, node layout or None): the configured mesh on the planned devices (fewer when a launched vLLM server
    takes GPUs of the node: the trainer gets N - k of them, or a memory share when co-located)."""
    import jax

    from capojax.rollout import layout as layout_lib
    from capojax.sharding import make_mesh

    n_dev = planned_device_count(config)
    layout = layout_lib.node_layout(config, n_dev) if layout_lib.layout_requested(config) else None
    trainer_devices = layout.trainer_device_count if layout is not None else n_dev
    tp = int(config.mesh.tp)
    fsdp = int(config.mesh.fsdp) if int(config.mesh.fsdp) != -1 else trainer_devices // tp
    devices = jax.devices()
    if len(devices) < fsdp * tp:
        raise RuntimeError(
            f"the planned mesh fsdp={fsdp} x tp={tp} needs {fsdp * tp} devices but jax sees {len(devices)}; run through "
            f"`python -m capojax.train --config.dry_run=True` (it fakes host devices) or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={fsdp * tp} before jax is imported")
    _validate(config, fsdp)
    return make_mesh(fsdp, tp, devices[: fsdp * tp]), layout


@dataclasses.dataclass
class _AbstractRun:
    """Everything the plan measures, built abstractly: model config, dtypes, parameters, the step's programs."""

    qcfg: Any
    source: str
    dtypes: dict[str, Any]  # "param", "compute", "ref" -> jnp dtype
    params: Any
    ref_params: Any  # None without a reference
    opt_state: Any
    programs: Any  # capojax.trainer.programs.StepPrograms


def _abstract_run(config, mesh) -> _AbstractRun:
    """Actor, reference and optimizer state as sharded ShapeDtypeStructs, and the trainer's own step programs."""
    from capojax.trainer.programs import abstract_opt_state, build_step_programs
    from capojax.trainer.settings import algorithm_settings, config_dtype

    qcfg, source = resolve_model_config(config.model)
    dtypes = {"param": config_dtype(config.model, "param_dtype"), "compute": config_dtype(config.model, "dtype"),
              "ref": config_dtype(config.model, "ref_dtype")}
    graphdef, params = abstract_model(qcfg, param_dtype=dtypes["param"], compute_dtype=dtypes["compute"],
                                      remat=bool(config.model.remat), mesh=mesh)
    algorithm = algorithm_settings(config)
    ref_graphdef = ref_params = None
    if algorithm.needs_reference:
        ref_graphdef, ref_params = abstract_model(qcfg, param_dtype=dtypes["ref"], compute_dtype=dtypes["compute"],
                                                  remat=False, mesh=mesh)
    programs = build_step_programs(config, mesh, graphdef, ref_graphdef=ref_graphdef, algorithm=algorithm)
    return _AbstractRun(qcfg, source, dtypes, params, ref_params,
                        abstract_opt_state(programs.optimizer, params, mesh), programs)


def _batch_shapes(config, mesh, *, with_reference: bool) -> dict[str, Any]:
    """ShapeDtypeStructs (rows over fsdp) of one mini-batch, the step's token arrays and what the step keeps on
    device during the updates (token arrays + old/ref log-probs, entropy, advantages)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    t, r = config.train, config.rollout
    rows, step_rows = int(t.ppo_mini_batch) * int(r.n), int(t.prompts_per_step) * int(r.n)
    T = int(r.max_new_tokens)
    L = int(config.data.max_prompt_len) + T
    batch_sh = NamedSharding(mesh, PartitionSpec("fsdp"))

    def arr(shape, dt):
        return jax.ShapeDtypeStruct(shape, dt, sharding=batch_sh)

    def token_arrays(n):
        return arr((n, L), jnp.int32), arr((n, L), jnp.bool_), arr((n, L), jnp.int32)

    ids, mask, pos = token_arrays(rows)
    minibatch = {"input_ids": ids, "attention_mask": mask, "positions": pos,
                 "response_mask": arr((rows, T), jnp.bool_), "old_logp": arr((rows, T), jnp.float32),
                 "advantages": arr((rows, T), jnp.float32)}
    if with_reference:
        minibatch["ref_logp"] = arr((rows, T), jnp.float32)
    kept = {"tokens": token_arrays(step_rows), "response_mask": arr((step_rows, T), jnp.bool_),
            "f32": [arr((step_rows, T), jnp.float32) for _ in range(4 if with_reference else 3)]}
    return {"minibatch": minibatch, "step_tokens": token_arrays(step_rows), "kept": kept}


def memory_plan(config) -> MemoryPlan:
    """Build everything abstractly on the configured mesh, compile the update and log-prob passes, measure."""
    import jax
    import jax.numpy as jnp

    from capojax.rollout import layout as layout_lib
    from capojax.trainer.logprobs import chunk_count

    mesh, layout = _planned_mesh(config)
    fsdp, tp = int(mesh.shape["fsdp"]), int(mesh.shape["tp"])
    run = _abstract_run(config, mesh)
    programs, needs_reference = run.programs, run.programs.algorithm.needs_reference
    t, r = config.train, config.rollout
    P, T = int(config.data.max_prompt_len), int(r.max_new_tokens)
    rows, step_rows = int(t.ppo_mini_batch) * int(r.n), int(t.prompts_per_step) * int(r.n)
    shapes = _batch_shapes(config, mesh, with_reference=needs_reference)

    update_mem = _compile("update", programs.update, run.params, run.opt_state, shapes["minibatch"])
    logprob_mem = _compile("log-prob", programs.logprob, run.params, *shapes["step_tokens"], prompt_len=P)
    ref_mem = None
    if needs_reference:
        ref_mem = _compile("ref log-prob", programs.ref_logprob, run.ref_params, *shapes["step_tokens"], prompt_len=P)

    sampler = jax_sampler_memory(run.qcfg, prompts=int(t.prompts_per_step), n=int(r.n), prompt_len=P, new_tokens=T,
                                 fsdp=fsdp, tp=tp, compute_itemsize=jnp.dtype(run.dtypes["compute"]).itemsize,
                                 params_per_device=_bytes_per_device(run.params),
                                 param_itemsize=jnp.dtype(run.dtypes["param"]).itemsize)
    budget = float(config.get("device_memory_gb", DEFAULT_DEVICE_MEMORY_GB))
    server = None
    if layout is not None:
        budget = layout.trainer_budget_gb
        max_len = int(r.get("vllm_max_model_len", 0) or 0) or P + T + 1
        server = layout_lib.plan_server(layout, run.qcfg, dtype_bytes=4 if str(r.vllm_dtype) == "float32" else 2,
                                        max_model_len=max_len, step_rows=step_rows)
    return MemoryPlan(
        model=str(config.model.get("hf_name", "") or config.model.get("path", "")) or run.source,
        model_source=run.source, num_params=sum(int(math.prod(x.shape)) for x in jax.tree.leaves(run.params)),
        mesh={"fsdp": fsdp, "tp": tp}, dtypes={k: jnp.dtype(v).name for k, v in run.dtypes.items()},
        remat=bool(config.model.remat), rows_per_update=rows, micro_batch_rows=rows // programs.micro_batches,
        rows_per_step=step_rows, logprob_chunk_rows=step_rows // chunk_count(step_rows, programs.logprob_chunk_rows),
        seq_len=P + T, response_len=T, vocab_size=int(run.qcfg.vocab_size),
        params=_bytes_per_device(run.params), params_total=_bytes_total(run.params),
        opt_state=_bytes_per_device(run.opt_state), opt_state_total=_bytes_total(run.opt_state),
        reference=_bytes_per_device(run.ref_params) if needs_reference else 0,
        reference_total=_bytes_total(run.ref_params) if needs_reference else 0,
        step_batch=_bytes_per_device(shapes["kept"]), kv_cache_jax=sampler["kv_cache"],
        update=update_mem, logprob=logprob_mem, ref_logprob=ref_mem, budget=int(budget * GB),
        rollout_engine=str(r.engine), rollout_rows=sampler["rows"], rollout_slots=sampler["slots"],
        decode_weights=sampler["decode_weights"], sampler_logits=sampler["logits"], server=server,
        layout=None if layout is None else layout.describe(),
    )


def jax_sampler_memory(qcfg, *, prompts: int, n: int, prompt_len: int, new_tokens: int, fsdp: int, tp: int,
                       compute_itemsize: int, params_per_device: int, param_itemsize: int) -> dict[str, int]:
    """Per-device bytes of one step's rollout on `JaxRolloutEngine` (analytic; see the module docstring).

    rows: the prompt count bucketed to a power of two (and a multiple of fsdp) times n; slots: the prompt length
    and the completion buffer each bucketed to a power of two (minimum 16, as the engine does); kv_cache: keys and
    values of every layer [rows, kv heads, slots, head_dim] in the compute dtype, rows over fsdp and kv heads over
    tp when they divide; decode_weights: the compute-dtype copy of the weights (none when the dtypes agree);
    logits: three f32 [rows, V] buffers (logits, the processed distribution, its CDF) of a decode step.
    """
    from capojax.rollout.sampler import bucket

    prompt_bucket = -(-bucket(prompts) // fsdp) * fsdp
    rows = prompt_bucket * n
    slots = bucket(prompt_len, 16) + bucket(new_tokens, 16)
    kv_total = 2 * qcfg.num_layers * rows * slots * qcfg.num_kv_heads * qcfg.head_dim * compute_itemsize
    kv_shards = fsdp * (tp if qcfg.num_kv_heads % tp == 0 else 1)
    decode = 0 if compute_itemsize == param_itemsize else params_per_device * compute_itemsize // param_itemsize
    vocab_shards = tp if qcfg.vocab_size % tp == 0 else 1
    logits = 3 * (rows // fsdp) * (qcfg.vocab_size // vocab_shards) * 4
    return {"rows": rows, "slots": slots, "kv_cache": int(kv_total // kv_shards), "decode_weights": int(decode),
            "logits": int(logits)}


def _compile(name: str, fn, *args, **static) -> ProgramMemory:
    start = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    return ProgramMemory.of(name, compiled, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ advice


def suggestions(plan: MemoryPlan) -> list[str]:
    """Settings that bring the plan under the budget, most effective first. Temporaries scale about linearly
    with the rows of a micro-batch, so the micro-batch advice is an estimate: rerun the dry run to confirm."""
    out: list[str] = []
    budget = plan.budget
    fsdp = plan.mesh["fsdp"]
    if plan.resident > 0.6 * budget:
        if plan.dtypes["ref"] != "bfloat16" and plan.reference:
            out.append(f"--config.model.ref_dtype=bfloat16 (reference {plan.reference / GB:.1f} -> "
                       f"{plan.reference / 2 / GB:.1f} GB per device)")
        more = fsdp * 2
        out.append(f"more devices on the fsdp axis (e.g. --config.mesh.fsdp={more} over {more * plan.mesh['tp']} devices, "
                   f"two nodes): actor, optimizer state and reference shrink to "
                   f"{plan.resident / 2 / GB:.1f} GB per device")
        if plan.dtypes["param"] == "float32":
            out.append(f"--config.model.param_dtype=bfloat16 halves actor + optimizer state "
                       f"({(plan.params + plan.opt_state) / GB:.1f} -> {(plan.params + plan.opt_state) / 2 / GB:.1f} GB), "
                       f"at the cost of bf16 Adam updates (lr 1e-6 is below bf16 resolution for most weights)")
    if not plan.remat:
        out.append("--config.model.remat=True: keep one layer's activations per micro-batch in the backward pass "
                   "instead of all layers'")
    # Largest micro-batch (a multiple of fsdp that divides the mini-batch and the step) whose estimated peak fits.
    fixed_update = plan.update_peak - plan.update.temp
    fixed_logprob = max(plan.logprob_peak - plan.logprob.temp, plan.ref_logprob_peak - (plan.ref_logprob.temp if plan.ref_logprob else 0))
    temp_per_row = plan.update.temp / plan.micro_batch_rows
    lp_temp_per_row = max(plan.logprob.temp, plan.ref_logprob.temp if plan.ref_logprob else 0) / plan.logprob_chunk_rows
    choice = None
    m = plan.micro_batch_rows
    while m >= fsdp:
        if (plan.rows_per_update % m == 0 and m % fsdp == 0
                and fixed_update + temp_per_row * m <= 0.9 * budget and fixed_logprob + lp_temp_per_row * m <= 0.9 * budget):
            choice = m
            break
        m //= 2
    if choice is not None and choice < plan.micro_batch_rows:
        est = max(fixed_update + temp_per_row * choice, fixed_logprob + lp_temp_per_row * choice)
        out.append(f"--config.train.micro_batch={choice} ({choice // fsdp} row(s) per device per micro-batch): "
                   f"estimated peak ~{est / GB:.1f} GB")
    elif choice is None and plan.micro_batch_rows > fsdp:
        out.append(f"--config.train.micro_batch={fsdp} (one row per device) is the smallest micro-batch on this mesh")
    if plan.mesh["tp"] == 1 and plan.micro_batch_rows == fsdp and not plan.fits:
        out.append("--config.mesh.tp=2 (or 4) splits the vocabulary logits and MLP activations of each row across "
                   "devices once micro-batches are down to one row per device")
    if plan.rollout_peak > budget:
        out.append(f"the JAX sampler's rollout phase needs {plan.rollout_peak / GB:.1f} GB (KV cache "
                   f"{plan.kv_cache_jax / GB:.1f} GB for {plan.rollout_rows} rows x {plan.rollout_slots} slots): fewer "
                   f"prompts per step (--config.train.prompts_per_step), or --config.rollout.engine=vllm with "
                   f"--config.rollout.vllm_devices=K (the server on its own GPUs)")
    if not plan.fits and plan.response_len > 2048:
        out.append(f"shorter responses (--config.rollout.max_new_tokens): temporaries grow with the sequence length "
                   f"({plan.seq_len} tokens now)")
    return out


def _chunk_logits_per_device(plan: MemoryPlan) -> int:
    """Bytes of a whole chunk's f32 logits [chunk rows, T, V] with only the vocabulary split (over tp)."""
    tp = plan.mesh["tp"] if plan.vocab_size % plan.mesh["tp"] == 0 else 1
    return plan.logprob_chunk_rows * plan.response_len * plan.vocab_size * 4 // tp


def activations_replicated(plan: MemoryPlan) -> bool:
    """Whether the log-prob pass holds a whole chunk's f32 logits [chunk rows, T, V/tp] on every device, i.e. XLA
    did not split the activations' rows over the fsdp devices (each would hold 1/fsdp of the rows otherwise)."""
    whole_chunk_logits = _chunk_logits_per_device(plan)
    # Only meaningful where the logits dominate the temporaries (real vocabularies and lengths).
    return plan.mesh["fsdp"] > 1 and whole_chunk_logits <= plan.logprob.temp <= 4 * whole_chunk_logits


def format_plan(plan: MemoryPlan) -> str:
    lines = [
        f"memory plan: {plan.model} ({plan.num_params / 1e9:.2f}B params; config from {plan.model_source})",
        f"mesh fsdp={plan.mesh['fsdp']} x tp={plan.mesh['tp']}; params {plan.dtypes['param']}, compute "
        f"{plan.dtypes['compute']}, reference {plan.dtypes['ref']}, remat={plan.remat}",
        f"update: {plan.rows_per_update} rows x {plan.seq_len} tokens ({plan.response_len} response), micro-batches of "
        f"{plan.micro_batch_rows} rows; log-prob pass: {plan.rows_per_step} rows in chunks of {plan.logprob_chunk_rows}",
        "",
        f"{'per device':<36} {'GB':>9}  note",
        f"{'-' * 36} {'-' * 9}  {'-' * 40}",
    ]
    for what, value, note in plan.rows():
        if what.startswith("TOTAL") or what.startswith("peak: update"):
            lines.append(f"{'-' * 36} {'-' * 9}")
        lines.append(f"{what:<36} {'' if value is None else f'{value / GB:9.2f}'}  {note}".rstrip())
    if plan.server is not None:
        lines.append(f"{'-' * 36} {'-' * 9}")
        for what, value, note in plan.server.rows():
            lines.append(f"{what:<36} {value / GB:9.2f}  {note}")
        lines.append(f"{'vLLM server':<36} {'':>9}  {'fits' if plan.server.fits else 'DOES NOT FIT'} "
                     f"(weights + one full-length sequence of KV cache)")
    if plan.layout is not None:
        lines.insert(2, f"node layout: {plan.layout}")
    lines.append("")
    lines.append("temporaries come from XLA's memory analysis of the compiled programs on this backend "
                 f"({_backend_name()}); params, optimizer state and batches are exact.")
    if activations_replicated(plan):
        lines.append(
            f"note: the log-prob pass's temporaries ({plan.logprob.temp / GB:.1f} GB) are as large as the f32 logits "
            f"of all {plan.logprob_chunk_rows} rows of a chunk ({_chunk_logits_per_device(plan) / GB:.1f} GB, "
            f"vocabulary split over tp): either XLA did not split the activations over the {plan.mesh['fsdp']} fsdp "
            f"devices (capojax.sharding.constrain_activations pins the rows to fsdp), or a chunk is large for this "
            f"mesh; a smaller train.micro_batch shrinks them.")
    advice = suggestions(plan)
    if advice:
        lines.append("does not fit; try:" if not plan.fits else "headroom / further options:")
        lines += [f"  - {a}" for a in advice]
    return "\n".join(lines)


def _backend_name() -> str:
    import jax

    return jax.default_backend()


def print_memory_plan(config) -> MemoryPlan:
    """The `--config.dry_run=True` entry point: plan, print the table, return the plan."""
    plan = memory_plan(config)
    print(format_plan(plan), flush=True)
    out = config.get("plan_json", "")
    if out:
        pathlib.Path(out).write_text(json.dumps(plan.to_dict(), indent=1))
    return plan
