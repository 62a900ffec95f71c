"""VLLMRolloutEngine, the weight sync and the launcher against a fake vLLM HTTP server (no vLLM needed).

The fake speaks the slice of vLLM's API the engine uses (/v1/completions with token ids, /health, /v1/models,
/collective_rpc, /reset_prefix_cache). Its "model" for the sync tests is real: the tensors it receives through
the file transport are written back into an HF folder and loaded with `load_pretrained`, so the probe compares
the trainer's log-probs with those of whatever actually arrived.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import socket
import stat
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from capojax.models import Qwen, QwenConfig, load_pretrained, save_pretrained
from capojax.rollout import RolloutEngine, SamplingParams
from capojax.rollout.vllm_engine import VLLMClient, VLLMRequestError, VLLMRolloutEngine, prompt_seed
from capojax.rollout.vllm_server import (
    EXTENSION_CLS, EXTENSION_DIR, ServerConfig, VLLMServer, VLLMServerError, launch_vllm_server)
from capojax.rollout.weight_sync import (
    FileTransport, WeightSync, WeightSyncError, default_probe_tokens, hf_tensors, make_trainer_logprobs)

CONFIG = QwenConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, tie_word_embeddings=False, qkv_bias=True, max_position_embeddings=256,
                    eos_token_id=2)


# ------------------------------------------------------------------------------------------- fake server


def fake_sample(prompt, seed, n, max_tokens, stop_ids):
    """The fake's deterministic 'sampling': (token_ids, logprobs, finish_reason) per sample j (seed + j)."""
    out = []
    for j in range(n):
        rng = np.random.default_rng([seed + j, len(prompt), int(sum(prompt))])
        if stop_ids and rng.random() < 0.5:
            length = int(rng.integers(1, max_tokens + 1))
            ids = [int(t) for t in rng.integers(10, 100, length)]
            ids[-1] = stop_ids[0]
            reason = "stop"
        else:
            ids = [int(t) for t in rng.integers(10, 100, max_tokens)]
            reason = "length"
        lps = [-0.01 * (k + 1) - t / 1000 for k, t in enumerate(ids)]
        out.append((ids, lps, reason))
    return out


class FakeVLLM:
    def __init__(self):
        self.requests: list[tuple[str, dict | None]] = []
        self.completion_statuses: list[int] = []  # answered (with an error body) before generating
        self.hang = False  # completions never answer
        self.hang_health = False
        self.ignore_loads = False  # a broken worker: acknowledges loads but keeps its weights
        self.corrupt_tokens = False
        self.release = threading.Event()
        self.weights: dict[str, np.ndarray] = {}
        self.config: QwenConfig | None = None
        self._model_fn = None
        self._fn = None
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload=None):
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with fake.lock:
                    fake.requests.append((self.path, None))
                if self.path == "/health":
                    if fake.hang_health:
                        fake.release.wait(30)
                    return self._send(200)
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": "fake-policy"}]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body) if body else None
                with fake.lock:
                    fake.requests.append((self.path, payload))
                if self.path == "/v1/completions":
                    return fake.completions(self, payload)
                if self.path == "/collective_rpc":
                    return self._send(200, {"results": [fake.rpc(payload)]})
                if self.path == "/reset_prefix_cache":
                    return self._send(200, {"success": True})
                if self.path in ("/sleep?level=1", "/wake_up"):  # vLLM's sleep-mode endpoints (dev mode)
                    return self._send(200)
                self._send(404, {"detail": "Not Found"})

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # The timeout tests hang up on purpose; the late reply then hits a closed socket.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def completions(self, handler, p):
        if self.hang:
            self.release.wait(30)
            return handler._send(500, {"error": "released"})
        with self.lock:
            status = self.completion_statuses.pop(0) if self.completion_statuses else None
        if status is not None:
            return handler._send(status, {"error": {"message": f"fake error {status}"}})
        if max(p["prompt"]) >= CONFIG.vocab_size:
            return handler._send(400, {"error": {"message": f"Token id {max(p['prompt'])} is out of vocabulary"}})
        if p.get("prompt_logprobs") is not None:
            lps = self.prompt_logprobs(p["prompt"])
            entries = [None] + [{str(t): {"logprob": float(v), "rank": 1, "decoded_token": "x"}}
                                for t, v in zip(p["prompt"][1:], lps)]
            return handler._send(200, {"choices": [{"index": 0, "token_ids": [0], "prompt_logprobs": entries,
                                                    "finish_reason": "length"}]})
        choices = []
        for j, (ids, lps, reason) in enumerate(fake_sample(p["prompt"], p["seed"], p["n"], p["max_tokens"],
                                                           p["stop_token_ids"])):
            toks = [f"token_id:{t}" for t in ids]
            if self.corrupt_tokens:
                toks[0] = "token_id:99999"
            choices.append({"index": j, "text": "", "token_ids": ids, "finish_reason": reason,
                            "logprobs": {"tokens": toks, "token_logprobs": lps}})
        handler._send(200, {"choices": choices[::-1]})  # out of order on purpose: the engine sorts by index

    def rpc(self, payload):
        assert payload["method"] == "capojax_load_weights", payload
        manifest = json.loads(payload["args"][0])
        tensors = {}
        for f in manifest["files"]:
            tensors.update(load_file(f))
        if not self.ignore_loads:
            self.weights.update(tensors)
            self._model_fn = None
        return {"rank": 0, "version": manifest["version"], "num_tensors": len(tensors),
                "bytes": sum(t.nbytes for t in tensors.values()), "seconds": 0.0}

    def set_weights_from(self, model, tmp_path):
        self.config = model.config
        save_pretrained(model, model.config, tmp_path / "server-init")
        self.weights = load_file(str(tmp_path / "server-init" / "model.safetensors"))
        self._tmp = tmp_path
        self._model_fn = None

    def prompt_logprobs(self, tokens):
        if self._model_fn is None:  # rebuild the server's model from the tensors it holds
            folder = self._tmp / f"server-{len(self.requests)}"
            folder.mkdir()
            save_file(self.weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
            (folder / "config.json").write_text(json.dumps(self.config.to_hf(dtype="float32")))
            model, _ = load_pretrained(folder)
            if self._fn is None:  # one jitted function for every weight set (same graphdef)
                self._fn = make_trainer_logprobs(nnx.graphdef(model))
            state = nnx.state(model)
            self._model_fn = lambda toks: np.asarray(self._fn(state, jnp.asarray([toks], jnp.int32)))
        return self._model_fn(tokens)

    def completion_payloads(self):
        return [p for path, p in self.requests if path == "/v1/completions"]


@pytest.fixture
def fake():
    server = FakeVLLM()
    yield server
    server.close()


def make_engine(fake, **kw):
    kw.setdefault("backoff", 0.01)
    return VLLMRolloutEngine(fake.url, pad_id=0, **kw)


# ------------------------------------------------------------------------------------------- generation


def test_generate_assembles_rollout_prompt_major(fake):
    engine = make_engine(fake, eos_ids=(2,), max_concurrency=3)
    assert isinstance(engine, RolloutEngine)
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]
    params = SamplingParams(n=3, max_new_tokens=6, temperature=0.7, top_p=0.9, top_k=0, stop_token_ids=(3,), seed=11)
    out = engine.generate(prompts, params)
    payloads = sorted(fake.completion_payloads(), key=lambda p: prompts.index(p["prompt"]))
    assert [p["prompt"] for p in payloads] == prompts
    for i, p in enumerate(payloads):
        assert p["model"] == "fake-policy" and p["n"] == 3 and p["max_tokens"] == 6
        assert p["temperature"] == 0.7 and p["top_p"] == 0.9 and p["top_k"] == -1
        assert p["stop_token_ids"] == [3, 2] and p["ignore_eos"] is True
        assert p["presence_penalty"] == 0.0 and p["frequency_penalty"] == 0.0 and p["repetition_penalty"] == 1.0
        assert p["logprobs"] == 0 and p["return_token_ids"] and p["return_tokens_as_token_ids"]
        assert p["seed"] == prompt_seed(11, i, 3)
    assert len({p["seed"] for p in payloads}) == len(prompts)

    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (12, 6)
    np.testing.assert_array_equal(out.prompt_index, np.repeat(np.arange(4), 3))
    saw = set()
    for i, p in enumerate(payloads):
        for j, (ids, lps, reason) in enumerate(fake_sample(p["prompt"], p["seed"], 3, 6, [3, 2])):
            r = i * 3 + j
            k = len(ids)
            saw.add(reason)
            assert out.lengths[r] == k and out.finished[r] == (reason == "stop")
            np.testing.assert_array_equal(out.tokens[r, :k], ids)
            np.testing.assert_array_equal(out.tokens[r, k:], 0)
            np.testing.assert_allclose(out.logprobs[r, :k], lps, rtol=1e-6)
            np.testing.assert_array_equal(out.logprobs[r, k:], 0)
            np.testing.assert_array_equal(out.mask[r], np.arange(6) < k)
    assert saw == {"stop", "length"}  # both endings were exercised
    engine.close()


def test_presence_penalty_reaches_the_request(fake):
    """DCPO's evaluation samples with presence_penalty 1.5: every request carries it (vLLM applies it to the
    generated tokens before temperature, like the JAX sampler); outside vLLM's [-2, 2] it is refused up front."""
    engine = make_engine(fake)
    params = SamplingParams(n=2, max_new_tokens=4, temperature=0.7, presence_penalty=1.5, seed=3)
    engine.generate([[5, 6], [7]], params)
    payloads = fake.completion_payloads()
    assert len(payloads) == 2 and all(p["presence_penalty"] == 1.5 for p in payloads)
    assert all(p["frequency_penalty"] == 0.0 and p["repetition_penalty"] == 1.0 for p in payloads)
    with pytest.raises(ValueError, match=r"vLLM accepts values in \[-2, 2\]"):
        engine.generate([[5, 6]], SamplingParams(presence_penalty=2.5))
    assert len(fake.completion_payloads()) == 2  # the refused call sent nothing
    engine.close()


def test_sleep_mode_sleeps_once_and_wakes_before_generating(fake):
    engine = make_engine(fake, sleep_mode=True)
    engine.sleep()
    engine.sleep()  # already asleep: no second request
    engine.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=4, temperature=1.0, seed=1))
    paths = [path for path, _ in fake.requests if path in ("/sleep?level=1", "/wake_up", "/v1/completions")]
    assert paths == ["/sleep?level=1", "/wake_up", "/v1/completions"]
    engine.close()


def test_without_sleep_mode_sleep_is_a_no_op(fake):
    engine = make_engine(fake)  # a server started without --enable-sleep-mode
    engine.sleep()
    engine.wake_up()
    assert not [path for path, _ in fake.requests if path.startswith(("/sleep", "/wake_up"))]
    engine.close()


def test_prompt_seed_is_in_range_and_distinct():
    seeds = [prompt_seed(s, i, 16) for s in range(4) for i in range(256)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= x < 2**31 - 17 for x in seeds)
    assert prompt_seed(3, 5, 8) == prompt_seed(3, 5, 8)


def test_bad_input_and_4xx_fail_fast(fake):
    engine = make_engine(fake)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1], []], SamplingParams())
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.generate([], SamplingParams())
    before = len(fake.completion_payloads())
    with pytest.raises(VLLMRequestError, match="out of vocabulary"):
        engine.generate([[500]], SamplingParams(max_new_tokens=2))
    assert len(fake.completion_payloads()) == before + 1  # a 4xx is not retried
    engine.close()
    with pytest.raises(RuntimeError, match="after close"):
        engine.generate([[1]], SamplingParams())


def test_5xx_is_retried_then_succeeds(fake):
    fake.completion_statuses = [503, 500]
    engine = make_engine(fake, max_retries=2)
    out = engine.generate([[4, 5]], SamplingParams(n=2, max_new_tokens=3, seed=1))
    assert out.num_rows == 2
    assert len(fake.completion_payloads()) == 3
    engine.close()


def test_5xx_past_retries_is_a_server_error(fake):
    fake.completion_statuses = [503] * 10
    engine = make_engine(fake, max_retries=1)
    with pytest.raises(VLLMServerError, match=r"failed 2 times.*HTTP 503"):
        engine.generate([[4, 5]], SamplingParams(max_new_tokens=3))
    engine.close()


def test_mismatched_logprob_tokens_are_rejected(fake):
    fake.corrupt_tokens = True
    engine = make_engine(fake)
    with pytest.raises(VLLMServerError, match="do not match token_ids"):
        engine.generate([[4, 5]], SamplingParams(max_new_tokens=3))
    engine.close()


@pytest.mark.timeout(60)
def test_hung_server_gives_clear_error_not_a_hang(fake):
    fake.hang = fake.hang_health = True
    engine = make_engine(fake, request_timeout=120, health_interval=0.2, health_timeout=0.3, health_failures=2)
    with pytest.raises(VLLMServerError, match="did not answer /health 2 times"):
        engine.generate([[4, 5], [6]], SamplingParams(max_new_tokens=3))
    engine.close()


def test_closed_port_gives_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = VLLMRolloutEngine(f"http://127.0.0.1:{port}", pad_id=0, model_name="m", max_retries=1, backoff=0.01)
    with pytest.raises(VLLMServerError, match=r"failed 2 times.*(Connection refused|ConnectionRefused)"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    engine.close()


def test_dead_owned_server_error_has_exit_code_and_log_tail(tmp_path):
    log = tmp_path / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", "print('RuntimeError: fake CUDA out of memory'); exit(3)"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    proc.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = VLLMServer(proc, ServerConfig(model=str(tmp_path), port=port), port, str(log), ["fake"])
    engine = VLLMRolloutEngine(server.url, pad_id=0, model_name="m", server=server, backoff=0.01)
    with pytest.raises(VLLMServerError, match=r"(?s)exited with code 3.*fake CUDA out of memory"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    engine.close()


def test_client_rejects_bad_url():
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        VLLMClient("localhost:8000")


# ------------------------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=None)
def _model(seed):
    """A tiny Qwen with numpy-random weights (std 0.3: peaked next-token distributions; non-zero biases).

    The structure comes from `nnx.eval_shape` and the values from numpy, so no init program is compiled;
    seed > 0 perturbs the seed-0 weights (as a training step would)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen(CONFIG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    base = jax.tree.leaves(nnx.state(_model(0))) if seed else None

    def value(k, a):
        noise = rng.normal(size=a.shape).astype(np.float32)
        return jnp.asarray(noise * 0.3 if base is None else np.asarray(base[k]) + 0.1 * noise, a.dtype)

    leaves, tree = jax.tree.flatten(abstract)
    return nnx.merge(graphdef, jax.tree.unflatten(tree, [value(k, a) for k, a in enumerate(leaves)]))


def test_hf_tensors_equal_save_pretrained(tmp_path):
    model = _model(0)
    save_pretrained(model, CONFIG, tmp_path / "ref")
    ref = load_file(str(tmp_path / "ref" / "model.safetensors"))
    ours = dict(hf_tensors(nnx.state(model), CONFIG))
    sliced = dict(hf_tensors(model, CONFIG, whole_bytes=0))  # the layer-slice-at-a-time path of big models
    assert list(ours) == list(sliced)
    for name, x in sliced.items():
        np.testing.assert_array_equal(ours[name], x, err_msg=name)
    assert set(ours) == set(ref)
    for name, x in ref.items():
        assert ours[name].dtype == x.dtype and ours[name].shape == x.shape, name
        np.testing.assert_array_equal(ours[name], x, err_msg=name)
    bf16 = dict(hf_tensors(model, CONFIG, dtype=jnp.bfloat16))
    assert all(str(x.dtype) == "bfloat16" for x in bf16.values())


def test_file_transport_writes_shards_and_cleans_up(fake, tmp_path):
    model = _model(0)
    transport = FileTransport(VLLMClient(fake.url), directory=str(tmp_path / "shm"), shard_bytes=20_000)
    stats = transport.push(hf_tensors(model, CONFIG), version=7)
    manifest = json.loads([p for path, p in fake.requests if path == "/collective_rpc"][0]["args"][0])
    assert manifest["version"] == 7 and len(manifest["files"]) > 1  # several shards
    assert manifest["num_tensors"] == len(fake.weights) == stats["num_tensors"]
    assert stats["bytes"] == sum(x.nbytes for x in fake.weights.values())
    assert list((tmp_path / "shm").iterdir()) == []  # files removed after the load
    for name, x in hf_tensors(model, CONFIG):
        np.testing.assert_array_equal(fake.weights[name], x)


def test_update_weights_moves_server_and_probe_checks_it(fake, tmp_path):
    initial, trained = _model(0), _model(1)
    fake.set_weights_from(initial, tmp_path)
    engine = make_engine(fake, template=initial, transport=FileTransport(VLLMClient(fake.url),
                                                                        directory=str(tmp_path / "shm")),
                         logp_gap_tolerance=1e-5)
    assert engine.check_weights(nnx.state(initial))["sync/logp_gap"] <= 1e-5
    stale = engine.check_weights(nnx.state(trained))["sync/logp_gap"]
    assert stale > 0.1  # the probe can tell the two weight sets apart

    metrics = engine.update_weights(nnx.state(trained))
    assert metrics["sync/logp_gap"] <= 1e-5
    assert metrics["sync/logp_delta"] > 0.1  # the server's log-probs moved
    assert metrics["sync/version"] == 1.0 and metrics["sync/gbps"] > 0 and metrics["timing/sync"] > 0
    assert {"timing/sync_write", "timing/sync_load", "timing/sync_probe", "sync/gb"} <= set(metrics)
    paths = [path for path, _ in fake.requests]
    assert paths.index("/reset_prefix_cache") > paths.index("/collective_rpc")

    fake.ignore_loads = True  # a silently failing reload must not go unnoticed
    with pytest.raises(WeightSyncError, match="not sampling from the trainer's weights"):
        engine.update_weights(nnx.state(initial))
    engine.close()


def test_update_weights_needs_template(fake):
    engine = make_engine(fake)
    with pytest.raises(RuntimeError, match="template"):
        engine.update_weights({})
    engine.close()


def test_default_probe_tokens_in_vocab():
    toks = default_probe_tokens(CONFIG)
    assert len(toks) == 64 and max(toks) < CONFIG.vocab_size and len(set(toks)) > 20
    big = default_probe_tokens(CONFIG.replace(vocab_size=151936))
    assert max(big) < 151643


def test_weight_sync_rejects_short_probe(fake):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        WeightSync(_model(0), VLLMClient(fake.url), FileTransport(VLLMClient(fake.url)), probe_tokens=[1])


# ------------------------------------------------------------------------------------------- launcher

FAKE_SERVER = r'''
import http.server, json, os, sys
args = sys.argv[1:]
out = os.environ["FAKE_OUT"]
json.dump({"argv": args, "env": {k: os.environ.get(k) for k in
           ("VLLM_SERVER_DEV_MODE", "PYTHONPATH", "VLLM_CPU_KVCACHE_SPACE", "XLA_FLAGS")}}, open(out, "w"))
mode = os.environ["FAKE_MODE"]
print("fake vllm starting", flush=True)
if mode == "crash":
    print("ValueError: Head size 80 is not supported by the CPU attention backend", flush=True)
    sys.exit(1)
port = int(args[args.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if mode == "ok" else 503); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _fake_python(tmp_path, mode):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    exe = tmp_path / f"python-{mode}"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "ckpt"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    env = (("FAKE_OUT", str(tmp_path / f"{mode}.json")), ("FAKE_MODE", mode))
    return ServerConfig(model=str(model), python=str(exe), env=env, log_path=str(tmp_path / f"{mode}.log"))


def test_launcher_starts_with_rl_settings_and_stops(tmp_path):
    config = _fake_python(tmp_path, "ok")
    server = launch_vllm_server(config, startup_timeout=60, poll_interval=0.1)
    try:
        assert server.alive() and VLLMClient(server.url).health()
        seen = json.loads((tmp_path / "ok.json").read_text())
    finally:
        server.stop()
    assert not server.alive()
    argv, env = seen["argv"], seen["env"]
    assert argv[:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model", config.model]
    flags = dict(zip(argv[4::1], argv[5::1]))
    assert flags["--host"] == "127.0.0.1" and flags["--dtype"] == "float32"
    assert flags["--logprobs-mode"] == "processed_logprobs" and flags["--generation-config"] == "vllm"
    assert flags["--worker-extension-cls"] == EXTENSION_CLS and "--no-enable-prefix-caching" in argv
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["XLA_FLAGS"] is None
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(EXTENSION_DIR)
    assert (EXTENSION_DIR / "capojax_vllm_ext" / "worker_extension.py").is_file()


def test_launcher_crash_reports_log_tail(tmp_path):
    with pytest.raises(VLLMServerError, match=r"(?s)exited with code 1.*Head size 80 is not supported"):
        launch_vllm_server(_fake_python(tmp_path, "crash"), startup_timeout=60, poll_interval=0.1)


def test_launcher_timeout_kills_server(tmp_path):
    config = _fake_python(tmp_path, "unhealthy")
    with pytest.raises(VLLMServerError, match=r"(?s)not healthy after 2 s.*fake vllm starting"):
        launch_vllm_server(config, startup_timeout=2, poll_interval=0.1)
    port_args = json.loads((tmp_path / "unhealthy.json").read_text())["argv"]
    port = int(port_args[port_args.index("--port") + 1])
    with pytest.raises(OSError):  # nobody listens any more: the process group was killed
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_launcher_rejects_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        launch_vllm_server(ServerConfig(model=str(tmp_path / "nope")))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="setup_vllm_venv"):
        launch_vllm_server(ServerConfig(model=str(tmp_path / "ck"), python=str(tmp_path / "no-python")))


def _rl_config(url, **rollout):
    import ml_collections

    config = ml_collections.ConfigDict({
        "rollout": {"engine": "vllm", "vllm_url": url, "max_new_tokens": 8, **rollout},
        "data": {"max_prompt_len": 16}, "train": {"seed": 0}})
    return config


def test_from_config_pushes_actor_weights_only_when_the_server_differs(fake, tmp_path):
    initial, trained = _model(0), _model(1)
    fake.set_weights_from(initial, tmp_path)
    config = _rl_config(fake.url, vllm_logp_tol=1e-5, vllm_sync_dir=str(tmp_path / "shm"))
    engine = VLLMRolloutEngine.from_config(config, model=initial, checkpoint_dir=str(tmp_path), pad_id=0,
                                           eos_ids=(2,))
    assert not [p for p, _ in fake.requests if p == "/collective_rpc"]  # same weights: nothing pushed
    assert engine.eos_ids == (2,) and engine.weight_sync.tolerance == 1e-5
    engine.close()
    engine = VLLMRolloutEngine.from_config(config, model=trained, checkpoint_dir=str(tmp_path), pad_id=0)
    assert len([p for p, _ in fake.requests if p == "/collective_rpc"]) == 1  # a resumed actor: pushed
    assert engine.check_weights(trained)["sync/logp_gap"] <= 1e-5
    engine.close()


def test_from_config_without_server_says_how_to_start_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VLLMServerError, match=r"serve_vllm.py --model .*rollout.vllm_launch=True"):
        VLLMRolloutEngine.from_config(_rl_config(f"http://127.0.0.1:{port}"), model=_model(0),
                                      checkpoint_dir=str(tmp_path), pad_id=0)
