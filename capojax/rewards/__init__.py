"""Verifiable rewards: boxed-answer extraction, math-verify grading, DCPO confidence parsing.

Importing this package is light (no math-verify/sympy until the first grade, no JAX).

- :func:`extract_boxed` — the last ``\\boxed{...}`` answer.
- :func:`grade`, :func:`grade_batch` (worker processes, hard deadlines) -> :class:`GradeResult` (:mod:`capojax.rewards.result`),
  :func:`answers_equivalent`, :func:`equivalence_classes` — see :mod:`capojax.rewards.grading`.
- :func:`parse_confidence`, :func:`parse_confidences`, :func:`confidence_token_span`,
  :func:`confidence_token_mask` — see :mod:`capojax.rewards.confidence`.
"""

from capojax.rewards.boxed import boxed_span, extract_boxed
from capojax.rewards.confidence import (
    confidence_char_span,
    confidence_token_mask,
    confidence_token_span,
    parse_confidence,
    parse_confidences,
    strip_confidence,
    token_char_offsets,
)
from capojax.rewards.grading import (
    DEFAULT_TIMEOUT,
    answers_equivalent,
    equivalence_classes,
    grade,
    grade_batch,
    grade_detailed,
    normalize_gold,
)
from capojax.rewards.result import GradeResult

__all__ = [
    "extract_boxed",
    "boxed_span",
    "grade",
    "grade_detailed",
    "grade_batch",
    "GradeResult",
    "answers_equivalent",
    "equivalence_classes",
    "normalize_gold",
    "DEFAULT_TIMEOUT",
    "parse_confidence",
    "parse_confidences",
    "confidence_char_span",
    "confidence_token_span",
    "confidence_token_mask",
    "token_char_offsets",
    "strip_confidence",
]
