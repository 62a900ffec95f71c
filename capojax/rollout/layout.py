"""Where the trainer and a launched vLLM server live on one GPU node, and whether both fit: `rollout.vllm_devices`.

Two layouts (`rollout.engine="vllm"`, a server on this node, N GPUs on the node):

    vllm_devices = k > 0  dedicated   the server gets the last k GPUs (CUDA_VISIBLE_DEVICES, tensor_parallel_size=k)
                                      and `vllm_gpu_memory_utilization` of each (0 = 0.9); the trainer's mesh spans
                                      the first N - k, which are the only GPUs its process sees.
    vllm_devices = 0      co-located  server and trainer share the GPUs: the trainer's XLA_PYTHON_CLIENT_MEM_FRACTION
                                      (`trainer_memory_fraction`) and the server's `gpu_memory_utilization`
                                      (0 = 0.9 - trainer share) must sum below 0.95. The server runs on the first
                                      `vllm_tensor_parallel_size` GPUs (0 = 1) and, with `vllm_sleep`, is started with
                                      --enable-sleep-mode and put to sleep (level 1: KV cache dropped, weights
                                      offloaded to host RAM) while the trainer runs its log-prob and update passes.

Without this, JAX pre-allocates 75 % of every GPU it sees and a server asking for half of GPU 0 cannot start.

`node_layout` checks what can be checked without the model (GPU counts, the mesh, the shares) and raises
`LayoutError` saying what to change; `plan_server` checks that the server's weights and at least one full-length
sequence of KV cache fit its share (vLLM refuses to start otherwise) and how many of the step's rows it can hold.
The dry-run plan (`capojax.memory_plan`) prints both sides; the launcher refuses a layout that cannot fit.

A server started by hand on this node (`scripts/serve_vllm.py --config CONFIG`, loopback `rollout.vllm_url`)
follows the same layout from the same config, and the trainer restricts itself the same way; sleep mode needs a
server the trainer launched (it alone knows when the server may sleep).

Co-location with sleep mode is for GPU nodes only and untested here (this project's CI has no GPU); see
docs/gpu.md for the checklist. On a machine without GPUs (CPU vLLM builds) no layout is applied.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

from capojax.errors import ConfigError

GB = 1e9
SHARE_LIMIT = 0.95  # trainer + server shares of a co-located GPU stay below this (CUDA context, fragmentation)
DEDICATED_UTILIZATION = 0.9  # the server's share of its own GPUs when vllm_gpu_memory_utilization = 0
COLOCATED_TOTAL = 0.9  # default co-located server share = COLOCATED_TOTAL - trainer_memory_fraction
APPLIED_MARKER = "CAPOJAX_NODE_LAYOUT"  # set in the trainer's environment once its GPU visibility is restricted


class LayoutError(ConfigError):
    """The requested trainer + server layout cannot work on this node; the message has the numbers."""


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """Which GPUs (ids as CUDA_VISIBLE_DEVICES spells them) the trainer and the server get, and their shares."""

    gpus: tuple[str, ...]  # every GPU of the node
    vllm_devices: int  # k; 0 = co-located
    trainer_gpus: tuple[str, ...]
    server_gpus: tuple[str, ...]
    tensor_parallel_size: int
    server_utilization: float  # vLLM --gpu-memory-utilization on each server GPU
    trainer_fraction: float | None  # XLA_PYTHON_CLIENT_MEM_FRACTION when co-located (None: JAX's default)
    sleep: bool  # --enable-sleep-mode, /sleep around the trainer's passes (co-located only)
    device_memory_gb: float

    @property
    def colocated(self) -> bool:
        return self.vllm_devices == 0

    @property
    def trainer_device_count(self) -> int:
        return len(self.trainer_gpus)

    @property
    def trainer_budget_gb(self) -> float:
        """Per-device memory the trainer may use: the whole GPU when dedicated, its share when co-located."""
        return self.device_memory_gb * (self.trainer_fraction if self.colocated else 1.0)

    def trainer_environment(self) -> dict[str, str]:
        """Variables the trainer process needs before JAX starts its backend."""
        if self.colocated:
            return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{self.trainer_fraction:.2f}"}
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.trainer_gpus)}

    def server_environment(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.server_gpus)}

    def server_extra_args(self) -> tuple[str, ...]:
        return ("--enable-sleep-mode",) if self.sleep else ()

    def describe(self) -> str:
        if self.colocated:
            return (f"co-located on {len(self.gpus)} GPUs: trainer XLA_PYTHON_CLIENT_MEM_FRACTION="
                    f"{self.trainer_fraction:.2f}, vLLM gpu_memory_utilization={self.server_utilization:.2f} on GPU(s) "
                    f"{','.join(self.server_gpus)} (tensor_parallel_size={self.tensor_parallel_size}"
                    f"{', sleep mode' if self.sleep else ''})")
        return (f"trainer on GPUs {','.join(self.trainer_gpus)}, vLLM on GPUs {','.join(self.server_gpus)} "
                f"(tensor_parallel_size={self.tensor_parallel_size}, gpu_memory_utilization="
                f"{self.server_utilization:.2f})")


def _get(section, key, default):
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value


def node_layout(config, gpus: int | tuple[str, ...] | list[str]) -> NodeLayout:
    """The layout `config.rollout` asks for on a node with `gpus` (a count, or the ids CUDA_VISIBLE_DEVICES lists).

    Raises LayoutError when it cannot work: no GPU left for the trainer, a mesh larger than the trainer's GPUs,
    a tensor-parallel size vLLM rejects for the model's heads (checked in `plan_server`), or co-located shares
    that do not sum below 0.95.
    """
    r = config.rollout
    ids = tuple(str(i) for i in range(gpus)) if isinstance(gpus, int) else tuple(str(g) for g in gpus)
    n = len(ids)
    k = int(_get(r, "vllm_devices", 0))
    if n < 1:
        raise LayoutError("no GPUs: rollout.vllm_devices lays out GPUs; on a CPU machine leave it at 0")
    if k < 0 or k >= n:
        raise LayoutError(
            f"rollout.vllm_devices={k} leaves {n - k} of the node's {n} GPUs for the trainer; use 1..{n - 1} "
            f"(the server on the last k GPUs) or 0 (server and trainer share every GPU)")
    fsdp, tp = int(config.mesh.fsdp), int(config.mesh.tp)
    trainer_n = n - k if k else n
    needed = fsdp * tp if fsdp != -1 else tp
    if needed > trainer_n or (fsdp == -1 and trainer_n % tp):
        raise LayoutError(
            f"the trainer's mesh (mesh.fsdp={fsdp} x mesh.tp={tp}) does not fit the {trainer_n} GPUs left to it by "
            f"rollout.vllm_devices={k}; use --config.mesh.fsdp=-1 (all {trainer_n} GPUs) with a mesh.tp that "
            f"divides {trainer_n}, or fewer server GPUs")
    tp_server = int(_get(r, "vllm_tensor_parallel_size", 0)) or (k if k else 1)
    util = float(_get(r, "vllm_gpu_memory_utilization", 0.0))
    sleep = bool(_get(r, "vllm_sleep", True))
    if k:
        if tp_server != k:
            raise LayoutError(f"rollout.vllm_tensor_parallel_size={tp_server} must equal rollout.vllm_devices={k} "
                              f"(the server spans its GPUs) or be 0")
        return NodeLayout(ids, k, ids[: n - k], ids[n - k:], k, util or DEDICATED_UTILIZATION, None, False,
                          float(config.get("device_memory_gb", 80.0)))
    if tp_server > n:
        raise LayoutError(f"rollout.vllm_tensor_parallel_size={tp_server} is more than the node's {n} GPUs")
    fraction = float(_get(r, "trainer_memory_fraction", 0.55))
    util = util or round(COLOCATED_TOTAL - fraction, 4)
    if not (0 < fraction < 1 and 0 < util < 1) or fraction + util >= SHARE_LIMIT:
        raise LayoutError(
            f"co-located shares do not fit one GPU: trainer XLA_PYTHON_CLIENT_MEM_FRACTION "
            f"(rollout.trainer_memory_fraction={fraction:.2f}) + vLLM gpu_memory_utilization "
            f"(rollout.vllm_gpu_memory_utilization={util:.2f}) = {fraction + util:.2f}, which must be below "
            f"{SHARE_LIMIT}; lower one of them, or give the server its own GPUs with rollout.vllm_devices=K")
    return NodeLayout(ids, 0, ids, ids[:tp_server], tp_server, util, fraction, sleep,
                      float(config.get("device_memory_gb", 80.0)))


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    """Per-GPU bytes of the vLLM server: its weights, the KV cache one full-length sequence needs, its share."""

    gpus: int
    tensor_parallel_size: int
    share: int  # gpu_memory_utilization x device memory
    weights: int  # per GPU
    kv_per_sequence: int  # per GPU, max_model_len tokens
    max_model_len: int
    step_rows: int  # rows one step samples (prompts_per_step x n)

    @property
    def kv_space(self) -> int:
        return self.share - self.weights

    @property
    def sequences(self) -> int:
        """Full-length sequences whose KV fits at once (vLLM needs >= 1; the step's rows run in waves above it)."""
        return max(0, self.kv_space // self.kv_per_sequence)

    @property
    def fits(self) -> bool:
        return self.sequences >= 1

    def rows(self) -> list[tuple[str, int | None, str]]:
        return [
            ("vLLM: share of each server GPU", self.share, f"{self.gpus} GPU(s), tensor_parallel_size "
                                                           f"{self.tensor_parallel_size}"),
            ("vLLM: weights", self.weights, "per GPU"),
            ("vLLM: KV cache space", self.kv_space,
             f"{self.sequences} sequences of {self.max_model_len} tokens at once "
             f"({min(self.sequences, self.step_rows)}/{self.step_rows} of a step's rows)"),
        ]


def check_tensor_parallel(qcfg, tp: int) -> None:
    """vLLM splits attention heads over tensor_parallel_size: it must divide the query heads, and divide the kv
    heads (or be a multiple of them)."""
    heads, kv = int(qcfg.num_heads), int(qcfg.num_kv_heads)
    ok = heads % tp == 0 and (kv % tp == 0 if kv >= tp else tp % kv == 0)
    if not ok:
        good = [d for d in range(1, heads + 1) if heads % d == 0 and (kv % d == 0 if kv >= d else d % kv == 0)]
        raise LayoutError(f"vLLM cannot split {heads} query / {kv} kv heads over tensor_parallel_size={tp}; "
                          f"use rollout.vllm_devices (or vllm_tensor_parallel_size) in {good}")


def plan_server(layout: NodeLayout, qcfg, *, dtype_bytes: int, max_model_len: int, step_rows: int) -> ServerPlan:
    """The server's per-GPU memory on `layout` for model config `qcfg` served in a dtype of `dtype_bytes`."""
    tp = layout.tensor_parallel_size
    check_tensor_parallel(qcfg, tp)
    h, v, inter, L = qcfg.hidden_size, qcfg.vocab_size, qcfg.intermediate_size, qcfg.num_layers
    d, nh, nkv = qcfg.head_dim, qcfg.num_heads, qcfg.num_kv_heads
    per_layer = (h * (nh + 2 * nkv) * d + nh * d * h + 3 * h * inter  # q/k/v, o, gate/up/down
                 + 2 * h  # the two norms
                 + ((nh + 2 * nkv) * d if qcfg.qkv_bias else 0) + (2 * d if qcfg.qk_norm else 0))
    params = L * per_layer + h + v * h * (1 if qcfg.tie_word_embeddings else 2)  # + final norm, embed (+ head)
    kv_heads_per_gpu = max(1, nkv // tp)  # fewer kv heads than GPUs: each GPU keeps a copy of one
    kv_seq = 2 * L * max_model_len * kv_heads_per_gpu * d * dtype_bytes
    return ServerPlan(gpus=len(layout.server_gpus), tensor_parallel_size=tp,
                      share=int(layout.server_utilization * layout.device_memory_gb * GB),
                      weights=int(params * dtype_bytes // tp), kv_per_sequence=int(kv_seq),
                      max_model_len=int(max_model_len), step_rows=int(step_rows))


def refuse_if_not_fitting(plan: ServerPlan, layout: NodeLayout) -> None:
    if plan.fits:
        return
    raise LayoutError(
        f"the vLLM server does not fit its share: {layout.describe()}; share {plan.share / GB:.1f} GB per GPU, "
        f"weights {plan.weights / GB:.1f} GB, leaving {plan.kv_space / GB:.1f} GB for a KV cache that needs "
        f"{plan.kv_per_sequence / GB:.2f} GB for one {plan.max_model_len}-token sequence. Raise "
        f"rollout.vllm_gpu_memory_utilization, give the server more GPUs (rollout.vllm_devices), or lower "
        f"rollout.vllm_max_model_len")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # as urlsplit's .hostname gives them (no IPv6 brackets)


def server_on_this_node(url: str) -> bool:
    """Whether `rollout.vllm_url` names a server on this machine (a loopback address)."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in LOOPBACK_HOSTS


def layout_requested(config) -> bool:
    """A node layout applies to a vLLM server on this node: one the trainer launches (`rollout.vllm_launch`), or
    one started beside it on a loopback `rollout.vllm_url` (scripts/serve_vllm.py --config, same config), whose
    GPUs the trainer must then leave alone just the same."""
    r = config.rollout
    if str(_get(r, "engine", "jax")) != "vllm":
        return False
    url = str(_get(r, "vllm_url", ""))
    return bool(_get(r, "vllm_launch", False)) or not url or server_on_this_node(url)  # no URL: it launches one


def node_gpus(environ=None) -> tuple[str, ...]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else one per `nvidia-smi --list-gpus`
    line, else none (a CPU machine)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU ")))


def apply_trainer_environment(config, environ=None) -> NodeLayout | None:
    """Before JAX starts (python -m capojax.train): on a GPU node with a launched vLLM server, restrict the
    trainer's GPUs (dedicated) or its memory share (co-located) and return the layout; None otherwise.
    A co-located XLA_PYTHON_CLIENT_MEM_FRACTION the user already set is kept (and checked)."""
    environ = os.environ if environ is None else environ
    if not layout_requested(config) or environ.get(APPLIED_MARKER):
        return None
    gpus = node_gpus(environ)
    if not gpus:
        return None
    layout = node_layout(config, gpus)
    env = layout.trainer_environment()
    user_fraction = environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if layout.colocated and user_fraction:
        fraction = float(user_fraction)
        if fraction + layout.server_utilization >= SHARE_LIMIT:
            raise LayoutError(
                f"XLA_PYTHON_CLIENT_MEM_FRACTION={user_fraction} in the environment + vLLM gpu_memory_utilization "
                f"{layout.server_utilization:.2f} >= {SHARE_LIMIT}; unset it (rollout.trainer_memory_fraction sets "
                f"it) or lower it")
        env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION")
    environ.update(env)
    environ[APPLIED_MARKER] = ",".join(layout.gpus)  # the server's GPUs are absolute ids of this list
    return layout


def trainer_devices(config, devices: list) -> list:
    """The devices the trainer's mesh spans: all of them, except the last `rollout.vllm_devices` when a launched
    server gets its own GPUs and this process still sees them (fake CPU devices, or no `python -m capojax.train`
    entry to hide them)."""
    k = int(_get(config.rollout, "vllm_devices", 0))
    if not layout_requested(config) or k == 0 or os.environ.get(APPLIED_MARKER):
        return list(devices)
    if k >= len(devices):
        raise LayoutError(f"rollout.vllm_devices={k} leaves none of the {len(devices)} devices for the trainer")
    return list(devices)[: len(devices) - k]


def server_layout(config, environ=None) -> NodeLayout | None:
    """The layout a launched server follows: the node's GPUs as recorded by `apply_trainer_environment` (or seen
    now), None on a machine without GPUs."""
    environ = os.environ if environ is None else environ
    recorded = environ.get(APPLIED_MARKER)
    gpus = tuple(recorded.split(",")) if recorded else node_gpus(environ)
    return node_layout(config, gpus) if gpus else None
