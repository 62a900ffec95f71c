"""pass@k, mean@k, answer clustering, majority vote and perplexity consistency."""

import collections
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capojax import metrics

N = 8


def _exact_pass_at_k(n, c, k):
    """The defining formula with exact integer binomials."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, N), st.integers(0, N)), min_size=1, max_size=6), st.sampled_from([1, 2, 4, 8]))
def test_pass_at_k_matches_binomial_formula_with_padding(rows, k):
    correct = np.zeros((len(rows), N), bool)
    mask = np.zeros((len(rows), N), bool)
    expected = []
    for b, (n, c) in enumerate(rows):
        c = min(c, n)
        mask[b, :n] = True
        correct[b, :c] = True
        correct[b, n:] = True  # padding marked correct must not count
        expected.append(_exact_pass_at_k(n, c, k) if n >= k else np.nan)
    got = np.asarray(metrics.pass_at_k(correct, k, mask))
    np.testing.assert_allclose(got, np.array(expected), rtol=0, atol=1e-6)


def test_pass_at_k_hand_computed_and_bad_k():
    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_allclose(np.asarray(metrics.pass_at_k(correct, 1)), [0.25, 0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(metrics.pass_at_k(correct, 2)), [0.5, 0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(metrics.pass_at_k(correct, 4)), [1.0, 0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(metrics.mean_at_k(correct)), [0.25, 0.0, 1.0], atol=1e-7)
    with pytest.raises(ValueError, match="1 <= k <= N"):
        metrics.pass_at_k(correct, 5)


def test_pass_at_1_equals_mean_at_k():
    rng = np.random.default_rng(1)
    correct = rng.random((16, N)) < 0.4
    mask = rng.random((16, N)) < 0.8
    mask[:, 0] = True
    np.testing.assert_allclose(
        np.asarray(metrics.pass_at_k(correct, 1, mask)), np.asarray(metrics.mean_at_k(correct, mask)), atol=1e-6
    )


def test_cluster_answers_uses_equivalence_and_first_appearance_order():
    calls = []

    def equivalent(a, b):
        calls.append((a, b))
        canon = {"1/2": 0.5, "0.5": 0.5, "\\frac{1}{2}": 0.5, "3": 3.0, "3.0": 3.0, "7": 7.0}
        return canon.get(a, a) == canon.get(b, b)

    answers = [["3", "1/2", None, "0.5", " 3 ", "\\frac{1}{2}", "", "7"], ["x"]]
    ids = metrics.cluster_answers(answers, equivalent=equivalent)
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    np.testing.assert_array_equal(ids[0], [0, 1, -1, 1, 0, 1, -1, 2])
    np.testing.assert_array_equal(ids[1], [0, -1, -1, -1, -1, -1, -1, -1])
    # " 3 " is the same string as "3" after stripping: no checker call; each new string meets each cluster once.
    assert ("3", "3") not in calls and len(calls) == len(set(calls))


def _reference_vote(answers, weights, correct):
    scores = collections.OrderedDict()
    for a, w in zip(answers, weights):
        if a >= 0:
            scores[a] = scores.get(a, 0.0) + w
    if not scores:
        return False
    best = max(scores.values())
    winner = next(a for a, s in scores.items() if s == best)  # first appearance wins ties
    return bool(correct[list(answers).index(winner)])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 3), min_size=N, max_size=N), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_votes_match_python_reference(raw, seed):
    # Relabel to first-appearance order, as cluster_answers produces.
    ids = np.full((len(raw), N), -1, np.int32)
    for b, row in enumerate(raw):
        order = {}
        for j, a in enumerate(row):
            if a >= 0:
                ids[b, j] = order.setdefault(a, len(order))
    rng = np.random.default_rng(seed)
    # Correctness is a property of the answer cluster, as for real graded answers.
    cluster_correct = rng.random((len(raw), N)) < 0.5
    correct = np.where(ids >= 0, np.take_along_axis(cluster_correct, np.maximum(ids, 0), 1), False)
    lpm = np.log(rng.uniform(0.05, 1.0, (len(raw), N))).astype(np.float32)
    maj = np.asarray(metrics.majority_vote(ids, correct))
    pc = np.asarray(metrics.perplexity_consistency(ids, lpm, correct))
    for b in range(len(raw)):
        assert maj[b] == _reference_vote(ids[b], np.ones(N), correct[b])
        assert pc[b] == _reference_vote(ids[b], np.exp(lpm[b].astype(np.float64)), correct[b])


def test_perplexity_consistency_hand_computed():
    # Answer A (wrong) appears 3 times with low confidence, answer B (right) twice with high confidence.
    ids = np.array([[0, 0, 0, 1, 1]], np.int32)
    correct = np.array([[False, False, False, True, True]])
    lpm = np.log(np.array([[0.1, 0.2, 0.1, 0.9, 0.8]], np.float32))
    assert not bool(metrics.majority_vote(ids, correct)[0])  # 3 votes vs 2
    assert bool(metrics.perplexity_consistency(ids, lpm, correct)[0])  # 0.4 vs 1.7
    assert int(metrics.vote(ids, np.exp(lpm))[0]) == 3  # first sample of the winning answer
    # Equal lpm reduces to the majority vote; masking the three A samples makes B win the majority vote too.
    assert not bool(metrics.perplexity_consistency(ids, np.zeros_like(lpm), correct)[0])
    mask = np.array([[False, False, False, True, True]])
    assert bool(metrics.majority_vote(ids, correct, mask)[0])
    # Nobody answered: wrong, and the vote reports -1.
    none = np.full((1, 5), -1, np.int32)
    assert not bool(metrics.majority_vote(none, np.ones((1, 5), bool))[0])
    assert int(metrics.vote(none, np.ones((1, 5), np.float32))[0]) == -1


def test_summaries():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)
    ids = np.array([[0, 1, 1, 2], [0, 0, 0, 1]], np.int32)
    lpm = np.log(np.array([[0.9, 0.1, 0.1, 0.5], [0.5, 0.5, 0.5, 0.9]], np.float32))
    s = metrics.scaling_summary(correct, ids, lpm)
    assert list(s) == ["mean@4", "pass@1", "pass@2", "pass@4", "majority@4", "perplexity_consistency@4"]
    np.testing.assert_allclose(s["mean@4"], (0.25 + 0.75) / 2, atol=1e-6)
    np.testing.assert_allclose(s["pass@2"], (0.5 + 1.0) / 2, atol=1e-6)
    assert s["majority@4"] == 0.5 and s["perplexity_consistency@4"] == 1.0
    conf = np.exp(lpm)
    c = metrics.calibration_summary(conf, correct)
    assert c["n"] == 8 and 0 <= c["ece"] <= 1 and 0 <= c["pce"] <= c["ece"] + 1e-7
    np.testing.assert_allclose(c["auroc"], float(metrics.auroc(conf, correct)), atol=1e-7)
    assert metrics.powers_of_two_upto(6) == [1, 2, 4] and metrics.powers_of_two_upto(1) == [1]
