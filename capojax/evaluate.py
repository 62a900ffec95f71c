"""Evaluate a checkpoint on math benchmarks: accuracy, inference-time scaling and calibration.

    python -m capojax.evaluate --checkpoint DIR --benchmarks aime24,math500 --n 4 --temperature 0.6 \\
        --top_p 0.95 --max_new_tokens 512 --limit 8 --out OUT [--template qwen-math|dcpo] [--seed 0]
    python -m capojax.evaluate --checkpoint DIR --protocol capo|dcpo --out OUT [--engine vllm [--vllm_url URL]]

`--protocol` sets a paper's evaluation settings (capojax.eval_protocols; explicit flags still win and are
recorded); every summary.json states the protocol, the resolved settings and the grading mode (`require_boxed`).
`--engine vllm` samples on a vLLM server (the sidecar engine; `--vllm_url`, or one launched on the checkpoint)
and takes the temperature-1 log-probs from the server too, so no JAX model is loaded.

For every benchmark (a name from `capojax.data.benchmarks.BENCHMARKS` or a .json/.jsonl path):

1. render each problem with the prompt template (the checkpoint's chat template when it ships one),
2. sample, score and grade through `capojax.eval_pipeline` (the path the trainer's validation takes too):
   - sample N completions per problem with the embedded JAX sampler (`JaxRolloutEngine`) or a vLLM server, with a
     progress bar, a seed per chunk of problems;
   - score each completion by `lpm`, its mean token log-prob under the model **at temperature 1**, recomputed
     teacher forced by the trainer's log-prob pass (`capojax.trainer.logprobs`; with `--engine vllm` the server's
     prompt log-probs of prompt + completion). The sampler's own log-probs are taken under the *sampling*
     distribution (temperature, top-p), which is not the model's likelihood, so they are only recorded as
     `sampler_lpm` for reference. Confidence = exp(lpm) = 1 / perplexity;
   - grade them with `capojax.rewards.grade_batch` (math-verify, worker processes, deadlines; `require_boxed`:
     the last `\\boxed{}` only, as verl's reward, else math-verify's free extraction as a fallback) and read the
     DCPO view, the stated `CONFIDENCE: <p>` line (`capojax.rewards.parse_confidence`), when present,
3. cluster the answers of each problem by math-verify equivalence (majority vote, perplexity consistency),
4. summarise: inference-time scaling, the perplexity view `ppl/*` and the stated view `dcpo/*`,
5. write OUT/<bench>/summary.json, OUT/<bench>/samples.jsonl and PNG plots (see `write_outputs`).

`evaluate(...)` is the importable entry point (a model, or any rollout engine and scorer, on named benchmarks);
`evaluate_problems(...)` evaluates a list of problems; `main()` is the command line. The trainer does not call
this module: its validation (`Trainer.validate`) shares the sample -> score -> grade pipeline and logs `val/*`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import pathlib
import re
import time
from typing import Any, Mapping, Sequence

import numpy as np

from capojax import cli, eval_pipeline
from capojax.host_memory import configure_host

logger = logging.getLogger("capojax.evaluate")

__all__ = ["BenchmarkResult", "evaluate", "evaluate_problems", "write_outputs", "main"]


# ------------------------------------------------------------------------------------------------------------
# One benchmark: sample -> score -> grade (capojax.eval_pipeline), then cluster -> summarise
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BenchmarkResult:
    """Everything measured on one benchmark. Per-sample arrays are [B, N] (B problems, N samples each).

    summary: flat {metric: value} (NaN where undefined), as written to summary.json.
    records: one dict per sample, as written to samples.jsonl.
    """

    name: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    correct: np.ndarray  # bool[B,N]
    lpm: np.ndarray  # f32[B,N] teacher-forced mean token log-prob at temperature 1
    confidence: np.ndarray  # f32[B,N] stated (DCPO) confidence, NaN when absent


def _stop_ids(tokenizer: Any, config: Any = None, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """EOS ids from the config, the tokenizer and the ChatML end-of-turn token (Qwen's chat models stop on
    `<|im_end|>`, which their config.json does not always list)."""
    ids: list[int] = list(extra)
    if config is not None and getattr(config, "eos_token_ids", None):
        ids += list(config.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|endoftext|>"):
        if name in vocab:
            ids.append(int(vocab[name]))
    return tuple(dict.fromkeys(ids))


def _pad_id(tokenizer: Any, stop_ids: Sequence[int]) -> int:
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id)
    if stop_ids:
        return int(stop_ids[0])
    raise ValueError("the tokenizer has no pad or eos token; set tokenizer.pad_token_id before evaluating")


@functools.lru_cache(maxsize=1)
def _warm_up_grader() -> None:
    """Pays math-verify's cold start (sympy/antlr imports, first parse: seconds on a busy machine) once, under a
    generous deadline, so that it is not charged to the per-answer deadline of the first in-process grade or
    answer comparison (which would then time out and count as wrong)."""
    from capojax.rewards import answers_equivalent

    answers_equivalent("\\frac{1}{2}", "0.5", timeout=300.0)


def _chunk_seed(seed: int, name: str, start: int) -> int:
    """A sampling seed per (run seed, benchmark, chunk): the sampler keys rows by their index in a call, so
    without this every chunk would reuse the same random streams."""
    digest = sum(ord(c) * 31**i for i, c in enumerate(name)) % (2**31)
    return int(np.random.SeedSequence([seed, digest, start]).generate_state(1)[0] % (2**31))


def _render_prompts(problems: Sequence[Any], tokenizer: Any, template: str,
                    chat_template_kwargs: Mapping[str, Any]) -> list[list[int]]:
    """Each problem rendered with the prompt template (the checkpoint's chat template when it ships one)."""
    from capojax.data.templates import render_prompt

    return [
        tokenizer.encode(
            render_prompt(p.problem, tokenizer=tokenizer, style=template,
                          chat_template_kwargs=dict(chat_template_kwargs) or None),
            add_special_tokens=False,
        )
        for p in problems
    ]


def _teacher_forced_scorer(model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, max_new_tokens: int,
                           rows_per_batch: int, mesh: Any = None, time_chunk: int = 128):
    """The temperature-1 log-prob pass on `model`, with one shape for the whole benchmark (P from all prompts, T from
    max_new_tokens: it compiles once) and the head over `time_chunk` positions at a time (a 150k vocabulary never
    materialises a full [rows, T, V] array). With a `mesh`, rows are split over "fsdp" (`rows_per_batch` is
    rounded up to a multiple of its size)."""
    from flax import nnx

    from capojax.trainer.batch import round_up

    graphdef, state = nnx.split(model)
    put = None
    if mesh is not None:
        import jax

        from capojax.sharding import batch_sharding

        fsdp = int(mesh.shape["fsdp"])
        rows_per_batch = -(-rows_per_batch // fsdp) * fsdp
        put = functools.partial(jax.device_put, device=batch_sharding(mesh))
    return eval_pipeline.TeacherForced(
        _logprob_fn(graphdef, mesh, time_chunk), state, pad_id=pad_id, put=put, rows_per_batch=rows_per_batch,
        prompt_len=round_up(max(len(p) for p in prompts), 32), length=round_up(max_new_tokens, 32),
    )


@functools.lru_cache(maxsize=8)
def _logprob_fn(graphdef: Any, mesh: Any, time_chunk: int):
    """One jitted temperature-1 log-prob pass per model structure (kept across benchmarks: no recompilation)."""
    from capojax.trainer.logprobs import make_logprob_fn

    return make_logprob_fn(graphdef, temperature=1.0, mesh=mesh, with_entropy=False, time_chunk=time_chunk)


def evaluate_problems(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    *,
    name: str = "benchmark",
    n: int = 4,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 0,
    max_new_tokens: int = 512,
    template: str = "qwen-math",
    seed: int = 0,
    engine: Any = None,
    mesh: Any = None,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 8,
    lpm_rows_per_batch: int = 8,
    grade_timeout: float | None = None,
    grade_workers: int | None = None,
    n_bins: int = 20,
    progress: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    require_boxed: bool = False,
    scorer: Any = None,
    presence_penalty: float = 0.0,
) -> BenchmarkResult:
    """Sample, score, grade, cluster and summarise `problems` (objects with `id`, `problem`, `gold`) -> BenchmarkResult.

    model: a `capojax.models.Qwen` (used for the temperature-1 log-probs, and for sampling unless `engine` is given).
    engine: any `RolloutEngine` already holding the model's weights (e.g. a vLLM sidecar); default a
    `JaxRolloutEngine` on `model`. mesh: rows of the sampler and of the lpm pass split over its "fsdp" axis.
    stop_ids: token ids that end a completion (default: tokenizer/ChatML EOS).
    batch_size: problems per `generate` call (rows = batch_size * n); lpm_rows_per_batch: rows per log-prob pass.
    require_boxed: grade the last `\\boxed{}` only (no box: wrong), as verl's math reward; False falls back to
    math-verify's extraction of the response's tail. Recorded in the summary either way.
    scorer: an `eval_pipeline.Scorer` for the temperature-1 mean log-probs (default: the teacher-forced pass on
    `model`; e.g. `eval_pipeline.ServerScored` with a vLLM engine, when `model` may be None).
    presence_penalty: subtracted from the logits of tokens a sample has generated (vLLM's definition; DCPO's
    evaluation uses 1.5). The lpm stays the model's own temperature-1 log-prob, without it.
    """
    from capojax.rewards import DEFAULT_TIMEOUT
    from capojax.rollout.base import SamplingParams

    if not problems:
        raise ValueError(f"{name}: no problems to evaluate")
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    if model is None and (engine is None or scorer is None):
        raise ValueError("evaluate_problems needs a model, unless both `engine` and `scorer` are given")
    stop_ids = _stop_ids(tokenizer, getattr(model, "config", None)) if stop_ids is None else tuple(stop_ids)
    pad_id = _pad_id(tokenizer, stop_ids)
    if engine is None:
        from capojax.rollout.sampler import JaxRolloutEngine

        engine = JaxRolloutEngine(model, pad_id=pad_id, eos_ids=stop_ids, mesh=mesh)
    kwargs = dict(chat_template_kwargs or {})
    prompts = _render_prompts(problems, tokenizer, template, kwargs)
    if scorer is None:
        scorer = _teacher_forced_scorer(model, prompts, pad_id=pad_id, max_new_tokens=max_new_tokens,
                                        rows_per_batch=lpm_rows_per_batch, mesh=mesh)
    _warm_up_grader()  # clustering compares answers in this process; grading may too (workers=0)
    samples = eval_pipeline.run(
        engine, prompts, [p.gold for p in problems], tokenizer, n=n, chunk_size=batch_size,
        params_for=lambda start: SamplingParams(
            n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            stop_token_ids=tuple(stop_ids), seed=_chunk_seed(seed, name, start),
            presence_penalty=presence_penalty),
        scorer=scorer,
        grading=eval_pipeline.Grading(
            timeout=DEFAULT_TIMEOUT if grade_timeout is None else grade_timeout, workers=grade_workers,
            require_boxed=require_boxed, with_confidence=True),
        progress=f"{name}: sampling" if progress else None,
    )
    cluster_ids = _cluster(samples)
    settings = {
        "benchmark": name, "problems": len(problems), "samples_per_problem": n, "template": template,
        "temperature": temperature, "top_p": top_p, "top_k": top_k, "presence_penalty": float(presence_penalty),
        "max_new_tokens": max_new_tokens, "seed": seed,
        "chat_template_kwargs": kwargs, "require_boxed": bool(require_boxed),
        "grading": "last \\boxed{} only" if require_boxed else "last \\boxed{}, else math-verify's free extraction",
        "engine": type(engine).__name__,
    }
    lpm = _lpm(samples)
    return BenchmarkResult(
        name=name,
        summary={**settings, **_summarise(samples, lpm, cluster_ids, n_bins=n_bins)},
        records=_records(problems, samples, lpm, cluster_ids),
        correct=samples.grid(samples.graded.correct),
        lpm=samples.grid(lpm),
        confidence=samples.grid(samples.graded.confidence),
    )


def _lpm(samples) -> np.ndarray:
    """The samples' lpm f32[N], NaN for a row without tokens (it has no likelihood to speak of)."""
    return np.where(samples.rollout.lengths > 0, samples.lpm, np.nan).astype(np.float32)


def _cluster(samples) -> np.ndarray:
    """Answer clusters i32[B,N] per problem (`capojax.metrics.cluster_answers`: math-verify equivalence, -1 for no
    answer); `samples.timings["cluster"]` gets the seconds it took."""
    from capojax import metrics

    start = time.perf_counter()
    extracted = samples.graded.extracted
    cluster_ids = metrics.cluster_answers([extracted[b * samples.n : (b + 1) * samples.n]
                                           for b in range(len(samples.prompts))])
    samples.timings["cluster"] = time.perf_counter() - start
    return cluster_ids


def _summarise(samples, lpm: np.ndarray, cluster_ids: np.ndarray, *, n_bins: int) -> dict[str, Any]:
    """Inference-time scaling (mean/pass/majority/perplexity consistency @k), the perplexity view `ppl/*`, the
    stated-confidence view `dcpo/*` and the sampling/grading counts and timings of one benchmark."""
    from capojax import metrics

    n, graded = samples.n, samples.graded
    correct, lpm2, conf2 = samples.grid(graded.correct), samples.grid(lpm), samples.grid(graded.confidence)
    summary: dict[str, Any] = dict(metrics.scaling_summary(correct, cluster_ids, lpm2))
    for key, value in metrics.calibration_summary(np.exp(lpm2), correct, n_bins=n_bins).items():
        summary[f"ppl/{key}"] = value
    summary["ppl/mean_lpm"] = float(np.nanmean(lpm))
    summary["dcpo/parse_rate"] = float(np.mean(~np.isnan(graded.confidence)))
    if not np.all(np.isnan(graded.confidence)):
        for key, value in metrics.calibration_summary(conf2, correct, n_bins=n_bins).items():
            summary[f"dcpo/{key}"] = value
        # Inference-time scaling with the stated confidence as the vote weight (unparsed samples do not vote).
        vote_ids = np.where(np.isnan(conf2), -1, cluster_ids)
        summary[f"dcpo/confidence_vote@{n}"] = float(
            np.mean(np.asarray(metrics.perplexity_consistency(vote_ids, np.log(np.maximum(conf2, 1e-30)), correct)))
        )
    timings = samples.timings
    summary.update({
        "answered_rate": float(np.mean(cluster_ids >= 0)),
        "mean_response_tokens": float(samples.rollout.lengths.mean()),
        "truncated_rate": float(np.mean(~samples.rollout.finished)),
        "grade_timeouts": int(graded.timeouts),
        "grade_crashes": int(graded.crashes),
        "timing/sample_s": timings["sample"],
        "timing/lpm_s": timings["score"],
        "timing/grade_s": timings["grade"],
        "timing/cluster_s": timings["cluster"],
    })
    return summary


def _records(problems: Sequence[Any], samples, lpm: np.ndarray, cluster_ids: np.ndarray) -> list[dict[str, Any]]:
    """One dict per sample (samples.jsonl): the response, its grade, both confidence views and its answer cluster.
    `sampler_lpm` is the sampler's own mean log-prob, under the sampling distribution (for reference only)."""
    rollout, graded, n = samples.rollout, samples.graded, samples.n
    sampler_lpm = np.where(rollout.lengths > 0, (rollout.logprobs * rollout.mask).sum(1) / np.maximum(rollout.lengths, 1),
                           np.nan).astype(np.float32)
    records = []
    for row in range(rollout.num_rows):
        b, j = divmod(row, n)
        gold = problems[b].gold
        records.append({
            "problem_id": problems[b].id,
            "sample": j,
            "gold": list(gold) if isinstance(gold, (list, tuple)) else gold,
            "response": graded.texts[row],
            "extracted": graded.extracted[row],
            "correct": bool(graded.correct[row]),
            "grade_timed_out": bool(graded.timed_out[row]),
            "lpm": _finite_or_none(lpm[row]),
            "sampler_lpm": _finite_or_none(sampler_lpm[row]),
            "confidence": _finite_or_none(graded.confidence[row]),
            "answer_cluster": int(cluster_ids[b, j]),
            "tokens": int(rollout.lengths[row]),
            "finished": bool(rollout.finished[row]),
        })
    return records


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_outputs(result: BenchmarkResult, folder: str | pathlib.Path, *, n_bins: int = 20) -> pathlib.Path:
    """Writes into `folder`: summary.json (NaN -> null), samples.jsonl (one row per sample),
    reliability_ppl.png, precision_coverage.png and, with stated confidences, reliability_dcpo.png."""
    from capojax import metrics, plots

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(_json_safe(result.summary), indent=2) + "\n")
    with (folder / "samples.jsonl").open("w", encoding="utf-8") as f:
        for rec in result.records:
            f.write(json.dumps(_json_safe(rec), ensure_ascii=False) + "\n")
    conf_ppl = np.exp(result.lpm)
    plots.save_reliability_diagram(
        metrics.reliability_diagram(conf_ppl, result.correct, n_bins=n_bins),
        folder / "reliability_ppl.png",
        title=f"{result.name}: exp(lpm)",
        ece=result.summary.get("ppl/ece"),
    )
    curves = {"exp(lpm)": metrics.precision_coverage(conf_ppl, result.correct)}
    if not np.all(np.isnan(result.confidence)):
        plots.save_reliability_diagram(
            metrics.reliability_diagram(result.confidence, result.correct, n_bins=n_bins),
            folder / "reliability_dcpo.png",
            title=f"{result.name}: stated confidence",
            ece=result.summary.get("dcpo/ece"),
        )
        curves["stated confidence"] = metrics.precision_coverage(result.confidence, result.correct)
    plots.save_precision_coverage(curves, folder / "precision_coverage.png", title=result.name)
    return folder


def _folder_name(benchmark: str) -> str:
    from capojax.data.benchmarks import BENCHMARKS

    if benchmark.lower() in BENCHMARKS:
        return benchmark.lower()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(benchmark).stem) or "benchmark"


def evaluate(
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[str] | str,
    *,
    limit: int | None = None,
    out_dir: str | pathlib.Path | None = None,
    data_dir: str | pathlib.Path | None = None,
    n_bins: int = 20,
    summary_extra: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Evaluates `model` on each benchmark -> {benchmark folder name: summary dict}.

    benchmarks: names (`capojax.data.benchmarks.BENCHMARKS`) or .json/.jsonl paths, a list or "a,b".
    limit: the first `limit` problems of each. out_dir: when given, each benchmark's outputs go to
    out_dir/<name>/ (`write_outputs`). summary_extra: fields added to every summary (e.g. the protocol's
    settings). Other keyword arguments go to `evaluate_problems` (n, temperature, top_p,
    top_k, max_new_tokens, template, seed, engine, stop_ids, batch_size, grade_timeout, grade_workers, progress, ...).
    """
    from capojax.data.benchmarks import load_benchmark

    if isinstance(benchmarks, str):
        benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    results = {}
    for bench in benchmarks:
        problems = load_benchmark(bench, limit=limit, data_dir=data_dir)
        name = _folder_name(bench)
        result = evaluate_problems(model, tokenizer, problems, name=name, n_bins=n_bins, **kwargs)
        result.summary.update(summary_extra or {})
        if out_dir is not None:
            write_outputs(result, pathlib.Path(out_dir) / name, n_bins=n_bins)
        results[name] = result.summary
    return results


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from capojax.data.benchmarks import BENCHMARKS

    p = argparse.ArgumentParser(
        prog="python -m capojax.evaluate",
        description="Sample, grade and score a checkpoint on math benchmarks (accuracy, pass@k, voting, calibration).",
    )
    p.add_argument("--checkpoint", required=True, help="HF checkpoint folder (config.json, *.safetensors, tokenizer)")
    p.add_argument(
        "--benchmarks", default="aime24,math500",
        help=f"comma-separated names ({', '.join(BENCHMARKS)}) or .json/.jsonl paths",
    )
    from capojax.eval_protocols import DEFAULT_SETTINGS, PROTOCOLS

    d = DEFAULT_SETTINGS
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="a paper's evaluation settings (capo: n 16, T 1.0, top_p 1.0, 3072 tokens, boxed grading; "
                        "dcpo: DCPO's release, non-thinking, confidence parsing); explicit flags override them")
    p.add_argument("--n", type=int, default=None, help=f"samples per problem (default {d['n']})")
    p.add_argument("--temperature", type=float, default=None, help=f"default {d['temperature']}")
    p.add_argument("--top_p", type=float, default=None, help=f"default {d['top_p']}")
    p.add_argument("--top_k", type=int, default=None, help="0 disables top-k (default 0)")
    p.add_argument("--max_new_tokens", type=int, default=None, help=f"default {d['max_new_tokens']}")
    p.add_argument("--presence_penalty", type=float, default=None,
                   help="subtracted from the logits of tokens a sample has already generated, before temperature "
                        f"(vLLM/OpenAI; vLLM accepts [-2, 2]; default {d['presence_penalty']}, dcpo 1.5)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first LIMIT problems of each benchmark")
    p.add_argument("--out", required=True, help="output folder; one subfolder per benchmark")
    p.add_argument("--template", default=None, choices=["qwen-math", "dcpo"],
                   help=f"prompt style (default {d['template']})")
    p.add_argument("--require_boxed", default=None, action=argparse.BooleanOptionalAction,
                   help="grade the last \\boxed{} only, no box = wrong (verl); --no-require_boxed: math-verify "
                        "fallback (default off)")
    p.add_argument("--chat_template_kwargs", default=None, type=json.loads,
                   help='JSON object for the chat template, e.g. \'{"enable_thinking": false}\' (Qwen3 non-thinking)')
    p.add_argument("--engine", default="jax", choices=["jax", "vllm"],
                   help="jax: embedded sampler + teacher-forced log-probs; vllm: a vLLM server does both")
    p.add_argument("--vllm_url", default=None, help="a running vLLM server on this checkpoint (default: launch one)")
    p.add_argument("--vllm_python", default=None, help="python of the vLLM venv for a launched server "
                                                       "(default .venv-vllm, else this python)")
    p.add_argument("--vllm_max_model_len", type=int, default=0,
                   help="context of a launched server (0 = 1024 prompt tokens + max_new_tokens)")
    p.add_argument("--vllm_cpu_kvcache_gb", type=int, default=2, help="KV-cache GB of a launched CPU server")
    p.add_argument("--vllm_concurrency", type=int, default=64, help="requests in flight to the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8, help="problems per sampler call (rows = batch_size * n)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter/compute dtype")
    p.add_argument("--fsdp", type=int, default=1, help="mesh fsdp size (-1: all devices); 1 with --tp 1 = one device")
    p.add_argument("--tp", type=int, default=1, help="mesh tensor-parallel size")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the checkpoint folder)")
    p.add_argument("--data_dir", default=None,
                   help="folder holding eval/, the only place looked at when given (default: $CAPOJAX_DATA_DIR, else "
                        "../shared/data, else the cache, else a download verified by hash; capojax.data.fetch)")
    p.add_argument("--grade_workers", type=int, default=None, help="grading processes (0 = in this process)")
    p.add_argument("--grade_timeout", type=float, default=None, help="seconds per graded response")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


_SETTING_FLAGS = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "template", "require_boxed",
                  "chat_template_kwargs", "presence_penalty")


def _resolve_protocol(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Fills the setting flags from --protocol (else the defaults), explicit flags winning; returns the summary
    fields that record the protocol and the resolved settings."""
    from capojax.eval_protocols import resolve_settings

    if args.chat_template_kwargs is not None and not isinstance(args.chat_template_kwargs, dict):
        parser.error(f"--chat_template_kwargs must be a JSON object, got {args.chat_template_kwargs!r}")
    settings, fields = resolve_settings(args.protocol, {k: getattr(args, k) for k in _SETTING_FLAGS})
    for key, value in settings.items():
        setattr(args, key, value)
    return fields


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Fails fast, before any model loading, on what the user can fix. Returns the benchmark list."""
    from capojax.data.benchmarks import BENCHMARKS

    ckpt = pathlib.Path(args.checkpoint).expanduser()
    if not ckpt.is_dir():
        parser.error(f"--checkpoint {ckpt} is not a folder; pass an HF checkpoint folder with config.json")
    if not (ckpt / "config.json").is_file():
        parser.error(f"--checkpoint {ckpt} has no config.json; is it an HF checkpoint folder (save_pretrained output)?")
    tok_dir = pathlib.Path(args.tokenizer).expanduser() if args.tokenizer else ckpt
    if not (tok_dir / "tokenizer.json").is_file():
        parser.error(f"no tokenizer.json in {tok_dir}; copy the tokenizer files there or pass --tokenizer DIR")
    if args.engine == "vllm" and args.tokenizer and args.vllm_url is None:
        parser.error("--engine vllm launches a server on --checkpoint, which must then hold the tokenizer too; "
                     "copy the tokenizer files into the checkpoint folder or pass --vllm_url of a running server")
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not benchmarks:
        parser.error("--benchmarks is empty; pass e.g. --benchmarks aime24,math500")
    for b in benchmarks:
        if b.lower() in BENCHMARKS:
            continue
        path = pathlib.Path(b).expanduser()
        if path.suffix.lower() in (".json", ".jsonl"):
            if not path.is_file():
                parser.error(f"benchmark file {path} does not exist")
            continue
        parser.error(f"unknown benchmark {b!r}; choose from {', '.join(BENCHMARKS)} or give a .json/.jsonl path")
    for flag, value, low in (("--n", args.n, 1), ("--max_new_tokens", args.max_new_tokens, 1), ("--batch_size", args.batch_size, 1)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if not math.isfinite(args.presence_penalty):
        parser.error(f"--presence_penalty must be a finite number, got {args.presence_penalty}")
    if args.engine == "vllm" and not -2 <= args.presence_penalty <= 2:
        parser.error(f"--presence_penalty {args.presence_penalty}: vLLM accepts [-2, 2]; pick one in that range or "
                     "use --engine jax")
    return benchmarks


def _vllm_engine(args: argparse.Namespace, ckpt: pathlib.Path, *, pad_id: int, stop_ids: Sequence[int]):
    """The sidecar engine: on --vllm_url, else on a server launched on the checkpoint (stopped by close())."""
    from capojax.rollout.vllm_engine import VLLMClient, VLLMRolloutEngine, VLLMServerError

    server = None
    url = args.vllm_url
    if url is None:
        from capojax.rollout.vllm_server import ServerConfig, launch_vllm_server

        max_len = int(args.vllm_max_model_len) or 1024 + int(args.max_new_tokens)
        server = launch_vllm_server(ServerConfig(
            model=str(ckpt), python=args.vllm_python, dtype=args.dtype, max_model_len=max_len,
            cpu_kvcache_gb=int(args.vllm_cpu_kvcache_gb), seed=int(args.seed)))
        url = server.url
        logger.info("vLLM server on %s at %s (log %s)", ckpt, url, server.log_path)
    elif not VLLMClient(url).health(timeout=30.0):
        raise VLLMServerError(f"no vLLM server answers at --vllm_url {url}; start one on the checkpoint "
                              f"(python scripts/serve_vllm.py --model {ckpt}) or omit --vllm_url to launch one")
    return VLLMRolloutEngine(url, pad_id=pad_id, eos_ids=stop_ids, server=server, own_server=server is not None,
                             max_concurrency=int(args.vllm_concurrency))


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.one_line_errors(_parser())  # a usage mistake is one line `error: ...` (see capojax.cli)
    args = parser.parse_args(argv)
    protocol_fields = _resolve_protocol(parser, args)
    benchmarks = _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configure_host()  # before JAX starts its backend (capojax.host_memory)

    import jax.numpy as jnp

    from capojax.models import load_pretrained
    from capojax.tokenizer import load_tokenizer, special_token_ids

    ckpt = pathlib.Path(args.checkpoint).expanduser()
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    # Fail on bad data paths before the (slow) model load.
    from capojax.data.benchmarks import load_benchmark

    for b in benchmarks:
        try:
            load_benchmark(b, limit=1, data_dir=args.data_dir)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
    mesh = None
    if args.fsdp != 1 or args.tp != 1:
        from capojax.sharding import make_mesh

        try:
            mesh = make_mesh(args.fsdp, args.tp)
        except ValueError as e:
            parser.error(f"--fsdp/--tp: {e}")
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer or ckpt)
    if args.chat_template_kwargs and not getattr(tokenizer, "chat_template", None):
        parser.error(f"chat-template kwargs {args.chat_template_kwargs} (from --protocol {args.protocol} or "
                     f"--chat_template_kwargs) need the model's chat template, but the tokenizer in "
                     f"{args.tokenizer or ckpt} has none: copy the checkpoint's tokenizer_config.json there (or pass "
                     f"--tokenizer DIR), or pass --chat_template_kwargs '{{}}'")
    engine = scorer = model = None
    if args.engine == "vllm":
        # The server samples and scores: no JAX model (a 7B checkpoint need not fit the evaluating host).
        from capojax.models import QwenConfig

        config = QwenConfig.from_json(ckpt / "config.json")
        stop_ids = _stop_ids(tokenizer, config, extra=special_token_ids(tokenizer, ckpt).eos_ids)
        engine = _vllm_engine(args, ckpt, pad_id=_pad_id(tokenizer, stop_ids), stop_ids=stop_ids)
        scorer = eval_pipeline.ServerScored(engine.client, max_concurrency=args.vllm_concurrency)
    else:
        model, config = load_pretrained(ckpt, dtype=dtype, mesh=mesh)
        logger.info("loaded %s (%s) in %.1fs", ckpt, config.model_type, time.perf_counter() - t0)
        # generation_config.json / config.json EOS ids, plus ChatML's end of turn (the prompts are ChatML).
        stop_ids = _stop_ids(tokenizer, config, extra=special_token_ids(tokenizer, ckpt).eos_ids)
    out = pathlib.Path(args.out).expanduser()
    try:
        results = evaluate(
            model, tokenizer, benchmarks, limit=args.limit, out_dir=out, data_dir=args.data_dir,
            summary_extra=protocol_fields, n=args.n, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, max_new_tokens=args.max_new_tokens, template=args.template, seed=args.seed,
            stop_ids=stop_ids, mesh=mesh, batch_size=args.batch_size, grade_workers=args.grade_workers,
            grade_timeout=args.grade_timeout, progress=not args.no_progress,
            chat_template_kwargs=args.chat_template_kwargs or None, require_boxed=args.require_boxed,
            presence_penalty=args.presence_penalty, engine=engine, scorer=scorer,
        )
    finally:
        if engine is not None:
            engine.close()
    n = args.n
    keys = [f"mean@{n}", f"pass@{n}", f"majority@{n}", f"perplexity_consistency@{n}", "ppl/auc_mean", "ppl/auroc",
            "ppl/ece", "ppl/pce", "ppl/brier"]
    print("benchmark".ljust(14) + "".join(k.rjust(max(12, len(k) + 2)) for k in keys))
    for name, s in results.items():
        print(name.ljust(14) + "".join(f"{s.get(k, float('nan')):.4f}".rjust(max(12, len(k) + 2)) for k in keys))
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    cli.run_argparse(main)
