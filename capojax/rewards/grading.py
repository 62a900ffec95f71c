"""Verifiable math rewards: grade a response against gold answers with math-verify, under a deadline.

Pipeline for one response:

1. Drop a trailing DCPO ``CONFIDENCE:`` line, so its number is never read as the answer.
2. Take the last ``\\boxed{...}`` (:func:`capojax.rewards.boxed.extract_boxed`). Without one, unless
   ``require_boxed=True``, fall back to math-verify's own extraction over the last
   ``FALLBACK_TAIL_CHARS`` characters ("... the answer is $5$."), like math-verify-based verl rewards.
3. Parse answer and gold with ``math_verify.parse`` (LaTeX first, then plain expressions) and compare with
   ``math_verify.verify`` (numeric with rounding, symbolic, sets/tuples/intervals, ``x = 3`` vs ``3``).

Gold answers come in the benchmark files' own types, normalised by :func:`normalize_gold`: a string,
an int, a float (``27.0`` -> ``"27"``) or a list of acceptable answers (Minerva). Strings are stripped
(Minerva's trailing newlines), ``$`` math delimiters are removed (OlympiadBench's ``$\\frac{1}{2}$`` and
``$69$,$84$``) and a ``\\boxed{}`` gold is unwrapped. Zero padding is handled by math-verify parsing
numbers (AIME ``"025"`` == 25).

Deadlines. math-verify bounds its own steps with ``signal.alarm``; here one deadline covers the whole
grade of a response (all parses and comparisons) instead, raised as a ``BaseException`` so that no
``except Exception`` inside math-verify or sympy swallows it. A timeout counts as wrong, is counted and
logged. Signals only interrupt Python bytecode and only work in the main thread, so:

- :func:`grade` / :func:`answers_equivalent` run in the calling process when called from the main thread
  (soft deadline), and otherwise hand the work to a worker process;
- :func:`grade_batch` runs in worker processes (:class:`capojax.rewards.pool.GraderPool`) that also
  have a hard deadline: a worker stuck in C code past it is killed and replaced.

Answers longer than ``MAX_ANSWER_CHARS`` are wrong without parsing (no real answer is that long, and
this keeps e.g. a million-digit number from ever reaching sympy).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
import re
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Union

from capojax.rewards.boxed import extract_boxed
from capojax.rewards.confidence import strip_confidence
from capojax.rewards.pool import default_pool, shared_pool
from capojax.rewards.result import GradeResult

__all__ = [
    "Gold",
    "GradingTimeout",
    "normalize_gold",
    "grade",
    "grade_detailed",
    "grade_batch",
    "answers_equivalent",
    "equivalence_classes",
    "MAX_ANSWER_CHARS",
    "FALLBACK_TAIL_CHARS",
    "DEFAULT_TIMEOUT",
]

logger = logging.getLogger("capojax.rewards")

Gold = Union[str, int, float, Sequence[Union[str, int, float]]]

MAX_ANSWER_CHARS = 1000
FALLBACK_TAIL_CHARS = 300
DEFAULT_TIMEOUT = 5.0


class GradingTimeout(BaseException):
    """Raised by the deadline timer. A BaseException so library ``except Exception`` blocks let it through."""


# --------------------------------------------------------------------------------------------------
# gold normalisation

_DOLLAR = re.compile(r"(?<!\\)\$")


def _gold_str(g: Any) -> str:
    if isinstance(g, bool) or g is None:
        raise ValueError(f"gold answer {g!r} is not an answer; give a string, a number or a list of them")
    if isinstance(g, numbers.Integral):
        return str(int(g))
    if isinstance(g, numbers.Real):
        x = float(g)
        if not math.isfinite(x):
            raise ValueError(f"gold answer {g!r} is not finite; fix the data row")
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
    if not isinstance(g, str):
        raise ValueError(
            f"gold answer of type {type(g).__name__} ({g!r:.80}); give a string, a number or a list of them"
        )
    s = g.strip()
    if "\\boxed" in s or "\\fbox" in s:
        boxed = extract_boxed(s)
        if boxed is not None:
            s = boxed
    s = _DOLLAR.sub("", s).strip()
    return s


def normalize_gold(gold: Gold) -> tuple[str, ...]:
    """Gold answer(s) as a tuple of non-empty LaTeX strings; raises ValueError with what to fix."""
    items = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    if not items:
        raise ValueError("gold answer list is empty; give at least one acceptable answer (or drop the row)")
    out = tuple(_gold_str(g) for g in items)
    out = tuple(g for g in out if g)
    if not out:
        raise ValueError(f"gold answer {gold!r:.80} is empty; drop this row (e.g. the 6 empty DeepScaleR answers)")
    return out


# --------------------------------------------------------------------------------------------------
# deadline


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_timeout(signum, frame):
    raise GradingTimeout()


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise :class:`GradingTimeout` in the main thread after ``seconds`` (wall clock).

    An outer SIGALRM timer (e.g. pytest-timeout's) is preserved: its handler is restored and its
    remaining time re-armed, minus the time spent here.
    """
    if not _in_main_thread():
        raise RuntimeError("deadline() needs the main thread (signals); grade in a worker process instead")
    if seconds is None or seconds <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {seconds!r}")
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            # an outer timer that would already have fired fires right away
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-3), old_interval)


# --------------------------------------------------------------------------------------------------
# math-verify calls (no own timeouts: the caller's deadline covers them)


@functools.lru_cache(maxsize=1)
def _mv():
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # We pass parsing_timeout=None / timeout_seconds=None on purpose (our deadline covers the whole grade,
    # and math-verify's nested alarm would cancel it); silence its one-time "timeout disabled" warning.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    configs = (
        math_verify.LatexExtractionConfig(boxed_match_priority=0),
        math_verify.ExprExtractionConfig(),
    )
    return math_verify, configs


@functools.lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> tuple:
    """Parse an answer string (boxed content or gold) into math-verify targets. Cached: golds repeat G times."""
    mv, configs = _mv()
    return tuple(mv.parse("\\boxed{" + answer + "}", extraction_config=configs, parsing_timeout=None))


@functools.lru_cache(maxsize=1)
def _warm_up() -> None:
    """Import math-verify/sympy and build the LaTeX parser once (seconds on a busy machine), outside any
    deadline, so that cold start is never charged to (and never times out) the first real grade."""
    _verify(_parse_answer("\\frac{1}{2}"), _parse_answer("0.5"))


def _parse_tail(text: str) -> tuple:
    mv, configs = _mv()
    return tuple(mv.parse(text, extraction_config=configs, parsing_timeout=None))


def _verify(gold_parsed: tuple, pred_parsed: tuple) -> bool:
    if not gold_parsed or not pred_parsed:
        return False
    mv, _ = _mv()
    return bool(mv.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _extract(response: str, require_boxed: bool) -> tuple[str | None, tuple | None]:
    """(extracted answer string, parsed prediction or None when it still needs parsing)."""
    text = strip_confidence(response)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, None
    if require_boxed:
        return None, ()
    parsed = _parse_tail(text[-FALLBACK_TAIL_CHARS:])
    extracted = next((p for p in reversed(parsed) if isinstance(p, str)), None)
    return extracted, parsed


def _grade_unguarded(response: str, golds: tuple[str, ...], require_boxed: bool) -> tuple[bool, str | None]:
    extracted, parsed = _extract(response, require_boxed)
    if extracted is None and not parsed:
        return False, None
    if parsed is None:  # boxed answer
        if not extracted or len(extracted) > MAX_ANSWER_CHARS:
            return False, extracted[:MAX_ANSWER_CHARS] if extracted else extracted
        parsed = _parse_answer(extracted)
    return any(_verify(_parse_answer(g), parsed) for g in golds), extracted


def _log_timeout(what: str, text: str, seconds: float) -> None:
    logger.warning("%s timed out after %.1fs (counted as wrong): %r", what, seconds, text[:200])


def grade_in_process(
    response: str, golds: tuple[str, ...], timeout: float, require_boxed: bool = False
) -> tuple[bool, str | None, bool]:
    """Grade in this process under a soft deadline -> (correct, extracted, timed_out). Main thread only."""
    _warm_up()
    try:
        with deadline(timeout):
            correct, extracted = _grade_unguarded(response, golds, require_boxed)
        return correct, extracted, False
    except GradingTimeout:
        _log_timeout("grading", response, timeout)
        boxed = extract_boxed(strip_confidence(response))
        return False, (boxed[:MAX_ANSWER_CHARS] if boxed is not None else None), True
    except RecursionError:
        # deeply nested input can exhaust sympy/antlr recursion: that is a wrong answer, not a crash
        logger.warning("grading hit the recursion limit (counted as wrong): %r", response[:200])
        return False, None, False
    except Exception:  # a bug in a parser must cost one reward, not the training step
        logger.warning("grading raised (counted as wrong): %r", response[:200], exc_info=True)
        return False, None, False


def equivalent_in_process(a: str, b: str, timeout: float) -> tuple[bool, bool]:
    """(equivalent, timed_out) under a soft deadline. Main thread only."""
    _warm_up()
    try:
        with deadline(timeout):
            return _equivalent_unguarded(a, b), False
    except GradingTimeout:
        _log_timeout("answer comparison", f"{a[:100]!r} vs {b[:100]!r}", timeout)
        return False, True
    except RecursionError:
        return False, False
    except Exception:
        logger.warning("answer comparison raised (counted as not equivalent)", exc_info=True)
        return False, False


def _equivalent_unguarded(a: str, b: str) -> bool:
    a, b = a.strip(), b.strip()
    if not a or not b or len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    if a == b:
        return True
    pa, pb = _parse_answer(a), _parse_answer(b)
    # verify() is asymmetric (gold-side assignments like `x = 3` unwrap); equivalent if either way holds
    return _verify(pa, pb) or _verify(pb, pa)


# --------------------------------------------------------------------------------------------------
# public API


def _check_response(response: Any) -> str:
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    return response


def grade_detailed(
    response: str, gold: Gold, *, timeout: float = DEFAULT_TIMEOUT, require_boxed: bool = False
) -> tuple[bool, str | None, bool]:
    """Grade one response -> ``(correct, extracted answer or None, timed_out)``.

    Runs in this process from the main thread; from another thread it uses the shared worker pool
    (signals, hence deadlines, only work in the main thread).
    """
    response = _check_response(response)
    golds = normalize_gold(gold)
    if _in_main_thread():
        return grade_in_process(response, golds, timeout, require_boxed)
    r = shared_pool().grade([response], [golds], timeout=timeout, require_boxed=require_boxed)
    return r.correct[0], r.extracted[0], r.timeouts > 0


def grade(response: str, gold: Gold, *, timeout: float = DEFAULT_TIMEOUT, require_boxed: bool = False) -> bool:
    """Whether ``response``'s final answer equals ``gold`` (or one of a list of acceptable answers).

    >>> grade(r"... so the answer is $\\boxed{25}$.", "025")
    True

    Never raises on a bad response (wrong answer instead); raises ValueError on an unusable gold
    (empty, None, NaN). A timeout (``timeout`` seconds for the whole grade) is wrong and logged.
    """
    return grade_detailed(response, gold, timeout=timeout, require_boxed=require_boxed)[0]


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[Gold],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
    require_boxed: bool = False,
) -> GradeResult:
    """Grade ``responses[i]`` against ``golds[i]`` in parallel worker processes.

    Args:
      responses: N model responses.
      golds: N gold answers (each a string, number or list of acceptable answers).
      timeout: seconds per response (soft deadline in the worker; the worker is killed and replaced if it
        is still busy at ``2 * timeout + 1`` s).
      workers: worker processes (default ``min(8, os.cpu_count())``); the pool is created on first use and
        kept for later calls. ``workers=0`` grades in this process (main thread only, soft deadlines).
      require_boxed: when True a response without ``\\boxed{}`` is wrong (no fallback extraction).
    """
    if len(responses) != len(golds):
        raise ValueError(f"grade_batch got {len(responses)} responses but {len(golds)} golds; pass one gold per response")
    norm = []
    for i, g in enumerate(golds):
        try:
            norm.append(normalize_gold(g))
        except ValueError as e:
            raise ValueError(f"golds[{i}]: {e}") from None
    responses = [_check_response(r) for r in responses]
    if workers == 0:
        if not _in_main_thread():
            raise RuntimeError("grade_batch(workers=0) grades in-process and needs the main thread; use workers>=1")
        out = [grade_in_process(r, g, timeout, require_boxed) for r, g in zip(responses, norm)]
        return GradeResult(
            correct=[o[0] for o in out],
            extracted=[o[1] for o in out],
            timeouts=sum(o[2] for o in out),
            timed_out=[o[2] for o in out],
        )
    return default_pool(workers).grade(responses, norm, timeout=timeout, require_boxed=require_boxed)


def answers_equivalent(a: str, b: str, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether two extracted answers are mathematically equivalent (for grouping votes).

    Symmetric: true if math-verify accepts either one as the gold for the other. Empty, over-long or
    timed-out comparisons are False.
    """
    if a is None or b is None:
        return False
    a, b = _check_response(a), _check_response(b)
    if _in_main_thread():
        return equivalent_in_process(a, b, timeout)[0]
    return shared_pool().equivalent([(a, b)], timeout=timeout)[0]


def equivalence_classes(answers: Sequence[str | None], *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """Group answers by :func:`answers_equivalent`: ``labels[i]`` is the index of answer i's class.

    Each answer joins the first earlier class whose representative (first member) it equals, so
    labels are deterministic; None answers each get their own class. Identical strings are compared
    once. Cost: O(N * classes) comparisons.
    """
    labels: list[int] = []
    reps: list[tuple[str, int]] = []  # (representative answer, class label)
    by_string: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            labels.append(i)
            continue
        key = a.strip()
        if key in by_string:
            labels.append(by_string[key])
            continue
        label = i
        for rep, rep_label in reps:
            if answers_equivalent(rep, key, timeout=timeout):
                label = rep_label
                break
        else:
            reps.append((key, i))
        by_string[key] = label
        labels.append(label)
    return labels
