"""One path from prompts to sampled, scored and graded completions: the trainer's validation (`Trainer.validate`)
and the benchmark evaluation (`capojax.evaluate`) both go through it.

    sample  the rollout engine draws n completions per prompt, chunk by chunk of prompts, each chunk with its own
            SamplingParams (its own seed)                                                         -> Rollout
    score   each chunk, as soon as it is sampled: the mean token log-prob of every completion under the model at
            temperature 1, teacher forced (`lpm`; confidence = exp(lpm) = 1 / perplexity), by the trainer's
            log-prob pass (`TeacherForced`, `capojax.trainer.logprobs`) or by a vLLM server (`ServerScored`)
    grade   decode, grade against the gold answers (math-verify worker processes), parse the stated
            `CONFIDENCE: p` (`capojax.trainer.scoring.grade_rollout`)
    summarise  `validation_metrics`: the trainer's `val/*` metrics. `capojax.evaluate` clusters the answers and
            writes its own benchmark summary from the same `Samples`.

The sampler's own log-probs are taken under the *sampling* distribution (temperature, top-p), which is not the
model's likelihood; that is why `score` recomputes them at temperature 1.

    samples = run(engine, prompts, golds, tokenizer, n=4, chunk_size=8, params_for=lambda first: SamplingParams(...),
                  scorer=TeacherForced(logprob_fn, params, pad_id=pad), grading=Grading(timeout=5.0))
    metrics = validation_metrics(samples)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from capojax.rollout.base import Rollout, SamplingParams

__all__ = [
    "Grading", "Samples", "Scored", "Scorer", "ServerScored", "TeacherForced", "concat_rollouts", "grade", "run",
    "sample", "score", "server_completion_lpm", "validation_metrics",
]


# ------------------------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------------------------


def sample(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    *,
    chunk_size: int,
    params_for: Callable[[int], SamplingParams],
    timings: dict[str, float],
    progress: str | None = None,
) -> Iterator[tuple[int, Sequence[Sequence[int]], Rollout]]:
    """Yields `(first prompt, the chunk's prompts, Rollout)` per chunk of `chunk_size` prompts; `params_for(first)`
    gives its settings (the Rollout's prompt_index counts from the chunk's first prompt).

    Lazy, so that each chunk is scored before the next is sampled. `timings["sample"]` accumulates the seconds
    spent in `engine.generate`. progress: a progress-bar label (None: no bar).
    """
    from tqdm.auto import tqdm

    timings.setdefault("sample", 0.0)
    with tqdm(total=len(prompts), desc=progress or "", unit="problem", disable=progress is None) as bar:
        for first in range(0, len(prompts), chunk_size):
            chunk = prompts[first : first + chunk_size]
            start = time.perf_counter()
            rollout = engine.generate(chunk, params_for(first))
            timings["sample"] += time.perf_counter() - start
            bar.update(len(chunk))
            yield first, chunk, rollout


def concat_rollouts(parts: Sequence[tuple[int, Rollout]]) -> Rollout:
    """Chunks `(first prompt, Rollout)` -> one Rollout whose `prompt_index` counts from the first chunk's first
    prompt; token arrays are right-padded (pad_id, log-prob 0, mask False) to the widest chunk."""
    width = max(r.tokens.shape[1] for _, r in parts)
    pad_id = parts[0][1].pad_id

    def widen(x, fill):
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)

    return Rollout(
        tokens=np.concatenate([widen(r.tokens, pad_id) for _, r in parts]).astype(np.int32),
        logprobs=np.concatenate([widen(r.logprobs, 0.0) for _, r in parts]).astype(np.float32),
        mask=np.concatenate([widen(r.mask, False) for _, r in parts]).astype(bool),
        lengths=np.concatenate([r.lengths for _, r in parts]).astype(np.int32),
        finished=np.concatenate([r.finished for _, r in parts]).astype(bool),
        prompt_index=np.concatenate([first + np.asarray(r.prompt_index) for first, r in parts]).astype(np.int32),
        pad_id=pad_id,
    )


# ------------------------------------------------------------------------------------------------------------
# score
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scored:
    """Teacher-forced scores of N rows: lpm f32[N]; entropy_sum, the token entropy summed over all completion
    tokens (NaN when the scorer does not compute it); tokens, the number of completion tokens."""

    lpm: np.ndarray
    entropy_sum: float
    tokens: int


class Scorer(Protocol):
    def __call__(self, prompts: Sequence[Sequence[int]], rollout: Rollout) -> Scored:
        """Scores the rows of `rollout`; `rollout.prompt_index` indexes `prompts`."""
        ...


class TeacherForced:
    """Scores rows with a `capojax.trainer.logprobs.make_logprob_fn` pass (built at temperature 1) over `params`.

    Rows are laid out by `capojax.trainer.batch.assemble` and go through in batches of `rows_per_batch` (None: all
    rows of a chunk in one pass; the last batch is filled up with repeats of its last row, so every batch has one
    shape). prompt_len, length: fixed padded sizes (e.g. from all prompts and max_new_tokens, so that a whole
    evaluation compiles once); None: the rows' own, bucketed. put: moves a host batch to the devices (e.g. split
    over the mesh's "fsdp" axis; `rows_per_batch` must then divide by its size). lpm of a row without tokens is 0
    (`capojax.objectives.lpm`).
    """

    def __init__(self, logprob_fn: Callable, params: Any, *, pad_id: int, put: Callable | None = None,
                 rows_per_batch: int | None = None, prompt_len: int | None = None, length: int | None = None):
        self.logprob_fn, self.params, self.pad_id = logprob_fn, params, int(pad_id)
        self.put = put or (lambda x: x)
        self.rows_per_batch, self.prompt_len, self.length = rows_per_batch, prompt_len, length

    def __call__(self, prompts: Sequence[Sequence[int]], rollout: Rollout) -> Scored:
        from capojax import objectives
        from capojax.sharding import to_host
        from capojax.trainer import batch as batch_lib

        seq = batch_lib.assemble(prompts, rollout, pad_id=self.pad_id, prompt_len=self.prompt_len,
                                 length=self.length)
        n_rows = rollout.num_rows
        size = self.rows_per_batch or n_rows
        lpm = np.zeros(n_rows, np.float32)
        entropy_sum, tokens = 0.0, 0
        for first in range(0, n_rows, size):
            rows = np.arange(first, min(first + size, n_rows))
            index = np.concatenate([rows, np.full(size - len(rows), rows[-1])])  # filler rows: repeats, dropped
            mask = seq.response_mask[index]
            logp, entropy = self.logprob_fn(
                self.params, *(self.put(getattr(seq, k)[index]) for k in ("input_ids", "attention_mask", "positions")),
                prompt_len=seq.prompt_len,
            )
            lpm[rows] = to_host(objectives.lpm(logp, self.put(mask)))[: len(rows)]
            real = mask[: len(rows)]
            entropy_sum += float(to_host(entropy)[: len(rows)][real].sum()) if entropy is not None else float("nan")
            tokens += int(real.sum())
        return Scored(lpm=lpm, entropy_sum=entropy_sum, tokens=tokens)


def server_completion_lpm(
    client: Any,
    prompts: Sequence[Sequence[int]],
    completions: np.ndarray,
    lengths: np.ndarray,
    prompt_index: np.ndarray,
    *,
    max_concurrency: int = 16,
) -> np.ndarray:
    """Mean token log-prob of each completion computed by a vLLM server -> f32[N]: the mean of its raw
    (temperature-1) prompt log-probs over each completion's tokens, one `prompt_logprobs` request per row
    (`client`: a `VLLMClient`). completions i32[N,T] right-padded, lengths i32[N], prompt_index i32[N] into
    `prompts`; a row with no tokens gets NaN."""
    import concurrent.futures as cf

    completions = np.asarray(completions, np.int32)
    lengths = np.asarray(lengths, np.int32)
    out = np.full(len(lengths), np.nan, np.float32)

    def one(row: int) -> float:
        prompt = list(prompts[int(prompt_index[row])])
        completion = completions[row, : lengths[row]].tolist()
        logp = client.prompt_logprobs(prompt + completion)  # log p(tokens[t] | tokens[:t]), t >= 1
        return float(np.mean(np.asarray(logp[len(prompt) - 1 :], np.float64)))

    rows = [r for r in range(len(lengths)) if lengths[r] > 0]
    with cf.ThreadPoolExecutor(max_workers=max(1, int(max_concurrency))) as pool:
        for row, value in zip(rows, pool.map(one, rows)):
            out[row] = value
    return out


@dataclasses.dataclass
class ServerScored:
    """Scores rows by a vLLM server's temperature-1 prompt log-probs (`server_completion_lpm`); no entropy."""

    client: Any
    max_concurrency: int = 16

    def __call__(self, prompts: Sequence[Sequence[int]], rollout: Rollout) -> Scored:
        lpm = server_completion_lpm(self.client, prompts, rollout.tokens, rollout.lengths, rollout.prompt_index,
                                    max_concurrency=self.max_concurrency)
        return Scored(lpm=lpm, entropy_sum=float("nan"), tokens=int(rollout.lengths.sum()))


def score(
    chunks: Iterator[tuple[int, Sequence[Sequence[int]], Rollout]],
    scorer: Scorer,
    *,
    timings: dict[str, float],
) -> Iterator[tuple[int, Rollout, Scored]]:
    """Scores each sampled chunk as it arrives -> `(first prompt, Rollout, Scored)`; `timings["score"]` accumulates
    the seconds spent in `scorer`."""
    timings.setdefault("score", 0.0)
    for first, chunk, rollout in chunks:
        start = time.perf_counter()
        scored = scorer(chunk, rollout)
        timings["score"] += time.perf_counter() - start
        yield first, rollout, scored


# ------------------------------------------------------------------------------------------------------------
# grade
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grading:
    """How responses are graded: `timeout` seconds per response; `workers` grader processes (None: default pool,
    0: in this process); `require_boxed`: the last `\\boxed{}` only (no box: wrong), as verl's math reward;
    `with_confidence`: parse the stated `CONFIDENCE: p` (NaN otherwise)."""

    timeout: float
    workers: int | None = None
    require_boxed: bool = True
    with_confidence: bool = False


def grade(rollout: Rollout, golds: Sequence[Any], tokenizer: Any, grading: Grading, *, timings: dict[str, float]):
    """Decodes and grades every row of `rollout` against `golds[prompt_index]` -> `capojax.trainer.scoring.Graded`;
    `timings["grade"]` gets the seconds it took."""
    from capojax.trainer.scoring import grade_rollout

    start = time.perf_counter()
    graded = grade_rollout(rollout, golds, tokenizer, timeout=grading.timeout, workers=grading.workers,
                           with_confidence=grading.with_confidence, require_boxed=grading.require_boxed)
    timings["grade"] = timings.get("grade", 0.0) + time.perf_counter() - start
    return graded


# ------------------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Samples:
    """B prompts x n samples, N = B * n rows, prompt-major (the samples of prompt i are rows i*n .. i*n + n-1).

    rollout: all rows (tokens, sampler log-probs, lengths, finished; prompt_index into `prompts`).
    lpm f32[N]: teacher-forced mean token log-prob at temperature 1. entropy_sum, tokens: the teacher-forced
    token entropy summed over all completion tokens (NaN when the scorer has none), and their number.
    graded: texts, correct, extracted answers, stated confidences (`capojax.trainer.scoring.Graded`).
    timings: seconds spent sampling, scoring and grading.
    """

    prompts: list[list[int]]
    n: int
    rollout: Rollout
    lpm: np.ndarray
    entropy_sum: float
    tokens: int
    graded: Any
    timings: dict[str, float]

    def grid(self, x: np.ndarray) -> np.ndarray:
        """A per-row array [N, ...] as [B, n, ...]."""
        return np.asarray(x).reshape(len(self.prompts), self.n, *np.shape(x)[1:])


def run(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    golds: Sequence[Any],
    tokenizer: Any,
    *,
    n: int,
    chunk_size: int,
    params_for: Callable[[int], SamplingParams],
    scorer: Scorer,
    grading: Grading,
    progress: str | None = None,
) -> Samples:
    """sample -> score (chunk by chunk) -> grade. `params_for(first)` gives the SamplingParams (with `n`) of the
    chunk of `chunk_size` prompts starting at prompt `first`; `golds[i]` is prompt i's gold answer."""
    if not prompts:
        raise ValueError("no prompts to sample")
    if len(golds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(golds)} gold answers; pass one gold answer per prompt")
    timings: dict[str, float] = {}
    chunks = sample(engine, prompts, chunk_size=chunk_size, params_for=params_for, timings=timings, progress=progress)
    parts = list(score(chunks, scorer, timings=timings))
    rollout = concat_rollouts([(first, r) for first, r, _ in parts])
    if rollout.num_rows != len(prompts) * n:
        raise ValueError(f"the engine returned {rollout.num_rows} rows for {len(prompts)} prompts x n={n}")
    return Samples(
        prompts=[list(p) for p in prompts],
        n=n,
        rollout=rollout,
        lpm=np.concatenate([s.lpm for _, _, s in parts]).astype(np.float32),
        entropy_sum=_sum_in_order([s.entropy_sum for _, _, s in parts]),
        tokens=sum(s.tokens for _, _, s in parts),
        graded=grade(rollout, golds, tokenizer, grading, timings=timings),
        timings=timings,
    )


def _sum_in_order(values: Sequence[float]) -> float:
    """Left-to-right Python float sum (chunk by chunk, as validation always summed its entropy)."""
    total = 0.0
    for v in values:
        total += v
    return total


# ------------------------------------------------------------------------------------------------------------
# summarise: the trainer's validation metrics
# ------------------------------------------------------------------------------------------------------------


def validation_metrics(samples: Samples) -> dict[str, float]:
    """The `val/*` metrics the trainer logs (and the calibration study and the demo read):

    val/{n, accuracy, mean_confidence, auroc, auc_mean, n_mixed, ece, pce, brier, aupc} of exp(lpm)
    (`capojax.metrics.calibration_summary`); val/stated/* the same of the stated confidence, when one was parsed;
    val/entropy the mean teacher-forced token entropy; val/accuracy_se the standard error of val/accuracy with the
    prompt as the unit (the samples of one prompt are not independent); val/lpm/correct, val/lpm/wrong the mean lpm
    of correct and of wrong samples; val/lpm/group_sd the mean within-prompt sd of lpm (the scale of CAPO's tau).
    """
    from capojax import metrics

    correct = samples.grid(samples.graded.correct)
    lpm = samples.grid(samples.lpm)
    out = {f"val/{k}": v for k, v in metrics.calibration_summary(np.exp(lpm), correct).items()}
    out["val/entropy"] = samples.entropy_sum / max(samples.tokens, 1)
    per_prompt = correct.mean(axis=1)
    out["val/accuracy_se"] = (float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))) if len(per_prompt) > 1
                              else float("nan"))
    out["val/lpm/correct"] = _masked_mean(lpm, correct)
    out["val/lpm/wrong"] = _masked_mean(lpm, ~correct)
    out["val/lpm/group_sd"] = float(np.mean(lpm.std(axis=1, ddof=1))) if samples.n > 1 else float("nan")
    stated = samples.grid(samples.graded.confidence)
    if np.isfinite(stated).any():
        out.update({f"val/stated/{k}": v for k, v in metrics.calibration_summary(stated, correct).items()})
    return out


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    mask = np.asarray(mask, bool)
    return float(np.asarray(x)[mask].mean()) if mask.any() else float("nan")
