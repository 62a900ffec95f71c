"""`VLLMRolloutEngine`: rollouts from a vLLM sidecar over its OpenAI-compatible HTTP API.

Token ids go in (`prompt` as a list of ids) and come out (`return_token_ids`), so nothing is re-tokenised.
Each prompt is one `/v1/completions` request with `n` samples and its own seed; requests run concurrently
(`max_concurrency` threads) and vLLM batches them itself (continuous batching), so the HTTP layer never
waits for the slowest prompt of a fixed batch.

Request fields that make a rollout trainable:
- `logprobs: 0` + server `--logprobs-mode processed_logprobs`: the log-prob of each sampled token under the
  distribution it was drawn from (after temperature / top-k / top-p), like the JAX sampler's.
- `stop_token_ids` = the call's stop ids + the engine's `eos_ids`, with `ignore_eos: true`: rows end on exactly
  these ids (the stop token is kept in the row), never on ids the server reads from generation_config.json.
- `seed` per prompt (vLLM gives sample j of a request seed + j), derived from (params.seed, prompt index),
  so a rollout is reproducible on the same server and weights.
- `return_tokens_as_token_ids: true`: the `logprobs.tokens` strings are `token_id:<id>`, checked against
  `token_ids` so that log-probs can never be attached to the wrong tokens.
- `presence_penalty` = params.presence_penalty (vLLM subtracts it from the logits of tokens the sequence has
  generated, before temperature; processed log-probs are of the penalised distribution, as the JAX sampler's);
  every other penalty is off. vLLM accepts [-2, 2]: a value outside is refused before any request is sent.

Failure handling: every HTTP call has a socket timeout and is retried with exponential backoff on connection
errors, timeouts and 5xx answers; a 4xx answer (a bad request: token id out of vocabulary, prompt longer than
max_model_len) raises `VLLMRequestError` at once with the server's message. While a batch is in flight a
watchdog checks the server (process alive when the engine owns a `VLLMServer`; `GET /health` otherwise): a
server that died or stopped answering raises `VLLMServerError` with the server's log tail within
`health_interval * health_failures` seconds, instead of waiting for the request timeout.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any, Sequence

import numpy as np

from capojax.errors import ConfigError, UserError
from capojax.rollout.base import Rollout, SamplingParams, check_prompts
from capojax.rollout.vllm_server import VLLMServer, VLLMServerError
from capojax.rollout.weight_sync import FileTransport, WeightSync, WeightTransport

__all__ = ["VLLMClient", "VLLMRequestError", "VLLMRolloutEngine", "VLLMServerError", "VLLMUnreachableError",
           "prompt_seed", "require_server"]

_RETRY_STATUS = (500, 502, 503, 504)


class VLLMUnreachableError(UserError, VLLMServerError):
    """No vLLM server answers at the configured URL when the run starts."""


def require_server(url: str, checkpoint_dir: str = "<checkpoint>", *, timeout: float = 30.0) -> None:
    """Raises `VLLMUnreachableError` unless a vLLM server answers GET /health at `url` within `timeout` s."""
    try:
        client = VLLMClient(url)
    except ValueError as e:
        raise ConfigError(f"config.rollout.vllm_url: {e}") from e
    if not client.health(timeout=timeout):
        raise VLLMUnreachableError(
            f"no vLLM server answers at rollout.vllm_url={url}. Start one on the actor's checkpoint with "
            f"`python scripts/serve_vllm.py --model {checkpoint_dir} --port <port>`, or set "
            "--config.rollout.vllm_launch=True to let the trainer start it")


class VLLMRequestError(ValueError):
    """The server rejected a request (HTTP 4xx): the request is wrong, retrying cannot help."""


class _Aborted(Exception):
    pass


class VLLMClient:
    """Minimal JSON-over-HTTP client for a vLLM server, with timeouts, retries and abortable requests.

    base_url: e.g. "http://127.0.0.1:8000"; server: the launcher's handle, when this process owns the server
    (its liveness and log tail go into error messages); timeout: socket timeout of one attempt in seconds
    (covers connect and every read: a generation request must finish within it); max_retries: extra attempts
    after a connection error, timeout or 5xx; backoff: first retry delay in seconds, doubled each retry.
    """

    def __init__(self, base_url: str, *, server: VLLMServer | None = None, timeout: float = 600.0,
                 max_retries: int = 3, backoff: float = 1.0):
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"base_url must look like http://HOST:PORT, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parsed.hostname, parsed.port
        self.server = server
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._aborted = threading.Event()

    # ------------------------------------------------------------------ low level

    def _death(self) -> str | None:
        return self.server.describe_death() if self.server is not None else None

    def _log_tail(self) -> str:
        if self.server is None:
            return ""
        return f"\nLast lines of the server log {self.server.log_path}:\n{self.server.log_tail()}"

    def _once(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        with self._lock:
            self._open.add(conn)
        try:
            if self._aborted.is_set():
                raise _Aborted()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def request(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None,
                retries: int | None = None) -> Any:
        """One JSON call with retries; returns the decoded JSON body (None for an empty body)."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.max_retries if retries is None else retries
        body = None if payload is None else json.dumps(payload).encode()
        last: str = ""
        for attempt in range(retries + 1):
            death = self._death()
            if death is not None:
                raise VLLMServerError(f"{method} {path}: {death}")
            try:
                status, data = self._once(method, path, body, timeout)
            except _Aborted:
                raise VLLMServerError(f"{method} {path} aborted: the server is down or hung "
                                      f"(see the error raised by the watchdog)") from None
            except (ConnectionError, socket.timeout, TimeoutError, OSError, http.client.HTTPException) as e:
                if self._aborted.is_set():
                    raise VLLMServerError(f"{method} {path} aborted: the server is down or hung") from None
                last = f"{type(e).__name__}: {e}"
            else:
                if status < 400:
                    return json.loads(data) if data.strip() else None
                text = data.decode(errors="replace")[:2000]
                if status not in _RETRY_STATUS:
                    raise VLLMRequestError(f"vLLM server rejected {method} {path} with HTTP {status}: {text}")
                last = f"HTTP {status}: {text}"
            if attempt < retries:
                time.sleep(self.backoff * 2**attempt)
        death = self._death()
        if death is not None:
            raise VLLMServerError(f"{method} {path}: {death}")
        raise VLLMServerError(
            f"{method} {self.base_url}{path} failed {retries + 1} times (timeout {timeout:.0f} s per attempt); "
            f"last error: {last}. The server is down, hung or overloaded; check it with "
            f"`curl {self.base_url}/health`.{self._log_tail()}")

    def abort_all(self) -> None:
        """Make every in-flight and future request fail fast (used when the server is known dead or hung)."""
        self._aborted.set()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset_abort(self) -> None:
        self._aborted.clear()

    # ------------------------------------------------------------------ endpoints

    def health(self, timeout: float = 10.0) -> bool:
        """True when GET /health answers 200 within `timeout` (no retries)."""
        try:
            status, _ = self._once("GET", "/health", None, timeout)
        except (_Aborted, ConnectionError, socket.timeout, TimeoutError, OSError, http.client.HTTPException):
            return False
        return status == 200

    def model_names(self) -> list[str]:
        return [m["id"] for m in self.request("GET", "/v1/models", timeout=30.0)["data"]]

    def completions(self, payload: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return self.request("POST", "/v1/completions", payload, timeout=timeout)

    def collective_rpc(self, method: str, args: Sequence[str] = (), *, timeout: float | None = None) -> list[Any]:
        """Calls `method` on every worker (dev mode: VLLM_SERVER_DEV_MODE=1); returns one result per worker.

        Not retried: a weight load is not idempotent mid-way, and its failure must surface.
        """
        payload: dict[str, Any] = {"method": method, "args": [str(a) for a in args]}
        if timeout is not None:
            payload["timeout"] = timeout
        try:
            out = self.request("POST", "/collective_rpc", payload,
                               timeout=max(self.timeout, (timeout or 0) + 60), retries=0)
        except VLLMRequestError as e:
            if "404" in str(e):
                raise VLLMRequestError(f"{e}\n/collective_rpc is missing: start the server with "
                                       "VLLM_SERVER_DEV_MODE=1 (scripts/serve_vllm.py does)") from None
            raise
        return [] if out is None else list(out.get("results", []))

    def reset_prefix_cache(self) -> None:
        self.request("POST", "/reset_prefix_cache", timeout=60.0)

    def prompt_logprobs(self, tokens: Sequence[int], *, model: str | None = None) -> np.ndarray:
        """f32[T-1]: the server's log p(tokens[t] | tokens[:t]) for t = 1..T-1 (raw model log-probs)."""
        payload = {"prompt": [int(t) for t in tokens], "max_tokens": 1, "temperature": 0.0,
                   "prompt_logprobs": 0, "ignore_eos": True}
        if model is not None:
            payload["model"] = model
        out = self.completions(payload, timeout=max(self.timeout, 60.0))
        entries = out["choices"][0]["prompt_logprobs"]
        if entries is None or len(entries) != len(tokens):
            raise VLLMServerError(f"prompt_logprobs: expected {len(tokens)} entries, got "
                                  f"{None if entries is None else len(entries)}")
        values = []
        for t, entry in zip(tokens[1:], entries[1:]):
            item = entry.get(str(int(t)))
            if item is None:
                raise VLLMServerError(f"prompt_logprobs: no entry for token {t} in {entry}")
            values.append(item["logprob"] if isinstance(item, dict) else item)
        return np.asarray(values, np.float32)


def launch_config(config: Any, checkpoint_dir: str, layout: Any = None):
    """The `ServerConfig` of a server the trainer launches (`rollout.vllm_launch`). With a node `layout`
    (`capojax.rollout.layout`, GPU nodes): its GPUs (CUDA_VISIBLE_DEVICES), tensor-parallel size, memory share
    and sleep mode, after checking that the server's weights and one full-length sequence fit that share."""
    from capojax.rollout.vllm_server import ServerConfig

    r = config.rollout

    def get(key, default):
        value = r.get(key, default) if hasattr(r, "get") else getattr(r, key, default)
        return default if value is None else value

    max_len = int(get("vllm_max_model_len", 0)) or (int(config.data.max_prompt_len) + int(r.max_new_tokens) + 1)
    dtype = str(get("vllm_dtype", "float32"))
    settings: dict[str, Any] = {"gpu_memory_utilization": float(get("vllm_gpu_memory_utilization", 0.0)) or 0.5}
    if layout is not None:
        from capojax.models import QwenConfig
        from capojax.rollout import layout as layout_lib

        plan = layout_lib.plan_server(layout, QwenConfig.from_json(checkpoint_dir),
                                      dtype_bytes=4 if dtype == "float32" else 2, max_model_len=max_len,
                                      step_rows=int(config.train.prompts_per_step) * int(r.n))
        layout_lib.refuse_if_not_fitting(plan, layout)
        settings = {"gpu_memory_utilization": layout.server_utilization,
                    "tensor_parallel_size": layout.tensor_parallel_size,
                    "env": tuple(layout.server_environment().items()), "extra_args": layout.server_extra_args()}
    return ServerConfig(
        model=checkpoint_dir, python=str(get("vllm_python", "")) or None, dtype=dtype, max_model_len=max_len,
        cpu_kvcache_gb=int(get("vllm_cpu_kvcache_gb", 2)), enforce_eager=bool(get("vllm_enforce_eager", False)),
        seed=int(config.train.seed), **settings)


def prompt_seed(seed: int, prompt_index: int, n: int) -> int:
    """The request seed of one prompt: a hash of (seed, prompt index) in [0, 2^31 - n), so that the n child
    seeds vLLM derives (seed + j) stay in range and prompts of one call do not share a random stream."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(prompt_index)]).generate_state(1, np.uint32)[0]
    return int(state) % (2**31 - 1 - n)


def _parse_token(token: str) -> int:
    if not token.startswith("token_id:"):
        raise VLLMServerError(f"expected 'token_id:<id>' tokens (return_tokens_as_token_ids), got {token!r}")
    return int(token[len("token_id:"):])


class VLLMRolloutEngine:
    """`RolloutEngine` backed by a vLLM server (see the module docstring).

    base_url: the server, e.g. `server.url` of `launch_vllm_server`; server: pass the handle when this process
    owns the server (liveness + log tail in errors, `close()` stops it if `own_server`).
    pad_id: pads completions; eos_ids: stop ids added to every request's stop_token_ids (as the JAX engine).
    template: a `Qwen` of the actor's architecture, needed by `update_weights` (graphdef + config; its weights
    are not used) together with `transport` (default: `FileTransport`) and the probe settings of `WeightSync`.
    max_concurrency: requests in flight at once. request_timeout: seconds one request may take (generation
    included). seeded: send per-prompt seeds (reproducible; vLLM's seeded sampling path is a bit slower).
    """

    def __init__(self, base_url: str, *, pad_id: int, eos_ids: Sequence[int] = (), model_name: str | None = None,
                 server: VLLMServer | None = None, own_server: bool = False, template: Any = None,
                 transport: WeightTransport | None = None, probe_tokens: Sequence[int] | None = None,
                 logp_gap_tolerance: float = 2e-3, sync_dtype=None, max_concurrency: int = 64,
                 request_timeout: float = 600.0, max_retries: int = 3, backoff: float = 1.0,
                 health_interval: float = 5.0, health_timeout: float = 10.0, health_failures: int = 3,
                 seeded: bool = True, sleep_mode: bool = False):
        self.client = VLLMClient(base_url, server=server, timeout=request_timeout, max_retries=max_retries,
                                 backoff=backoff)
        self.server = server
        self.own_server = own_server
        self.pad_id = int(pad_id)
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self._model_name = model_name
        self.max_concurrency = int(max_concurrency)
        self.health_interval = float(health_interval)
        self.health_timeout = float(health_timeout)
        self.health_failures = int(health_failures)
        self.seeded = seeded
        self.sleep_mode = sleep_mode  # the server was started with --enable-sleep-mode (co-located GPUs)
        self._asleep = False
        self._pool = cf.ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="vllm-request")
        self._closed = False
        self.weight_sync: WeightSync | None = None
        if template is not None:
            transport = transport if transport is not None else FileTransport(self.client)
            self.weight_sync = WeightSync(template, self.client, transport, probe_tokens=probe_tokens,
                                          tolerance=logp_gap_tolerance, dtype=sync_dtype)

    @classmethod
    def from_config(cls, config: Any, *, model: Any, checkpoint_dir: str, pad_id: int,
                    eos_ids: Sequence[int] = ()) -> "VLLMRolloutEngine":
        """The engine for `config.rollout.engine == "vllm"` (called by the trainer with the actor `model`).

        Reads `config.rollout` keys (missing ones take the defaults in brackets):
          vllm_url ["http://127.0.0.1:8000"]  a running sidecar (scripts/serve_vllm.py --model <checkpoint>)
          vllm_launch [False]  start a sidecar on `checkpoint_dir` instead (on a free port; stopped by close())
          vllm_python [""], vllm_dtype ["float32"], vllm_gpu_memory_utilization [0 = by layout], vllm_cpu_kvcache_gb [2],
          vllm_max_model_len [0 = data.max_prompt_len + rollout.max_new_tokens], vllm_enforce_eager [False]
                                launch settings (see ServerConfig, `launch_config`)
          vllm_devices [0], vllm_tensor_parallel_size [0], trainer_memory_fraction [0.55], vllm_sleep [True]
                                the GPU layout of trainer and server (capojax.rollout.layout; GPU nodes only)
          vllm_logp_tol [2e-3]  probe tolerance of the weight sync (float32 server; ~0.2 for bf16)
          vllm_timeout [600], vllm_max_concurrency [64], vllm_sync_dir ["" = /dev/shm]
        Then it makes sure the server serves the actor's weights: when the probe gap exceeds the tolerance
        (e.g. a resumed run, or a server started from another checkpoint), the actor's weights are pushed.
        """
        r = config.rollout

        def get(key, default):
            value = r.get(key, default) if hasattr(r, "get") else getattr(r, key, default)
            return default if value is None else value

        server = None
        sleep_mode = False
        url = str(get("vllm_url", "") or "")
        if bool(get("vllm_launch", False)) or not url:
            from capojax.rollout.layout import server_layout
            from capojax.rollout.vllm_server import launch_vllm_server

            layout = server_layout(config)  # None without GPUs
            server = launch_vllm_server(launch_config(config, checkpoint_dir, layout))
            sleep_mode = layout is not None and layout.sleep
            url = server.url
        else:
            require_server(url, checkpoint_dir)
        transport_dir = str(get("vllm_sync_dir", "")) or None
        engine = cls(url, pad_id=pad_id, eos_ids=eos_ids, server=server, own_server=server is not None,
                     template=model, logp_gap_tolerance=float(get("vllm_logp_tol", 2e-3)),
                     request_timeout=float(get("vllm_timeout", 600.0)),
                     max_concurrency=int(get("vllm_max_concurrency", 64)), sleep_mode=sleep_mode)
        try:
            if transport_dir is not None:
                engine.weight_sync.transport = FileTransport(engine.client, directory=transport_dir)
            if not engine.check_weights(model)["sync/logp_gap"] <= engine.weight_sync.tolerance:
                engine.update_weights(model)
        except BaseException:
            engine.close()
            raise
        return engine

    @property
    def model_name(self) -> str:
        if self._model_name is None:
            names = self.client.model_names()
            if not names:
                raise VLLMServerError(f"{self.client.base_url}/v1/models lists no model")
            self._model_name = names[0]
        return self._model_name

    # ------------------------------------------------------------------ generation

    def _payload(self, prompt: Sequence[int], index: int, params: SamplingParams, stop_ids: list[int]) -> dict:
        payload = {
            "model": self.model_name,
            "prompt": [int(t) for t in prompt],
            "n": 1 if params.temperature == 0 else params.n,  # vLLM rejects greedy n > 1: rows are copied
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,  # -1 disables top-k on every vLLM version
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": float(params.presence_penalty),  # on generated tokens, as the JAX sampler
            "frequency_penalty": 0.0,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "stop_token_ids": stop_ids,
            "ignore_eos": True,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if self.seeded:
            payload["seed"] = prompt_seed(params.seed, index, params.n)
        return payload

    def _watch(self, futures: list[cf.Future]) -> None:
        """Waits for all futures; raises VLLMServerError early when the server dies or hangs."""
        pending = set(futures)
        failures = 0
        while pending:
            done, pending = cf.wait(pending, timeout=self.health_interval, return_when=cf.FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
            if not pending:
                return
            death = self.client._death()
            if death is not None:
                raise VLLMServerError(f"generate: {death}")
            if self.client.health(timeout=self.health_timeout):
                failures = 0
                continue
            failures += 1
            if failures >= self.health_failures:
                raise VLLMServerError(
                    f"generate: the vLLM server at {self.client.base_url} did not answer /health "
                    f"{failures} times in a row ({self.health_timeout:.0f} s timeout each) while requests were "
                    f"in flight: it is down or hung.{self.client._log_tail()}")

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> Rollout:
        """Samples params.n completions per prompt (token id lists) -> Rollout with rows prompt-major."""
        if self._closed:
            raise RuntimeError("VLLMRolloutEngine.generate called after close()")
        check_prompts(prompts)
        if not -2.0 <= params.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty={params.presence_penalty}: vLLM accepts values in [-2, 2]; use one "
                             "in that range (or the JAX engine, which takes any finite value)")
        self.wake_up()
        stop_ids = list(dict.fromkeys([*params.stop_token_ids, *self.eos_ids]))
        self.model_name  # resolve once, before the threads start  # noqa: B018
        payloads = [self._payload(p, i, params, stop_ids) for i, p in enumerate(prompts)]
        self.client.reset_abort()
        futures = [self._pool.submit(self.client.completions, p) for p in payloads]
        try:
            self._watch(futures)
        except BaseException:
            self.client.abort_all()  # unblock threads still waiting on a dead/hung server
            for f in futures:
                f.cancel()
            raise
        responses = [f.result() for f in futures]
        return self._to_rollout(responses, params, set(stop_ids))

    def _to_rollout(self, responses: list[dict], params: SamplingParams, stop_ids: set[int]) -> Rollout:
        n, T = params.n, params.max_new_tokens
        rows = len(responses) * n
        tokens = np.full((rows, T), self.pad_id, np.int32)
        logprobs = np.zeros((rows, T), np.float32)
        lengths = np.zeros(rows, np.int32)
        finished = np.zeros(rows, bool)
        for i, resp in enumerate(responses):
            choices = sorted(resp.get("choices") or [], key=lambda c: c["index"])
            asked = 1 if params.temperature == 0 else n
            if len(choices) != asked:
                raise VLLMServerError(f"prompt {i}: asked for n={asked} samples, the server returned {len(choices)}")
            if asked == 1:
                choices = choices * n  # greedy: every sample of a prompt is the same sequence
            for j, choice in enumerate(choices):
                r = i * n + j
                ids = choice.get("token_ids")
                lp = choice.get("logprobs") or {}
                if ids is None:
                    raise VLLMServerError("the server ignored return_token_ids (vLLM >= 0.10.2 is needed)")
                lps = lp.get("token_logprobs")
                if lps is None or len(lps) != len(ids):
                    raise VLLMServerError(f"prompt {i} sample {j}: {len(ids)} tokens but "
                                          f"{None if lps is None else len(lps)} log-probs")
                if [_parse_token(t) for t in lp.get("tokens", [])] != list(ids):
                    raise VLLMServerError(f"prompt {i} sample {j}: logprobs.tokens do not match token_ids")
                if choice.get("finish_reason") not in ("stop", "length"):
                    raise VLLMServerError(f"prompt {i} sample {j} ended with finish_reason="
                                          f"{choice.get('finish_reason')!r} (aborted by the server?)")
                k = len(ids)
                if k > T:
                    raise VLLMServerError(f"prompt {i} sample {j}: {k} tokens > max_new_tokens={T}")
                tokens[r, :k] = ids
                logprobs[r, :k] = [(-np.inf if v is None else v) for v in lps]
                lengths[r] = k
                finished[r] = k > 0 and int(ids[-1]) in stop_ids
        return Rollout(tokens=tokens, logprobs=logprobs, mask=np.arange(T)[None, :] < lengths[:, None],
                       lengths=lengths, finished=finished,
                       prompt_index=np.repeat(np.arange(len(responses), dtype=np.int32), n), pad_id=self.pad_id)

    # ------------------------------------------------------------------ weights

    def update_weights(self, params: Any) -> dict[str, float]:
        """Pushes `params` (the actor's nnx.State or Qwen) to the server and checks them with the probe.

        Returns timing/sync, timing/sync_{write,load,probe}, sync/gbps, sync/gb, sync/logp_gap(_mean),
        sync/logp_delta, sync/version; raises WeightSyncError when the probe gap exceeds the tolerance.
        """
        if self.weight_sync is None:
            raise RuntimeError("VLLMRolloutEngine was built without `template=` (a Qwen of the actor's "
                               "architecture); it cannot convert params to HF tensors for the server")
        if self._closed:
            raise RuntimeError("VLLMRolloutEngine.update_weights called after close()")
        self.wake_up()  # the weights are reloaded into an awake server
        return self.weight_sync.sync(params)

    def check_weights(self, params: Any) -> dict[str, float]:
        """The probe gap between the server's current weights and `params` without pushing anything
        (e.g. right after launching the server from an exported checkpoint)."""
        if self.weight_sync is None:
            raise RuntimeError("check_weights needs `template=` (see update_weights)")
        return self.weight_sync.check(params)

    def sleep(self) -> None:
        """Co-located layout: free the server's KV cache and offload its weights to host RAM (vLLM sleep level 1)
        while the trainer runs its passes. A no-op unless the server was started with --enable-sleep-mode."""
        if self.sleep_mode and not self._asleep:
            self.client.request("POST", "/sleep?level=1", timeout=300.0, retries=0)
            self._asleep = True

    def wake_up(self) -> None:
        """Undo `sleep` (before the weight sync and the next rollout)."""
        if self._asleep:
            self.client.request("POST", "/wake_up", timeout=300.0, retries=0)
            self._asleep = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.abort_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.weight_sync is not None:
            self.weight_sync.transport.close()
        if self.own_server and self.server is not None:
            self.server.stop()
