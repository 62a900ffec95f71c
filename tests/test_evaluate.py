"""capojax.evaluate end to end on the CPU: a tiny random Qwen2 with the real Qwen2.5 tokenizer."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from capojax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config():
    from capojax.models import PRESETS

    # The real Qwen2.5 vocabulary (151,665 tokens, padded like the released checkpoints); everything else tiny.
    return PRESETS["tiny-bench"].replace(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        head_dim=16, bos_token_id=151643, eos_token_id=151643,
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, qwen_tokenizer_dir):
    from capojax.models import init_model, save_pretrained

    config = _tiny_config()
    path = tmp_path_factory.mktemp("tiny_qwen")
    save_pretrained(init_model(config, seed=0), config, path)
    shutil.copyfile(qwen_tokenizer_dir / "tokenizer.json", path / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    """(model, tokenizer) loaded back from the checkpoint folder, as the CLI does."""
    from capojax.models import load_pretrained
    from capojax.tokenizer import load_tokenizer

    model, _ = load_pretrained(tiny_checkpoint)
    return model, load_tokenizer(tiny_checkpoint)


def _run_cli(*args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "capojax.evaluate", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_cli_end_to_end(tiny_checkpoint, benchmark_data, tmp_path):
    from capojax.data.benchmarks import load_benchmark

    out = tmp_path / "eval"
    proc = _run_cli(
        "--checkpoint", tiny_checkpoint, "--benchmarks", "aime24,math500", "--n", 2, "--limit", 2,
        "--max_new_tokens", 16, "--temperature", 0.6, "--top_p", 0.95, "--out", out, "--seed", 3,
        "--grade_workers", 1, "--data_dir", benchmark_data,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sampling" in proc.stderr  # the progress bar
    for bench in ("aime24", "math500"):
        folder = out / bench
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["benchmark"] == bench and summary["problems"] == 2 and summary["samples_per_problem"] == 2
        assert summary["protocol"] == "none" and summary["require_boxed"] is False  # the lenient default, recorded
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        ids = [p.id for p in load_benchmark(bench, limit=2, data_dir=benchmark_data)]
        assert [r["problem_id"] for r in rows] == [ids[0], ids[0], ids[1], ids[1]]
        assert [r["sample"] for r in rows] == [0, 1, 0, 1]
        for r in rows:
            assert isinstance(r["response"], str) and 1 <= r["tokens"] <= 16
            assert r["lpm"] is not None and r["lpm"] <= 0
            assert r["confidence"] is None  # the qwen-math template asks for no stated confidence
            assert isinstance(r["correct"], bool)
        # The summary is the metrics of exactly these rows.
        correct = np.array([r["correct"] for r in rows]).reshape(2, 2)
        lpm = np.array([r["lpm"] for r in rows], np.float32).reshape(2, 2)
        np.testing.assert_allclose(summary["mean@2"], correct.mean(), atol=1e-6)
        np.testing.assert_allclose(summary["pass@1"], summary["mean@2"], atol=1e-6)
        assert summary["pass@1"] <= summary["pass@2"] <= 1
        np.testing.assert_allclose(summary["ppl/brier"], np.mean((np.exp(lpm) - correct) ** 2), atol=1e-6)
        np.testing.assert_allclose(summary["ppl/mean_confidence"], np.exp(lpm).mean(), atol=1e-6)
        assert 0 <= summary["ppl/pce"] <= summary["ppl/ece"] <= 1
        for key in ("majority@2", "perplexity_consistency@2", "answered_rate", "truncated_rate"):
            assert 0 <= summary[key] <= 1, key
        for key in ("ppl/auroc", "ppl/auc_mean"):  # null when a random model gets everything wrong
            assert summary[key] is None or 0 <= summary[key] <= 1
        assert summary["dcpo/parse_rate"] == 0 and "dcpo/ece" not in summary
        for png in ("reliability_ppl.png", "precision_coverage.png"):
            assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_protocols_set_and_record_the_papers_settings(tiny_checkpoint, qwen3_style_tokenizer_dir, shared_data,
                                                     tmp_path):
    """--protocol capo / dcpo fill the sampling and grading settings; summary.json records them, the explicit
    overrides (here n and max_new_tokens, to keep the test small) and what is not reproduced."""
    common = ("--benchmarks", "aime24", "--limit", 1, "--n", 2, "--max_new_tokens", 8, "--grade_workers", 0,
              "--data_dir", shared_data, "--no_progress")
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--protocol", "capo", "--out", tmp_path / "capo", *common)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads((tmp_path / "capo" / "aime24" / "summary.json").read_text())
    assert s["protocol"] == "capo" and s["protocol_overrides"] == {"n": 2, "max_new_tokens": 8}
    assert s["protocol_settings"] == {"n": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8,
                                      "template": "qwen-math", "require_boxed": True, "chat_template_kwargs": {},
                                      "presence_penalty": 0.0}
    assert (s["temperature"], s["top_p"], s["top_k"], s["samples_per_problem"]) == (1.0, 1.0, 0, 2)
    assert s["presence_penalty"] == 0.0
    assert s["require_boxed"] is True and s["grading"] == "last \\boxed{} only"

    # DCPO: non-thinking Qwen3 (a tokenizer with Qwen3's enable_thinking branch), confidence parsing
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--tokenizer", qwen3_style_tokenizer_dir, "--protocol", "dcpo",
                    "--out", tmp_path / "dcpo", *common)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads((tmp_path / "dcpo" / "aime24" / "summary.json").read_text())
    assert s["protocol"] == "dcpo" and s["template"] == "dcpo"
    assert s["chat_template_kwargs"] == {"enable_thinking": False}
    assert (s["temperature"], s["top_p"], s["top_k"], s["require_boxed"]) == (0.7, 0.8, 20, False)
    assert s["protocol_settings"]["max_new_tokens"] == 8 and s["protocol_overrides"] == {"n": 2, "max_new_tokens": 8}
    # DCPO's presence_penalty 1.5 is applied now (the sampler and the vLLM request), no longer a deviation
    assert s["presence_penalty"] == 1.5 and s["protocol_settings"]["presence_penalty"] == 1.5
    assert not any("presence_penalty" in d for d in s["protocol_deviations"]) and "dcpo/parse_rate" in s

    # a tokenizer without a chat template cannot switch thinking off: a clear error before any sampling
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--protocol", "dcpo", "--out", tmp_path / "bare", *common)
    assert proc.returncode == 2 and "need the model's chat template" in proc.stderr and "enable_thinking" in proc.stderr


def test_protocol_settings_match_the_presets_and_resolve_in_order():
    import importlib.util

    from capojax.eval_protocols import DEFAULT_SETTINGS, PROTOCOLS, resolve_settings

    spec = importlib.util.spec_from_file_location("capo_1p5b", REPO / "configs" / "capo_1p5b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    preset = module.get_config()
    capo = PROTOCOLS["capo"].settings
    assert capo["max_new_tokens"] == preset.rollout.max_new_tokens  # "the preset's response limit"
    assert (capo["n"], capo["temperature"], capo["top_p"]) == (16, preset.rollout.temperature, preset.rollout.top_p)
    assert PROTOCOLS["dcpo"].settings["presence_penalty"] == 1.5 and capo["presence_penalty"] == 0.0
    settings, fields = resolve_settings("dcpo", {"presence_penalty": 0.0})  # an explicit 0 wins, and is recorded
    assert settings["presence_penalty"] == 0.0 and fields["protocol_overrides"] == {"presence_penalty": 0.0}
    settings, fields = resolve_settings(None, {"n": None, "top_k": 5})
    assert settings == {**DEFAULT_SETTINGS, "top_k": 5} and fields["protocol"] == "none"
    with pytest.raises(ValueError, match="unknown protocol"):
        resolve_settings("rlcr", {})


def test_cli_rejects_unknown_benchmark_and_missing_checkpoint(tiny_checkpoint, tmp_path):
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--benchmarks", "aime24,gsm9k", "--out", tmp_path)
    assert proc.returncode == 2 and "unknown benchmark 'gsm9k'" in proc.stderr and "math500" in proc.stderr
    proc = _run_cli("--checkpoint", tmp_path / "nope", "--benchmarks", "aime24", "--out", tmp_path)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run_cli("--checkpoint", empty, "--out", tmp_path)
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--engine", "vllm", "--vllm_url", "http://127.0.0.1:9",
                    "--presence_penalty", 2.5, "--out", tmp_path)
    assert proc.returncode == 2 and "vLLM accepts [-2, 2]" in proc.stderr
    proc = _run_cli("--checkpoint", tiny_checkpoint, "--presence_penalty", "nan", "--out", tmp_path)
    assert proc.returncode == 2 and "--presence_penalty must be a finite number" in proc.stderr


class ScriptedEngine:
    """A RolloutEngine that 'samples' fixed texts: row r of a call answers with texts[prompt][r % n]."""

    def __init__(self, tokenizer, texts, pad_id):
        self.tokenizer, self.texts, self.pad_id = tokenizer, texts, pad_id
        self.calls = 0

    def generate(self, prompts, params):
        from capojax.rollout.base import Rollout

        start = self.calls  # evaluate_problems calls once per batch of problems; batch_size=1 here
        self.calls += len(prompts)
        self.prompts = getattr(self, "prompts", []) + [list(p) for p in prompts]
        self.params = getattr(self, "params", []) + [params]
        toks = []
        for i in range(len(prompts)):
            for j in range(params.n):
                toks.append(self.tokenizer.encode(self.texts[start + i][j], add_special_tokens=False))
        T = params.max_new_tokens
        tokens = np.full((len(toks), T), self.pad_id, np.int32)
        for r, t in enumerate(toks):
            assert len(t) <= T
            tokens[r, : len(t)] = t
        lengths = np.array([len(t) for t in toks], np.int32)
        return Rollout(
            tokens=tokens, logprobs=np.zeros((len(toks), T), np.float32),
            mask=np.arange(T)[None] < lengths[:, None], lengths=lengths,
            finished=np.ones(len(toks), bool), prompt_index=np.repeat(np.arange(len(prompts)), params.n),
            pad_id=self.pad_id,
        )

    def update_weights(self, params):
        return {}

    def close(self):
        pass


def test_dcpo_view_and_voting_on_scripted_answers(tiny_model, tmp_path):
    from capojax.data.benchmarks import Problem
    from capojax.evaluate import evaluate_problems, write_outputs

    model, tokenizer = tiny_model
    problems = [Problem("p0", "What is 1/2 + 0?", ("1/2",)), Problem("p1", "What is 2 + 5?", ("7",))]
    texts = [
        # p0: the right answer twice in two notations, confidently; a wrong one once, unsure.
        ["So \\boxed{0.5}\nCONFIDENCE: 0.9", "It is \\boxed{\\frac{1}{2}}\nCONFIDENCE: 0.8", "\\boxed{3}\nCONFIDENCE: 0.2"],
        # p1: wrong twice (same answer), right once; one sample states no confidence.
        ["\\boxed{8}\nCONFIDENCE: 0.6", "\\boxed{8.0}", "\\boxed{7}\nCONFIDENCE: 0.7"],
    ]
    pad = tokenizer.pad_token_id
    result = evaluate_problems(
        model, tokenizer, problems, name="scripted", n=3, max_new_tokens=24, template="dcpo",
        engine=ScriptedEngine(tokenizer, texts, pad), batch_size=1, grade_workers=0, progress=False,
    )
    s = result.summary
    np.testing.assert_array_equal(result.correct, [[True, True, False], [False, False, True]])
    assert [r["extracted"] for r in result.records][:3] == ["0.5", "\\frac{1}{2}", "3"]
    assert [r["answer_cluster"] for r in result.records] == [0, 0, 1, 0, 0, 1]  # 0.5 == 1/2, 8 == 8.0
    np.testing.assert_allclose(s["mean@3"], 0.5, atol=1e-6)
    np.testing.assert_allclose(s["pass@1"], 0.5, atol=1e-6)
    np.testing.assert_allclose(s["pass@2"], (1 - 0 + 1 - 1 / 3) / 2, atol=1e-6)  # p0: 1, p1: 1 - C(2,2)/C(3,2)
    assert s["majority@3"] == 0.5  # p0 right (2 votes), p1 wrong (two 8s)
    np.testing.assert_allclose(s["dcpo/parse_rate"], 5 / 6, atol=1e-6)
    # DCPO view over the 5 stated confidences: correct {0.9, 0.8, 0.7}, wrong {0.2, 0.6} -> perfectly ranked.
    assert s["dcpo/n"] == 5 and s["dcpo/auroc"] == 1.0 and s["dcpo/auc_mean"] == 1.0
    np.testing.assert_allclose(s["dcpo/brier"], (0.01 + 0.04 + 0.04 + 0.36 + 0.09) / 5, atol=1e-6)
    np.testing.assert_allclose(
        s["dcpo/ece"], float(metrics.ece(np.array([0.9, 0.8, 0.2, 0.6, 0.7]), np.array([1, 1, 0, 0, 1], bool))),
        atol=1e-7,
    )
    # Confidence-weighted vote: p1's "8" has 0.6 (the unparsed 8.0 does not vote) < "7" with 0.7 -> both right.
    assert s["dcpo/confidence_vote@3"] == 1.0
    # The perplexity view is the model's own teacher-forced lpm of exactly these tokens.
    lpm = np.array([r["lpm"] for r in result.records])
    assert np.all(lpm < 0) and np.all(np.isfinite(lpm))
    folder = write_outputs(result, tmp_path / "scripted")
    assert (folder / "reliability_dcpo.png").is_file()
    assert json.loads((folder / "summary.json").read_text())["dcpo/auroc"] == 1.0


def test_teacher_forced_lpm_equals_sampler_logprobs_at_temperature_one(tiny_checkpoint, tiny_model):
    """At T=1 without top-p the sampling distribution is the model's, so the recomputed lpm must match the
    sampler's own log-probs (whole-model float32 tolerance). Run sharded: rows over a 2-way "fsdp" mesh."""
    from capojax.data.benchmarks import Problem
    from capojax.evaluate import evaluate_problems
    from capojax.models import load_pretrained
    from capojax.sharding import make_mesh

    mesh = make_mesh(2, 1)
    model, _ = load_pretrained(tiny_checkpoint, mesh=mesh)
    tokenizer = tiny_model[1]
    problems = [Problem("a", "Compute 3 + 4.", ("7",)), Problem("b", "A much longer problem statement " * 3, ("1",))]
    result = evaluate_problems(
        model, tokenizer, problems, n=2, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_size=2,
        grade_workers=0, progress=False, mesh=mesh, lpm_rows_per_batch=3,  # rounded up to 4 rows for the mesh
    )
    got = np.array([r["lpm"] for r in result.records])
    ref = np.array([r["sampler_lpm"] for r in result.records])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert len({round(x, 6) for x in got}) > 1  # different samples, different likelihoods


def test_evaluation_prompts_carry_the_chat_template_kwargs(tiny_model, qwen3_style_tokenizer_dir):
    """The prompt the engine receives under DCPO's protocol ends with Qwen3's empty think block (non-thinking)."""
    from capojax.data.benchmarks import Problem
    from capojax.evaluate import evaluate_problems
    from capojax.tokenizer import load_tokenizer

    model, _ = tiny_model
    tok = load_tokenizer(qwen3_style_tokenizer_dir)
    problems = [Problem(id="p0", problem="What is 1 + 1?", gold=("2",))]
    engine = ScriptedEngine(tok, [["\\boxed{2}\nCONFIDENCE: 0.9"]], pad_id=151643)
    for kwargs, think in (({"enable_thinking": False}, True), (None, False)):
        engine.calls, engine.prompts = 0, []
        result = evaluate_problems(model, tok, problems, n=1, max_new_tokens=16, template="dcpo", engine=engine,
                                   batch_size=1, grade_workers=0, progress=False, chat_template_kwargs=kwargs)
        prompt = tok.decode(engine.prompts[0])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") is think
        assert "CONFIDENCE: <number between 0 and 1>" in prompt
        assert result.summary["chat_template_kwargs"] == (kwargs or {}) and result.summary["dcpo/parse_rate"] == 1.0


def test_presence_penalty_reaches_the_engine_and_the_summary(tiny_model):
    """evaluate_problems(presence_penalty=...) samples with it (every engine call) and records it."""
    from capojax.data.benchmarks import Problem
    from capojax.evaluate import evaluate_problems

    model, tokenizer = tiny_model
    problems = [Problem("p0", "What is 1 + 1?", ("2",)), Problem("p1", "What is 2 + 2?", ("4",))]
    for penalty in (1.5, 0.0):
        engine = ScriptedEngine(tokenizer, [["\\boxed{2}"], ["\\boxed{5}"]], tokenizer.pad_token_id)
        result = evaluate_problems(model, tokenizer, problems, n=1, max_new_tokens=8, engine=engine, batch_size=1,
                                   grade_workers=0, progress=False, presence_penalty=penalty)
        assert [p.presence_penalty for p in engine.params] == [penalty, penalty]
        assert result.summary["presence_penalty"] == penalty
