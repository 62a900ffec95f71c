"""PNG plots of calibration: reliability diagrams and precision-coverage curves.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no display, no global backend
switch), so plotting is safe from worker threads and headless machines.

Inputs are the metric results of `capojax.metrics` (`ReliabilityDiagram`, `PrecisionCoverage`), so a plot
shows exactly the numbers in summary.json.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from capojax.metrics.calibration import PrecisionCoverage, ReliabilityDiagram

__all__ = ["save_reliability_diagram", "save_precision_coverage"]


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def save_reliability_diagram(
    diagram: ReliabilityDiagram, path: str | os.PathLike, *, title: str = "", ece: float | None = None
) -> pathlib.Path:
    """Accuracy per confidence bin against the diagonal, with the sample count per bin underneath -> path.

    Bars are the accuracy of each non-empty bin; the dots mark each bin's mean confidence (a bar below its dot is
    over-confidence). Empty bins are left blank.
    """
    edges = np.asarray(diagram.edges, np.float64)
    count = np.asarray(diagram.count, np.float64)
    acc = np.asarray(diagram.accuracy, np.float64)
    conf = np.asarray(diagram.confidence, np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    nonempty = count > 0

    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    top.bar(centers[nonempty], acc[nonempty], width=width[nonempty], edgecolor="black", linewidth=0.5,
            color="tab:blue", alpha=0.8, label="accuracy")
    top.scatter(conf[nonempty], conf[nonempty], color="tab:red", s=12, zorder=3, label="mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    heading = title or "reliability diagram"
    if ece is not None and np.isfinite(ece):
        heading += f"  (ECE {ece:.3f})"
    top.set_title(heading)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, count, width=width, color="gray", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("samples")
    return _save(fig, path)


def save_precision_coverage(
    curves: PrecisionCoverage | Mapping[str, PrecisionCoverage],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> pathlib.Path:
    """Precision of the most confident samples vs the fraction kept, one line per confidence view -> path.

    curves: one `PrecisionCoverage` or `{label: PrecisionCoverage}` (e.g. perplexity vs stated confidence).
    The dotted line at the overall accuracy is what an uninformative confidence gives.
    """
    if isinstance(curves, PrecisionCoverage):
        curves = {"confidence": curves}
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for label, curve in curves.items():
        valid = np.asarray(curve.valid, bool)
        if not valid.any():
            continue
        cov = np.asarray(curve.coverage)[valid]
        prec = np.asarray(curve.precision)[valid]
        line = ax.step(cov, prec, where="post", label=f"{label} (area {float(curve.area):.3f})")[0]
        ax.axhline(prec[-1], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (fraction of samples kept, most confident first)")
    ax.set_ylabel("precision (fraction correct)")
    ax.set_title(title or "precision-coverage")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)
