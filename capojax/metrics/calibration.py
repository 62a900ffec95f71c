"""Calibration and ranking metrics: does a model's confidence rank and match its own correctness?

Every function is pure `jax.numpy`, works under `jax.jit` (bin counts and `k` are static Python ints) and accepts
numpy arrays. Conventions shared by all of them:

- `conf` / `scores`: a confidence in [0, 1] (ECE, PCE, Brier, reliability) or any real score (AUROC, coverage).
  Two views are used in capojax: the *perplexity view* `conf = exp(lpm)` (the geometric-mean token probability
  of the completion, see `perplexity_confidence`) and the *DCPO view* (the confidence the model states).
- `correct` / `labels`: bool, True for a correct answer.
- `mask`: optional bool of the same shape, False on padding. A NaN score or confidence is also treated as masked
  out: capojax writes NaN for "no confidence" (an unparsed DCPO line), and such a sample has nothing to rank.
- An empty selection (no valid samples, or a single class for AUROC) gives NaN, never an exception, so these run
  inside jitted training steps. Callers on the host turn NaN into "not defined" when reporting.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "auroc",
    "auc_per_prompt",
    "auc_mean",
    "brier",
    "ece",
    "pce",
    "reliability_diagram",
    "ReliabilityDiagram",
    "precision_coverage",
    "PrecisionCoverage",
    "perplexity_confidence",
]


def _valid(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """bool[...]: entries that take part (mask True and value not NaN)."""
    x = jnp.asarray(x)
    valid = ~jnp.isnan(x)
    if mask is not None:
        valid = valid & jnp.asarray(mask, dtype=bool)
    return valid


def perplexity_confidence(lpm: jax.Array) -> jax.Array:
    """The perplexity view of confidence: `exp(lpm) = 1 / PPL`, in (0, 1].

    lpm f32[...] is the mean token log-prob of a completion (<= 0); the result is the geometric mean of its
    token probabilities. Monotone in lpm, so AUROC is the same for either; ECE/PCE/Brier need the [0, 1] scale.
    """
    return jnp.exp(jnp.asarray(lpm, jnp.float32))


# ----------------------------------------------------------------------------------------------------------
# Ranking: AUROC
# ----------------------------------------------------------------------------------------------------------


@jax.jit
def auroc(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Pooled AUROC of `scores` for separating `labels` True (positive) from False.

    scores f32[...], labels bool[...], mask bool[...] | None -> f32[].

    The probability that a random positive scores above a random negative, ties counting 1/2 (the Mann-Whitney
    statistic; equal to sklearn's `roc_auc_score`). NaN when the valid entries hold only one class.
    Cost O(n log n): the negatives are sorted once and every positive counts, by binary search, the negatives
    strictly below it and those equal to it.
    """
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    labels = jnp.asarray(labels, bool).reshape(-1)
    valid = _valid(scores, None if mask is None else jnp.asarray(mask).reshape(-1))
    pos = valid & labels
    neg = valid & ~labels
    n_pos = jnp.sum(pos)
    n_neg = jnp.sum(neg)
    # Non-negatives sort to the end as +inf; a positive at +inf would count them as "equal", so its equal-count
    # is capped at n_neg below (real +inf negatives come first among the +inf block in number, not identity).
    neg_sorted = jnp.sort(jnp.where(neg, scores, jnp.inf))
    below = jnp.searchsorted(neg_sorted, scores, side="left")
    at_or_below = jnp.minimum(jnp.searchsorted(neg_sorted, scores, side="right"), n_neg)
    wins = below.astype(jnp.float32) + 0.5 * (at_or_below - below).astype(jnp.float32)
    # Average per positive first (each term <= 1) so that float32 keeps full precision for large n.
    per_pos = wins / jnp.maximum(n_neg, 1).astype(jnp.float32)
    value = jnp.sum(jnp.where(pos, per_pos, 0.0)) / jnp.maximum(n_pos, 1).astype(jnp.float32)
    return jnp.where((n_pos > 0) & (n_neg > 0), value, jnp.nan)


@jax.jit
def auc_per_prompt(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """AUROC inside each prompt's N samples: f32[B,N], bool[B,N], bool[B,N] | None -> f32[B] (NaN: one class)."""
    scores = jnp.asarray(scores, jnp.float32)
    labels = jnp.asarray(labels, bool)
    if scores.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(
            f"auc_per_prompt expects scores f32[B,N] and labels bool[B,N] of the same shape, got "
            f"{scores.shape} and {labels.shape}"
        )
    if mask is None:
        mask = jnp.ones(scores.shape, bool)
    return jax.vmap(auroc)(scores, labels, jnp.asarray(mask, bool))


@jax.jit
def auc_mean(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """CAPO's AUC-mean: the per-prompt AUROC averaged over the prompts whose valid samples hold both classes.

    scores f32[B,N], labels bool[B,N], mask bool[B,N] | None -> f32[] (NaN when no prompt has both classes).
    """
    per_prompt = auc_per_prompt(scores, labels, mask)
    defined = ~jnp.isnan(per_prompt)
    total = jnp.sum(jnp.where(defined, per_prompt, 0.0))
    count = jnp.sum(defined)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


# ----------------------------------------------------------------------------------------------------------
# Calibration: reliability diagram, ECE, PCE, Brier
# ----------------------------------------------------------------------------------------------------------


# Float32 carries ~7 significant digits: a stated 0.85 is off its edge by ~2e-8, i.e. ~5e-7 bin widths at 20 bins.
# 1e-4 bin widths absorbs that (and float16-rounded inputs' 1e-3 relative error at coarse bins) while no distinct
# stated confidence (2-3 decimals) lies that close to an edge it does not sit on.
_EDGE_TOL = 1e-4


def _right_closed_bin(conf: jax.Array, n_bins: int) -> jax.Array:
    """i32[...]: the bin (i/n, (i+1)/n] of each confidence f32[...], edge values snapped onto their edge first."""
    scaled = conf * n_bins
    nearest = jnp.round(scaled)
    scaled = jnp.where(jnp.abs(scaled - nearest) <= _EDGE_TOL, nearest, scaled)
    return jnp.clip(jnp.ceil(scaled).astype(jnp.int32) - 1, 0, n_bins - 1)


class ReliabilityDiagram(NamedTuple):
    """Per-bin statistics over `n_bins` equal-width bins of [0, 1], closed on the right: (lo, hi].

    edges f32[n_bins+1]; count f32[n_bins] (valid samples per bin); confidence f32[n_bins] (mean confidence of
    the bin, NaN when empty); accuracy f32[n_bins] (fraction correct, NaN when empty); total f32[] (valid samples).
    """

    edges: jax.Array
    count: jax.Array
    confidence: jax.Array
    accuracy: jax.Array
    total: jax.Array


@functools.partial(jax.jit, static_argnames=("n_bins",))
def reliability_diagram(
    conf: jax.Array, correct: jax.Array, mask: jax.Array | None = None, *, n_bins: int = 20
) -> ReliabilityDiagram:
    """Bins conf f32[...] into `n_bins` equal-width bins closed on the right, (i/n, (i+1)/n] (the first bin also
    holds 0.0), as DCPO's evaluation code does.

    Stated confidences sit on multiples of 0.05, exactly on the edges, so the edge test must not depend on how the
    number arrived: 0.85 as float32 is 0.8500000238 and would otherwise fall into (0.85, 0.9]. A confidence within
    `_EDGE_TOL` bin widths of an edge counts as on the edge, so 0.85 lands in (0.8, 0.85] in float32 and float64.
    Confidences outside [0, 1] are clipped into the first/last bin (their mean confidence is kept unclipped).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = jnp.asarray(conf, jnp.float32).reshape(-1)
    correct = jnp.asarray(correct, bool).reshape(-1)
    valid = _valid(conf, None if mask is None else jnp.asarray(mask).reshape(-1))
    safe_conf = jnp.where(valid, conf, 0.0)
    idx = _right_closed_bin(safe_conf, n_bins)
    weights = valid.astype(jnp.float32)
    count = jax.ops.segment_sum(weights, idx, num_segments=n_bins)
    conf_sum = jax.ops.segment_sum(weights * safe_conf, idx, num_segments=n_bins)
    correct_sum = jax.ops.segment_sum(weights * correct.astype(jnp.float32), idx, num_segments=n_bins)
    nonempty = count > 0
    denom = jnp.maximum(count, 1.0)
    return ReliabilityDiagram(
        edges=jnp.linspace(0.0, 1.0, n_bins + 1, dtype=jnp.float32),
        count=count,
        confidence=jnp.where(nonempty, conf_sum / denom, jnp.nan),
        accuracy=jnp.where(nonempty, correct_sum / denom, jnp.nan),
        total=jnp.sum(weights),
    )


def _binned_gap(diagram: ReliabilityDiagram, *, over_only: bool) -> jax.Array:
    gap = diagram.confidence - diagram.accuracy
    gap = jnp.maximum(gap, 0.0) if over_only else jnp.abs(gap)
    gap = jnp.where(diagram.count > 0, gap, 0.0)
    value = jnp.sum(diagram.count * gap) / jnp.maximum(diagram.total, 1.0)
    return jnp.where(diagram.total > 0, value, jnp.nan)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def ece(conf: jax.Array, correct: jax.Array, mask: jax.Array | None = None, *, n_bins: int = 20) -> jax.Array:
    """Expected calibration error: `sum_b (n_b / n) |mean_conf_b - acc_b|` over equal-width bins -> f32[]."""
    return _binned_gap(reliability_diagram(conf, correct, mask, n_bins=n_bins), over_only=False)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def pce(conf: jax.Array, correct: jax.Array, mask: jax.Array | None = None, *, n_bins: int = 20) -> jax.Array:
    """Positive (over-confidence) calibration error: like `ece`, but a bin counts only when its mean confidence
    exceeds its accuracy, `sum_b (n_b / n) max(mean_conf_b - acc_b, 0)` -> f32[]. Always `0 <= pce <= ece`."""
    return _binned_gap(reliability_diagram(conf, correct, mask, n_bins=n_bins), over_only=True)


@jax.jit
def brier(conf: jax.Array, correct: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Brier score `mean (conf - correct)^2` over the valid samples -> f32[] (NaN when none)."""
    conf = jnp.asarray(conf, jnp.float32)
    target = jnp.asarray(correct, bool).astype(jnp.float32)
    valid = _valid(conf, mask)
    sq = jnp.where(valid, (conf - target) ** 2, 0.0)
    n = jnp.sum(valid)
    return jnp.where(n > 0, jnp.sum(sq) / jnp.maximum(n, 1), jnp.nan)


# ----------------------------------------------------------------------------------------------------------
# Selective prediction: precision-coverage
# ----------------------------------------------------------------------------------------------------------


class PrecisionCoverage(NamedTuple):
    """The precision of the most confident samples as more of them are kept.

    Row `k` (0-based, after sorting by descending confidence) keeps the `k+1` most confident valid samples:
    coverage f32[n] = (k+1) / n_valid; precision f32[n] = expected fraction correct among them; valid bool[n]
    (False for rows past n_valid, whose coverage/precision are NaN); area f32[] = mean precision over the valid
    rows, i.e. the area under the step curve precision(coverage) (1.0 for a perfect ranker at full accuracy,
    the accuracy itself for an uninformative one).
    """

    coverage: jax.Array
    precision: jax.Array
    valid: jax.Array
    area: jax.Array


@jax.jit
def precision_coverage(conf: jax.Array, correct: jax.Array, mask: jax.Array | None = None) -> PrecisionCoverage:
    """Precision-coverage curve and its area; conf f32[...], correct bool[...] are flattened (n entries).

    Ties in confidence are broken *in expectation* (the same rule that makes AUROC count ties 1/2): inside a
    block of equal confidences the correct ones are spread uniformly, so the result does not depend on the
    input order.
    """
    conf = jnp.asarray(conf, jnp.float32).reshape(-1)
    correct = jnp.asarray(correct, bool).reshape(-1)
    valid = _valid(conf, None if mask is None else jnp.asarray(mask).reshape(-1))
    n = conf.shape[0]
    # Valid entries first, by descending confidence (lexsort: the last key is the primary key).
    order = jnp.lexsort((-jnp.where(valid, conf, 0.0), ~valid))
    c = conf[order]
    y = (correct[order] & valid[order]).astype(jnp.float32)
    v = valid[order]
    n_valid = jnp.sum(v)
    idx = jnp.arange(n)
    # A tie block starts where the confidence (or validity) changes.
    starts = jnp.concatenate([jnp.ones((1,), bool), (c[1:] != c[:-1]) | (v[1:] != v[:-1])]) if n else jnp.ones((0,), bool)
    block = jnp.cumsum(starts) - 1
    block_start = jax.lax.cummax(jnp.where(starts, idx, 0), axis=0)
    block_size = jax.ops.segment_sum(jnp.ones(n, jnp.float32), block, num_segments=n)[block]
    block_correct = jax.ops.segment_sum(y, block, num_segments=n)[block]
    before = (jnp.cumsum(y) - y)[block_start]  # correct samples strictly before the block
    kept = (idx + 1).astype(jnp.float32)
    expected_correct = before + (kept - block_start) * block_correct / block_size
    precision = jnp.where(v, expected_correct / kept, jnp.nan)
    coverage = jnp.where(v, kept / jnp.maximum(n_valid, 1), jnp.nan)
    area = jnp.sum(jnp.where(v, precision, 0.0)) / jnp.maximum(n_valid, 1)
    return PrecisionCoverage(
        coverage=coverage, precision=precision, valid=v, area=jnp.where(n_valid > 0, area, jnp.nan)
    )
