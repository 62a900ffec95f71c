"""Inference-time scaling over N sampled answers per problem: pass@k, mean@k, majority vote, perplexity consistency.

Shapes: `B` problems, `N` samples per problem. The array functions are pure `jax.numpy` and work under `jax.jit`;
they return one value per problem, so callers average them (`jnp.nanmean`) or keep them per problem.

Voting needs to know which sampled answers are *the same answer*: "1/2", "0.5" and "\\frac{1}{2}" are one vote.
That judgement calls a symbolic checker (math-verify) and cannot run under jit, so it happens once on the host in
`cluster_answers`, which turns the answers into integer cluster ids `i32[B,N]` (-1 = no answer). The jittable vote
functions then only sum weights per cluster id.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "pass_at_k",
    "mean_at_k",
    "cluster_answers",
    "vote",
    "majority_vote",
    "perplexity_consistency",
]


def _valid(correct: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(jnp.shape(correct), bool)
    return jnp.asarray(mask, bool)


@functools.partial(jax.jit, static_argnames=("k",))
def pass_at_k(correct: jax.Array, k: int, mask: jax.Array | None = None) -> jax.Array:
    """Unbiased pass@k per problem (Chen et al. 2021): `1 - C(n-c, k) / C(n, k)`.

    correct bool[B,N], mask bool[B,N] | None -> f32[B]; `n` = valid samples of a problem, `c` = valid correct ones.
    Problems with fewer than k valid samples get NaN (the estimator is undefined there).
    Evaluated as the numerically stable product `1 - prod_{i=n-c+1}^{n} (1 - k/i)`, exact in float32 for any N.
    """
    correct = jnp.asarray(correct, bool)
    if correct.ndim != 2:
        raise ValueError(f"pass_at_k expects correct bool[B,N], got shape {correct.shape}")
    if not 1 <= k <= correct.shape[1]:
        raise ValueError(f"pass@k needs 1 <= k <= N = {correct.shape[1]} samples per problem, got k={k}")
    valid = _valid(correct, mask)
    n = jnp.sum(valid, axis=1, keepdims=True)  # [B,1]
    c = jnp.sum(valid & correct, axis=1, keepdims=True)
    i = jnp.arange(1, correct.shape[1] + 1, dtype=jnp.float32)[None, :]  # [1,N]
    in_range = (i > (n - c)) & (i <= n)
    terms = jnp.where(in_range, 1.0 - k / i, 1.0)
    value = 1.0 - jnp.prod(terms, axis=1)
    return jnp.where(n[:, 0] >= k, value, jnp.nan)


@jax.jit
def mean_at_k(correct: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """mean@k per problem: the fraction of a problem's k valid samples that are correct (the unbiased pass@1).

    correct bool[B,N], mask bool[B,N] | None -> f32[B] (NaN for a problem without valid samples).
    """
    correct = jnp.asarray(correct, bool)
    valid = _valid(correct, mask)
    n = jnp.sum(valid, axis=-1)
    c = jnp.sum(valid & correct, axis=-1)
    return jnp.where(n > 0, c / jnp.maximum(n, 1), jnp.nan)


def cluster_answers(
    answers: Sequence[Sequence[str | None]],
    *,
    equivalent: Callable[[str, str], bool] | None = None,
) -> np.ndarray:
    """Groups each problem's answers by mathematical equivalence (host only) -> i32[B,N].

    answers: B lists of extracted answers (None = the sample gave no answer); shorter rows are padded with -1.
    Ids are 0, 1, ... in order of first appearance within a row; -1 marks no answer. `equivalent(a, b)` defaults to
    `capojax.rewards.answers_equivalent` (math-verify). Identical strings (after stripping whitespace) are merged
    without calling it, and each new distinct string is compared only with one representative per cluster, so the
    cost is O(distinct^2) checker calls per problem.
    """
    if equivalent is None:
        from capojax.rewards import answers_equivalent as equivalent  # deferred: math-verify is heavy to import
    width = max((len(row) for row in answers), default=0)
    ids = np.full((len(answers), width), -1, dtype=np.int32)
    for b, row in enumerate(answers):
        representatives: list[str] = []  # one answer string per cluster
        by_string: dict[str, int] = {}
        for j, answer in enumerate(row):
            if answer is None:
                continue
            key = str(answer).strip()
            if not key:
                continue
            if key not in by_string:
                match = next((cid for cid, rep in enumerate(representatives) if equivalent(rep, key)), None)
                if match is None:
                    match = len(representatives)
                    representatives.append(key)
                by_string[key] = match
            ids[b, j] = by_string[key]
    return ids


@jax.jit
def vote(cluster_ids: jax.Array, weights: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Weighted vote: the index of a sample whose answer wins, per problem -> i32[B] (-1 when no sample answered).

    cluster_ids i32[B,N] from `cluster_answers` (-1 = no answer), weights f32[B,N] (>= 0), mask bool[B,N] | None.
    Each answer cluster scores the sum of its samples' weights; the highest score wins, ties going to the answer
    that appeared first. The returned sample is the first member of the winning cluster.
    """
    cluster_ids = jnp.asarray(cluster_ids, jnp.int32)
    weights = jnp.asarray(weights, jnp.float32)
    n = cluster_ids.shape[-1]
    valid = _valid(cluster_ids, mask) & (cluster_ids >= 0) & ~jnp.isnan(weights)
    candidates = jnp.arange(n, dtype=jnp.int32)  # cluster ids are < N: at most one new cluster per sample
    member = valid[:, None, :] & (cluster_ids[:, None, :] == candidates[None, :, None])  # [B, C, N]
    score = jnp.sum(jnp.where(member, weights[:, None, :], 0.0), axis=-1)  # [B, C]
    score = jnp.where(jnp.any(member, axis=-1), score, -jnp.inf)  # empty clusters never win
    winner = jnp.argmax(score, axis=-1)  # first maximum = earliest-appearing answer on ties
    first_member = jnp.argmax(member, axis=-1)  # [B, C] first sample of each cluster
    sample = jnp.take_along_axis(first_member, winner[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(jnp.any(valid, axis=-1), sample, -1)


def _voted_correct(sample: jax.Array, correct: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(jnp.asarray(correct, bool), jnp.maximum(sample, 0)[:, None], axis=-1)[:, 0]
    return picked & (sample >= 0)


@jax.jit
def majority_vote(cluster_ids: jax.Array, correct: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """majority@N per problem: is the most frequent answer correct? -> bool[B] (False when nobody answered).

    cluster_ids i32[B,N], correct bool[B,N], mask bool[B,N] | None. The winner's correctness is that of its first
    sample (equivalent answers grade alike).
    """
    sample = vote(cluster_ids, jnp.ones(jnp.shape(cluster_ids), jnp.float32), mask)
    return _voted_correct(sample, correct)


@jax.jit
def perplexity_consistency(
    cluster_ids: jax.Array, lpm: jax.Array, correct: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Perplexity consistency per problem: each distinct answer scores `sum exp(lpm)` over the samples giving it;
    is the top-scoring answer correct? -> bool[B].

    cluster_ids i32[B,N], lpm f32[B,N] (mean token log-prob of each sample), correct bool[B,N], mask bool[B,N] | None.
    With all lpm equal this is exactly the majority vote; a confident (low-perplexity) sample weighs more.
    """
    sample = vote(cluster_ids, jnp.exp(jnp.asarray(lpm, jnp.float32)), mask)
    return _voted_correct(sample, correct)
