"""Host-side roll-ups of the metric functions into flat `{name: float}` dicts for logs and summary.json.

NaN (a metric that is not defined for this data, e.g. AUROC with one class) is kept as NaN here; JSON writers
turn it into null.
"""

from __future__ import annotations

import numpy as np

from capojax.metrics import calibration, scaling

__all__ = ["calibration_summary", "scaling_summary", "powers_of_two_upto"]


def powers_of_two_upto(n: int) -> list[int]:
    """[1, 2, 4, ...] up to and including n when n is a power of two."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def calibration_summary(
    conf: np.ndarray, correct: np.ndarray, mask: np.ndarray | None = None, *, n_bins: int = 20
) -> dict[str, float]:
    """AUROC (pooled), AUC-mean (per problem), ECE, PCE, Brier and precision-coverage area of one confidence view.

    conf f32[B,N] in [0, 1] (NaN = no confidence, excluded), correct bool[B,N], mask bool[B,N] | None.
    Also reports `n` (samples that count) and `accuracy` over exactly those samples, so each view is
    read against its own base rate, and `n_mixed`: the prompts whose valid samples hold both classes, the ones
    AUC-mean averages over (it shrinks as prompts become all-right or all-wrong, and AUC-mean gets noisier).
    """
    conf = np.asarray(conf, np.float32)
    correct = np.asarray(correct, bool)
    valid = ~np.isnan(conf) if mask is None else (np.asarray(mask, bool) & ~np.isnan(conf))
    n = int(valid.sum())
    return {
        "n": float(n),
        "accuracy": float(correct[valid].mean()) if n else float("nan"),
        "mean_confidence": float(conf[valid].mean()) if n else float("nan"),
        "auroc": float(calibration.auroc(conf, correct, valid)),
        "auc_mean": float(calibration.auc_mean(conf, correct, valid)),
        "n_mixed": float(np.sum((correct & valid).any(axis=-1) & (~correct & valid).any(axis=-1))),
        "ece": float(calibration.ece(conf, correct, valid, n_bins=n_bins)),
        "pce": float(calibration.pce(conf, correct, valid, n_bins=n_bins)),
        "brier": float(calibration.brier(conf, correct, valid)),
        "aupc": float(calibration.precision_coverage(conf, correct, valid).area),
    }


def scaling_summary(
    correct: np.ndarray, cluster_ids: np.ndarray, lpm: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """mean@N, pass@k for k = 1, 2, 4, ... <= N, majority@N and perplexity_consistency@N, averaged over problems.

    correct bool[B,N], cluster_ids i32[B,N] (from `scaling.cluster_answers`), lpm f32[B,N], mask bool[B,N] | None.
    """
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    out = {f"mean@{n}": float(np.nanmean(np.asarray(scaling.mean_at_k(correct, mask))))}
    for k in powers_of_two_upto(n):
        out[f"pass@{k}"] = float(np.nanmean(np.asarray(scaling.pass_at_k(correct, k, mask))))
    out[f"majority@{n}"] = float(np.mean(np.asarray(scaling.majority_vote(cluster_ids, correct, mask))))
    out[f"perplexity_consistency@{n}"] = float(
        np.mean(np.asarray(scaling.perplexity_consistency(cluster_ids, lpm, correct, mask)))
    )
    return out
