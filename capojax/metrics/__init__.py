"""Calibration metrics and inference-time scaling (pure `jax.numpy`, jit-compatible, numpy in, jax out).

- Ranking / calibration (`calibration.py`): `auroc`, `auc_per_prompt`, `auc_mean`, `ece`, `pce`, `brier`,
  `reliability_diagram`, `precision_coverage`, `perplexity_confidence` (= exp(lpm)).
- Scaling over N samples (`scaling.py`): `pass_at_k`, `mean_at_k`, `cluster_answers` (host, math-verify),
  `vote`, `majority_vote`, `perplexity_consistency`.
- Host roll-ups to `{name: float}` (`summary.py`): `calibration_summary`, `scaling_summary`.

`CALIBRATION_METRICS` registers the scalar calibration metrics by name, each `fn(conf f32[B,N], correct bool[B,N],
mask bool[B,N] | None) -> f32[]`, so loggers iterate over names instead of branching.
"""

from capojax.metrics.calibration import (
    PrecisionCoverage,
    ReliabilityDiagram,
    auc_mean,
    auc_per_prompt,
    auroc,
    brier,
    ece,
    pce,
    perplexity_confidence,
    precision_coverage,
    reliability_diagram,
)
from capojax.metrics.scaling import (
    cluster_answers,
    majority_vote,
    mean_at_k,
    pass_at_k,
    perplexity_consistency,
    vote,
)
from capojax.metrics.summary import calibration_summary, powers_of_two_upto, scaling_summary

CALIBRATION_METRICS = {
    "auroc": auroc,
    "auc_mean": auc_mean,
    "ece": ece,
    "pce": pce,
    "brier": brier,
    "aupc": lambda conf, correct, mask=None: precision_coverage(conf, correct, mask).area,
}

__all__ = [
    "CALIBRATION_METRICS",
    "PrecisionCoverage",
    "ReliabilityDiagram",
    "auc_mean",
    "auc_per_prompt",
    "auroc",
    "brier",
    "calibration_summary",
    "cluster_answers",
    "ece",
    "majority_vote",
    "mean_at_k",
    "pass_at_k",
    "pce",
    "perplexity_confidence",
    "perplexity_consistency",
    "powers_of_two_upto",
    "precision_coverage",
    "reliability_diagram",
    "scaling_summary",
    "vote",
]
