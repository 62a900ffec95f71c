"""capojax.metrics.calibration against sklearn, brute-force references and hand-computed cases."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, roc_auc_score

from capojax import metrics

PAD = 48  # every hypothesis case is padded to this length with mask=False, so jit compiles once per function


def _padded(values, labels, fill=0.0):
    n = len(values)
    scores = np.full(PAD, fill, np.float32)
    scores[:n] = values
    y = np.zeros(PAD, bool)
    y[:n] = labels
    mask = np.arange(PAD) < n
    return scores, y, mask


# Scores drawn from a small grid so that ties are common.
_case = st.integers(1, PAD).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6).map(lambda v: v / 6), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(_case)
def test_auroc_matches_sklearn_with_ties_and_padding(case):
    values, labels = case
    scores, y, mask = _padded(values, labels, fill=99.0)  # padding scores would dominate if not masked
    got = float(metrics.auroc(scores, y, mask))
    if len(set(labels)) < 2:
        assert np.isnan(got)
    else:
        np.testing.assert_allclose(got, roc_auc_score(labels, values), rtol=0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(_case)
def test_brier_matches_sklearn(case):
    values, labels = case
    conf, y, mask = _padded(values, labels, fill=0.5)
    np.testing.assert_allclose(
        float(metrics.brier(conf, y, mask)), brier_score_loss(labels, values), rtol=0, atol=1e-6
    )


def _ece_reference(conf, correct, n_bins, over_only=False):
    """Loop over bins (i/n, (i+1)/n] (DCPO's evaluation code) with 0.0 in the first bin."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, np.float64)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = ((conf > lo) if b > 0 else (conf >= lo)) & (conf <= hi)
        if sel.any():
            gap = conf[sel].mean() - correct[sel].mean()
            total += sel.sum() * (max(gap, 0.0) if over_only else abs(gap))
    return total / len(conf)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, PAD).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )
)
def test_ece_pce_match_loop_reference(case):
    values, labels = case
    # Values within 1e-4 bin widths of an edge are put exactly on it (float32 noise is not a different bin).
    values = [v if abs(v * 20 - round(v * 20)) > 1e-4 else round(v * 20) / 20 for v in values]
    conf, y, mask = _padded(values, labels, fill=1.0)
    got_ece = float(metrics.ece(conf, y, mask))
    got_pce = float(metrics.pce(conf, y, mask))
    np.testing.assert_allclose(got_ece, _ece_reference(values, labels, 20), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_pce, _ece_reference(values, labels, 20, over_only=True), rtol=0, atol=1e-5)
    assert -1e-7 <= got_pce <= got_ece + 1e-7


def test_ece_pce_hand_computed():
    # Bin [0.9, 0.95): conf 0.9, 0.9 with 1 of 2 correct -> gap +0.4 (over-confident), weight 2/4.
    # Bin [0.2, 0.25): conf 0.2, 0.2 with 2 of 2 correct -> gap -0.8 (under-confident), weight 2/4.
    conf = np.array([0.9, 0.9, 0.2, 0.2], np.float32)
    correct = np.array([True, False, True, True])
    np.testing.assert_allclose(float(metrics.ece(conf, correct)), 0.5 * 0.4 + 0.5 * 0.8, atol=1e-6)
    np.testing.assert_allclose(float(metrics.pce(conf, correct)), 0.5 * 0.4, atol=1e-6)
    # A bin whose mean confidence equals its accuracy contributes 0: conf 0.5 with 1 of 2 correct,
    # next to the over-confident 0.9 bin above (weights 2/6 and 4/6 -> 4/6 * 0.4 for both ECE and PCE).
    conf = np.array([0.5, 0.5, 0.9, 0.9, 0.9, 0.9], np.float32)
    correct = np.array([True, False, True, False, True, False])
    np.testing.assert_allclose(float(metrics.ece(conf, correct)), 4 / 6 * 0.4, atol=1e-6)
    np.testing.assert_allclose(float(metrics.pce(conf, correct)), 4 / 6 * 0.4, atol=1e-6)


def _stated_ece_reference(hundredths, correct, n_bins, over_only=False):
    """Independent float64 reference for confidences k/100 stated in the text: each bin index comes from exact
    integer arithmetic (k/100 in (b/n, (b+1)/n]  <=>  b = ceil(k n / 100) - 1), not from a float comparison."""
    conf = np.asarray(hundredths, np.float64) / 100
    correct = np.asarray(correct, np.float64)
    bins = np.array([max(-(-k * n_bins // 100) - 1, 0) for k in hundredths])
    total = 0.0
    for b in set(bins.tolist()):
        sel = bins == b
        gap = conf[sel].mean() - correct[sel].mean()
        total += sel.sum() * (max(gap, 0.0) if over_only else abs(gap))
    return total / len(conf)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, PAD).flatmap(
        lambda n: st.tuples(
            st.lists(st.one_of(st.integers(0, 20).map(lambda k: 5 * k), st.integers(0, 100)), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.sampled_from([20, 10]),
        )
    )
)
def test_stated_confidences_on_bin_edges_bin_alike_in_float32_and_float64(case):
    """DCPO's stated confidences sit on multiples of 0.05, exactly on the edges of 20 bins. 0.85 as float32 is
    0.8500000238: it must still land in (0.8, 0.85], the bin its float64 value and the text say."""
    hundredths, labels, n_bins = case
    want_ece = _stated_ece_reference(hundredths, labels, n_bins)
    want_pce = _stated_ece_reference(hundredths, labels, n_bins, over_only=True)
    for dtype in (np.float32, np.float64):
        conf = np.zeros(PAD, dtype)
        conf[: len(hundredths)] = np.asarray(hundredths, np.float64) / 100
        _, y, mask = _padded(np.zeros(len(hundredths)), labels)
        np.testing.assert_allclose(float(metrics.ece(conf, y, mask, n_bins=n_bins)), want_ece, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(metrics.pce(conf, y, mask, n_bins=n_bins)), want_pce, rtol=0, atol=1e-6)


def test_the_audit_case_085_is_in_its_own_bin_as_float32():
    # 0.85 / 0.9 / 0.95 / 1.0 each close their own bin: ECE = mean |c - y| = (0.85 + 0.1 + 0.95 + 0) / 4.
    correct = np.array([False, True, False, True])
    for dtype in (np.float32, np.float64):
        conf = np.array([0.85, 0.9, 0.95, 1.0], dtype)
        np.testing.assert_allclose(float(metrics.ece(conf, correct)), 0.475, atol=1e-6)
        counts = np.asarray(metrics.reliability_diagram(conf, correct).count)
        assert counts[[16, 17, 18, 19]].tolist() == [1, 1, 1, 1]


def test_auroc_hand_computed_and_one_class():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) 1/2, (0.4>0.1) 1 -> 3.5/4
    scores = np.array([0.8, 0.4, 0.4, 0.1], np.float32)
    labels = np.array([True, True, False, False])
    np.testing.assert_allclose(float(metrics.auroc(scores, labels)), 0.875, atol=1e-7)
    assert np.isnan(float(metrics.auroc(scores, np.ones(4, bool))))
    assert np.isnan(float(metrics.auroc(scores, np.zeros(4, bool))))
    # Infinite scores are ordinary scores; NaN scores are excluded like masked ones.
    inf = np.array([np.inf, -np.inf, np.inf, np.nan], np.float32)
    np.testing.assert_allclose(float(metrics.auroc(inf, np.array([True, False, False, False]))), 0.75, atol=1e-7)


def test_auc_mean_averages_prompts_with_both_classes():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.3, 0.3, 0.3], [0.1, 0.2, 0.3]], np.float32)
    labels = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]], bool)
    # row 0: 1 positive above both -> 1.0; row 1: positive below both -> 0.0; row 2: all tied -> 0.5; row 3: one class
    per = np.asarray(metrics.auc_per_prompt(scores, labels))
    np.testing.assert_allclose(per[:3], [1.0, 0.0, 0.5], atol=1e-7)
    assert np.isnan(per[3])
    np.testing.assert_allclose(float(metrics.auc_mean(scores, labels)), 0.5, atol=1e-7)
    assert np.isnan(float(metrics.auc_mean(scores[3:], labels[3:])))
    # The mask drops the second sample of row 0 (its only negative besides 0.5) and all of row 1.
    mask = np.ones_like(labels)
    mask[0, 1] = False
    mask[1] = False
    np.testing.assert_allclose(float(metrics.auc_mean(scores, labels, mask)), (1.0 + 0.5) / 2, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=7))
def test_precision_coverage_equals_average_over_tie_orders(pairs):
    values = np.array([p[0] / 3 for p in pairs], np.float32)
    labels = np.array([p[1] for p in pairs])
    n = len(pairs)
    conf, y, mask = _padded(values, labels, fill=1.0)
    got = metrics.precision_coverage(conf, y, mask)
    # Reference: every ordering consistent with descending confidence (ties permuted), averaged.
    curves = []
    for perm in itertools.permutations(range(n)):
        if all(values[perm[i]] >= values[perm[i + 1]] for i in range(n - 1)):
            hits = np.cumsum(labels[list(perm)])
            curves.append(hits / np.arange(1, n + 1))
    expected = np.mean(curves, axis=0)
    np.testing.assert_allclose(np.asarray(got.precision)[:n], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.coverage)[:n], np.arange(1, n + 1) / n, atol=1e-7)
    assert np.all(np.isnan(np.asarray(got.precision)[n:])) and not np.any(np.asarray(got.valid)[n:])
    np.testing.assert_allclose(float(got.area), expected.mean(), atol=1e-6)


def test_precision_coverage_hand_computed():
    conf = np.array([0.1, 0.9, 0.5, 0.7], np.float32)
    correct = np.array([False, True, False, True])
    pc = metrics.precision_coverage(conf, correct)
    np.testing.assert_allclose(np.asarray(pc.precision), [1.0, 1.0, 2 / 3, 0.5], atol=1e-7)
    np.testing.assert_allclose(float(pc.area), (1 + 1 + 2 / 3 + 0.5) / 4, atol=1e-7)


def test_reliability_diagram_bins():
    conf = np.array([0.0, 0.04, 0.05, 0.5, 1.0, 0.99, np.nan], np.float32)
    correct = np.array([0, 1, 1, 0, 1, 0, 1], bool)
    d = metrics.reliability_diagram(conf, correct, n_bins=20)
    count = np.asarray(d.count)
    assert count.sum() == 6 and float(d.total) == 6  # the NaN confidence is excluded
    # Right-closed bins: 0.0, 0.04 and 0.05 share [0, 0.05]; 0.5 closes (0.45, 0.5]; 0.99 and 1.0 share (0.95, 1].
    assert count[0] == 3 and count[9] == 1 and count[19] == 2 and count.sum() == 6
    np.testing.assert_allclose(np.asarray(d.confidence)[19], 0.995, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.accuracy)[[0, 9, 19]], [2 / 3, 0.0, 0.5], atol=1e-7)
    assert np.isnan(np.asarray(d.accuracy)[1]) and np.isnan(np.asarray(d.accuracy)[10])
    np.testing.assert_allclose(np.asarray(d.edges), np.linspace(0, 1, 21), atol=1e-7)


def test_all_masked_gives_nan_not_error():
    conf = np.array([0.3, 0.6], np.float32)
    correct = np.array([True, False])
    mask = np.zeros(2, bool)
    for fn in (metrics.auroc, metrics.brier, metrics.ece, metrics.pce):
        assert np.isnan(float(fn(conf, correct, mask))), fn
    assert np.isnan(float(metrics.precision_coverage(conf, correct, mask).area))


def test_functions_trace_under_an_outer_jit_and_registry():
    rng = np.random.default_rng(0)
    conf = rng.random((4, 8)).astype(np.float32)
    correct = rng.random((4, 8)) < 0.5

    @jax.jit
    def all_metrics(c, y):
        return {name: fn(c, y) for name, fn in metrics.CALIBRATION_METRICS.items()}

    jitted = all_metrics(jnp.asarray(conf), jnp.asarray(correct))
    for name, fn in metrics.CALIBRATION_METRICS.items():
        np.testing.assert_allclose(float(jitted[name]), float(fn(conf, correct)), atol=1e-6, err_msg=name)
    np.testing.assert_allclose(
        float(jitted["auroc"]), roc_auc_score(correct.reshape(-1), conf.reshape(-1)), atol=1e-6
    )


def test_perplexity_confidence_is_exp_lpm():
    lpm = np.array([0.0, -0.5, -3.0], np.float32)
    np.testing.assert_allclose(np.asarray(metrics.perplexity_confidence(lpm)), np.exp(lpm), rtol=1e-6)


def test_auc_per_prompt_rejects_bad_shapes():
    with pytest.raises(ValueError, match="scores f32\\[B,N\\]"):
        metrics.auc_per_prompt(np.zeros(4, np.float32), np.zeros(4, bool))
