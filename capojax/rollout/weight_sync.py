"""Weight sync from the JAX trainer to a vLLM sidecar, and the probe that proves it happened.

One sync (`WeightSync.sync(params)`):

  params (nnx.State or Qwen) --hf_tensors: weight_table, one layer slice at a time--> (HF name, np.ndarray)
  --WeightTransport.push--> the server's weights          (timing/sync_push, sync/gbps)
  --POST /reset_prefix_cache--> no KV block computed under old weights is reused
  --probe: server prompt log-probs on a fixed token sequence vs the trainer's teacher-forced log-probs
  --> sync/logp_gap (max |diff|); above `tolerance` -> WeightSyncError

The probe is what makes a silent failure impossible: a reload that touched the wrong tensors, a transposed
projection, a dtype cast gone wrong or a worker that kept the old weights all show up as a log-prob gap.
`sync/logp_delta` (how far the server's probe log-probs moved since the previous sync) shows that the weights
did change; on a float32 server the gap is at float32 round-off (see tests/rollout/test_vllm_integration.py).

Transports (`WeightTransport`): `push(tensors, version)` moves HF-named numpy tensors into the running
server and returns its timings. `FileTransport` works everywhere the trainer and the server share a
filesystem: it writes safetensors shards to a fast local path (/dev/shm by default), then calls the worker
extension `capojax_load_weights` (third_party/vllm_ext) through `/collective_rpc`, which streams them into the
model's `load_weights` (vLLM fuses q/k/v and gate/up itself), then deletes the files.

An NCCL transport replaces it on GPU nodes without changing `WeightSync` or the engine: vLLM >= 0.32 has a
native weight-transfer API (start the server with `--weight-transfer-config '{"backend": "nccl"}'`; then
`POST /init_weight_transfer_engine {"init_info": {...rendezvous...}}` once, and per sync
`POST /start_weight_update`, `POST /update_weights {"update_info": {names, dtypes, shapes}}` while the trainer
broadcasts each tensor over the NCCL group, `POST /finish_weight_update`). A `NcclTransport.push` would run
exactly that sequence, taking the tensors from `hf_tensors` as device arrays (jax -> torch by DLPack, no host
copy) instead of writing files; the probe check after it stays the same.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Iterable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from capojax.models.config import QwenConfig
from capojax.models.hf import to_hf, weight_table

LOAD_METHOD = "capojax_load_weights"  # third_party/vllm_ext/capojax_vllm_ext/worker_extension.py


class WeightSyncError(RuntimeError):
    """The server's weights do not match the trainer's after a sync."""


# ----------------------------------------------------------------------------------------- params -> HF


def _state_path(key_path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def param_arrays(params: Any) -> dict[tuple[str, ...], jax.Array]:
    """The parameters of a Qwen module or of its (param) nnx.State, by state path, e.g. ("layers", "q_proj")."""
    state = nnx.state(params, nnx.Param) if isinstance(params, nnx.Module) else params
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    out = {}
    for kp, v in leaves:
        out[_state_path(kp)] = v.get_value() if isinstance(v, nnx.Variable) else v
    return out


def hf_tensors(params: Any, config: QwenConfig, *, dtype=None,
               whole_bytes: int = 1 << 30) -> Iterator[tuple[str, np.ndarray]]:
    """(HF tensor name, host array) for every weight of `params` in HF layout, following `weight_table`.

    params: a `Qwen` or its nnx.State (all variables or only `nnx.Param`); dtype: cast to this dtype
    (default: keep the parameter dtype; bfloat16 gives ml_dtypes arrays). A stacked per-layer parameter of at
    most `whole_bytes` is fetched to the host in one transfer and sliced there; a larger one one layer slice at
    a time (each slice shape compiles once, on the first sync), so host memory stays bounded for 7B+ models.
    """
    arrays = param_arrays(params)
    table = weight_table(config)
    missing = [e.path for e in table if e.path not in arrays]
    if missing:
        raise ValueError(f"params lack {missing} that the weight table of this config expects; pass the actor's "
                         f"nnx.state(model) (got paths {sorted(arrays)[:8]}...)")
    for entry in table:
        x = arrays[entry.path]
        if entry.per_layer:
            if x.shape[0] != config.num_layers:
                raise ValueError(f"{entry.path} has leading dim {x.shape[0]}, config has {config.num_layers} layers")
            if x.size * x.dtype.itemsize <= whole_bytes:
                x = np.asarray(jax.device_get(x if dtype is None else x.astype(dtype)))
            for i in range(config.num_layers):
                yield entry.hf_name.format(i=i), _to_host(x[i], entry.layout, dtype)
        else:
            yield entry.hf_name, _to_host(x, entry.layout, dtype)


def _to_host(x: jax.Array | np.ndarray, layout: str, dtype) -> np.ndarray:
    if dtype is not None and x.dtype != jnp.dtype(dtype):
        x = x.astype(dtype)
    return np.ascontiguousarray(to_hf(layout, np.asarray(jax.device_get(x))))


# ----------------------------------------------------------------------------------------- transports


class WeightTransport(Protocol):
    """Moves HF-named tensors into the running server (see the module docstring)."""

    name: str

    def push(self, tensors: Iterable[tuple[str, np.ndarray]], *, version: int) -> dict[str, float]:
        """Loads all `tensors` into the server; returns at least {"bytes", "timing/sync_push"}."""
        ...

    def close(self) -> None:
        ...


class RpcClient(Protocol):
    def collective_rpc(self, method: str, args: Sequence[str] = (), *, timeout: float | None = None) -> list[Any]:
        ...


def default_weight_dir() -> str:
    """/dev/shm when it exists and is writable (RAM-backed: no disk I/O), else the temp dir."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


class FileTransport:
    """safetensors shards in a local directory + the worker extension's `capojax_load_weights`.

    directory: where shards go (default `default_weight_dir()`); the server must see the same path.
    shard_bytes: tensors are written in files of about this size, so the host holds one shard at a time.
    keep_files: leave the files after the load (debugging); by default they are deleted.
    """

    name = "file"

    def __init__(self, client: RpcClient, *, directory: str | None = None, shard_bytes: int = 1 << 30,
                 load_timeout: float = 1800.0, keep_files: bool = False):
        self.client = client
        self.directory = directory or default_weight_dir()
        self.shard_bytes = int(shard_bytes)
        self.load_timeout = load_timeout
        self.keep_files = keep_files
        pathlib.Path(self.directory).mkdir(parents=True, exist_ok=True)

    def _write(self, tensors: Iterable[tuple[str, np.ndarray]], folder: str) -> tuple[list[str], int, int]:
        files: list[str] = []
        shard: dict[str, np.ndarray] = {}
        size = total = count = 0

        def flush():
            nonlocal shard, size
            if not shard:
                return
            path = os.path.join(folder, f"weights-{len(files):05d}.safetensors")
            tmp = path + ".partial"
            save_file(shard, tmp, metadata={"format": "pt"})
            os.replace(tmp, path)  # a reader never sees a half-written file
            files.append(path)
            shard, size = {}, 0

        for name, array in tensors:
            if name in shard:
                raise ValueError(f"tensor {name} appears twice in one weight push")
            shard[name] = array
            size += array.nbytes
            total += array.nbytes
            count += 1
            if size >= self.shard_bytes:
                flush()
        flush()
        return files, total, count

    def push(self, tensors: Iterable[tuple[str, np.ndarray]], *, version: int) -> dict[str, float]:
        folder = tempfile.mkdtemp(prefix=f"capojax-weights-v{version}-", dir=self.directory)
        try:
            t0 = time.perf_counter()
            files, nbytes, count = self._write(tensors, folder)
            t1 = time.perf_counter()
            manifest = json.dumps({"files": files, "version": int(version), "num_tensors": count})
            results = self.client.collective_rpc(LOAD_METHOD, [manifest], timeout=self.load_timeout)
            t2 = time.perf_counter()
        finally:
            if not self.keep_files:
                shutil.rmtree(folder, ignore_errors=True)
        bad = [r for r in results if not isinstance(r, dict) or r.get("version") != int(version)
               or r.get("num_tensors") != count]
        if not results or bad:
            raise WeightSyncError(f"{LOAD_METHOD} returned {results}; expected one dict per worker with "
                                  f"version={version} and num_tensors={count}")
        return {"bytes": float(nbytes), "num_tensors": float(count), "timing/sync_write": t1 - t0,
                "timing/sync_load": t2 - t1, "timing/sync_push": t2 - t0}

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------- probe


def default_probe_tokens(config: QwenConfig, length: int = 64, seed: int = 1234) -> list[int]:
    """A fixed pseudo-random token sequence inside the vocabulary (ids below Qwen's special tokens, 151643,
    which any tokenizer of a smaller vocab also accepts when vocab_size is smaller)."""
    high = min(config.vocab_size, 151643)
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(0, high, size=length)]


@functools.lru_cache(maxsize=16)
def make_trainer_logprobs(graphdef: nnx.GraphDef):
    """jitted `(state, tokens i32[1,T]) -> f32[T-1]`: teacher-forced log p(tokens[t] | tokens[:t]), t >= 1.

    Cached per graphdef, so engines and probes of one architecture share one compiled function.
    """

    @jax.jit
    def fn(state, tokens):
        model = nnx.merge(graphdef, state)
        logits = model(tokens).astype(jnp.float32)[0, :-1]  # [T-1, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1)[:, 0]

    return fn


class WeightSync:
    """Pushes the actor's params to the server and checks them with the log-prob probe.

    template: a `Qwen` of the actor's architecture (its graphdef and config are kept, not its weights).
    transport: a `WeightTransport`; client: the engine's HTTP client (reset_prefix_cache, prompt_logprobs).
    tolerance: the largest allowed max |server - trainer| probe log-prob gap (nats). float32 servers land at
    ~1e-5 on CPU; bfloat16 servers need ~0.1-0.3 (set it from `check()` on the initial weights).
    dtype: dtype of the pushed tensors (default: the params'; use jnp.bfloat16 for a bf16 server).
    """

    def __init__(self, template: nnx.Module, client: Any, transport: WeightTransport, *,
                 probe_tokens: Sequence[int] | None = None, tolerance: float = 2e-3, dtype=None):
        self.graphdef = nnx.graphdef(template)
        self.config: QwenConfig = template.config
        self.client = client
        self.transport = transport
        self.tolerance = float(tolerance)
        self.dtype = dtype
        self.probe_tokens = list(probe_tokens) if probe_tokens is not None else default_probe_tokens(self.config)
        if len(self.probe_tokens) < 2:
            raise ValueError("probe_tokens needs at least 2 tokens (log-probs are of tokens 1..T-1)")
        self._trainer_logprobs = make_trainer_logprobs(self.graphdef)
        self._last_server: np.ndarray | None = None
        self.version = 0

    def _full_state(self, params: Any) -> Any:
        if isinstance(params, nnx.Module):
            return nnx.state(params)
        return params

    def trainer_logprobs(self, params: Any) -> np.ndarray:
        """f32[T-1] log-probs of the probe under `params` (the trainer's view)."""
        tokens = jnp.asarray(np.asarray(self.probe_tokens, np.int32)[None])
        return np.asarray(self._trainer_logprobs(self._full_state(params), tokens), np.float32)

    def check(self, params: Any) -> dict[str, float]:
        """Probe gap between the server's current weights and `params` (no push); see `sync`."""
        t0 = time.perf_counter()
        server = np.asarray(self.client.prompt_logprobs(self.probe_tokens), np.float32)
        trainer = self.trainer_logprobs(params)
        diff = np.abs(server - trainer)
        metrics = {"sync/logp_gap": float(diff.max()), "sync/logp_gap_mean": float(diff.mean()),
                   "sync/logp_delta": float(np.abs(server - self._last_server).max())
                   if self._last_server is not None else float("nan"),
                   "timing/sync_probe": time.perf_counter() - t0}
        self._last_server = server
        return metrics

    def sync(self, params: Any) -> dict[str, float]:
        """Push `params` (nnx.State of the actor, or the Qwen module), reset the prefix cache, probe.

        Raises WeightSyncError when the probe gap exceeds `tolerance`. Returns timing/sync (push + cache
        reset), timing/sync_write / _load / _probe, sync/gbps, sync/gb, sync/logp_gap(_mean), sync/logp_delta.
        """
        self.version += 1
        t0 = time.perf_counter()
        stats = self.transport.push(hf_tensors(params, self.config, dtype=self.dtype), version=self.version)
        self.client.reset_prefix_cache()
        seconds = time.perf_counter() - t0
        metrics = {k: v for k, v in stats.items() if k.startswith("timing/")}
        metrics.update({"timing/sync": seconds, "sync/gb": stats["bytes"] / 1e9,
                        "sync/gbps": stats["bytes"] / 1e9 / max(stats["timing/sync_push"], 1e-9),
                        "sync/version": float(self.version)})
        metrics.update(self.check(params))
        if not metrics["sync/logp_gap"] <= self.tolerance:  # NaN fails too
            raise WeightSyncError(
                f"after weight sync v{self.version} ({self.transport.name} transport) the server's log-probs on "
                f"the probe sequence differ from the trainer's by up to {metrics['sync/logp_gap']:.3g} nats "
                f"(mean {metrics['sync/logp_gap_mean']:.3g}; tolerance {self.tolerance:.3g}). The server is not "
                "sampling from the trainer's weights: a failed or partial reload, a layout/dtype mismatch, or a "
                "tolerance too tight for the server dtype (bf16 needs ~0.1-0.3).")
        return metrics
