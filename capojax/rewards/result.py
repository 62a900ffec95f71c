"""`GradeResult`, the outcome of grading a batch of responses: its own module so that `grading` (which grades) and
`pool` (which runs grading in worker processes) both use it without importing each other at module level."""

from __future__ import annotations

import dataclasses

__all__ = ["GradeResult"]


@dataclasses.dataclass(frozen=True)
class GradeResult:
    """Result of :func:`capojax.rewards.grade_batch`.

    correct: per response, whether it matches one of its gold answers (False on timeout or crash).
    extracted: per response, the answer string that was graded (boxed content or fallback match), or None.
    timeouts: how many responses hit the deadline (soft timer or hard kill of a worker).
    crashes: how many responses crashed a worker process (counted wrong; the worker is replaced).
    timed_out: per response, whether it hit the deadline (``sum(timed_out) == timeouts``).
    """

    correct: list[bool]
    extracted: list[str | None]
    timeouts: int
    crashes: int = 0
    timed_out: list[bool] = dataclasses.field(default_factory=list)
