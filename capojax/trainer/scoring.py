"""From sampled token ids to rewards: decode, grade with math-verify in worker processes, and read the
DCPO confidence line and its token span.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from capojax.rewards import confidence_token_mask, grade_batch, parse_confidences
from capojax.rollout.base import Rollout


@dataclasses.dataclass
class Graded:
    """Per row (N = B * G, prompt-major).

    texts: decoded completions; correct bool[N]; extracted answers (None: nothing to grade); timed_out bool[N]
    (the grade hit its deadline, counted wrong); confidence f32[N] (NaN = none stated, or not parsed);
    timeouts, crashes: counts.
    """

    texts: list[str]
    correct: np.ndarray
    extracted: list[str | None]
    timed_out: np.ndarray
    confidence: np.ndarray
    timeouts: int
    crashes: int


@dataclasses.dataclass
class Scores(Graded):
    """`Graded`, plus confidence_mask bool[N, T]: the completion tokens of each stated confidence (all False without a
    confidence line, or when confidences are not parsed)."""

    confidence_mask: np.ndarray


def grade_rollout(
    rollout: Rollout,
    golds: Sequence[Any],
    tokenizer,
    *,
    timeout: float,
    workers: int | None,
    with_confidence: bool,
    require_boxed: bool = True,
) -> Graded:
    """Decodes each row, grades it against `golds[prompt_index[row]]` and, `with_confidence`, parses its stated
    `CONFIDENCE: p`.

    require_boxed: only the last `\\boxed{}` is graded and a response without one earns 0, as verl's math reward
    (`config.reward.require_boxed`); False falls back to math-verify's free extraction of the response's tail.
    """
    rows = [rollout.tokens[r, : rollout.lengths[r]].tolist() for r in range(rollout.num_rows)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    row_golds = [golds[int(i)] for i in rollout.prompt_index]
    result = grade_batch(texts, row_golds, timeout=timeout, workers=workers, require_boxed=require_boxed)
    if with_confidence:
        confidence = np.asarray(parse_confidences(texts), np.float32)
    else:
        confidence = np.full(len(rows), np.nan, np.float32)
    return Graded(
        texts=texts,
        correct=np.asarray(result.correct, bool),
        extracted=list(result.extracted),
        timed_out=np.asarray(result.timed_out or [False] * len(rows), bool),
        confidence=confidence,
        timeouts=int(result.timeouts),
        crashes=int(result.crashes),
    )


def score_rollout(
    rollout: Rollout,
    golds: Sequence[Any],
    tokenizer,
    *,
    timeout: float,
    workers: int | None,
    with_confidence: bool,
    length: int | None = None,
    require_boxed: bool = True,
) -> Scores:
    """`grade_rollout`, plus the token span of each stated confidence (DCPO's calibration advantage goes there).

    `golds[i]` is the gold answer of prompt i; `length` pads the confidence mask to the trainer's T.
    """
    graded = grade_rollout(rollout, golds, tokenizer, timeout=timeout, workers=workers,
                           with_confidence=with_confidence, require_boxed=require_boxed)
    T = rollout.tokens.shape[1] if length is None else length
    if with_confidence:
        confidence_mask = np.stack([
            confidence_token_mask(rollout.tokens[r, : rollout.lengths[r]].tolist(), tokenizer, length=T)
            for r in range(rollout.num_rows)
        ])
    else:
        confidence_mask = np.zeros((rollout.num_rows, T), bool)
    fields = {f.name: getattr(graded, f.name) for f in dataclasses.fields(Graded)}  # no copies (asdict would)
    return Scores(**fields, confidence_mask=confidence_mask)
