"""Shared hypothesis settings, strategies and reference helpers for tests/objectives.

Example counts are kept small (the whole objectives suite must stay well under a minute on 2 shared cores);
shapes are drawn from a handful of values so that jitted variants hit the compilation cache.
Set CAPOJAX_HYPOTHESIS_EXAMPLES to run more examples locally.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

_N = int(os.environ.get("CAPOJAX_HYPOTHESIS_EXAMPLES", "0"))


def fast(max_examples: int = 15) -> settings:
    """Per-test settings: modest example count, no deadline (jit compiles on first use), no on-disk database."""
    return settings(
        max_examples=_N or max_examples,
        deadline=None,
        database=None,
        # filter_too_much: some theorems hold only on a sub-domain (e.g. a misranked group with positive margin)
        # that assume() selects; what is tested is unchanged, generation just discards more draws.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    # bounds rounded to float32 (hypothesis insists on exactly representable bounds for width=32)
    lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo32, hi32, width=32, allow_nan=False, allow_infinity=False)


# Few distinct shapes: every new shape costs a compilation per jitted function (and per primitive when eager).
B = 3
G_VALUES = (1, 2, 5, 8)


@st.composite
def groups(draw, *, g_values=G_VALUES, score_range=3.0, mixed=False):
    """(correct bool[B,G], scores f32[B,G]) with B = 3. mixed=True forces every group to hold both outcomes."""
    g = draw(st.sampled_from([v for v in g_values if v >= 2] if mixed else list(g_values)))
    correct = draw(hnp.arrays(np.bool_, (B, g)))
    if mixed:
        correct[:, 0] = True
        correct[:, 1] = False
        perm = draw(st.permutations(range(g)))
        correct = correct[:, list(perm)]
    scores = draw(hnp.arrays(np.float32, (B, g), elements=f32(-score_range, score_range)))
    return correct, scores


def pair_auc(correct: np.ndarray, scores: np.ndarray) -> float:
    """AUC of one group by definition: P(s_correct > s_wrong) + 1/2 P(tie) over all (correct, wrong) pairs."""
    pos = scores[correct.astype(bool)]
    neg = scores[~correct.astype(bool)]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))
