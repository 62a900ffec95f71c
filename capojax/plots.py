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

__all__ = ["save_reliability_diagram", "save_precision_coverage", "save_study_figure"]


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


# Panels of the calibration study: (metric key, title); the last panel is AUC-mean against accuracy.
STUDY_PANELS = (
    ("val/accuracy", "accuracy (mean@n)"),
    ("val/auc_mean", "AUC-mean of lpm"),
    ("val/ece", "ECE of exp(lpm)"),
    ("val/entropy", "token entropy (nats)"),
    ("val/stated/ece", "ECE of stated confidence"),
)


def _seed_band(cells: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """steps, seed-mean and seed-SD of `key` over the cells (NaN-aware: a seed whose value is undefined at a step,
    e.g. AUC-mean with no mixed prompt, is left out there; a step nobody defines is NaN)."""
    steps = sorted({r["step"] for c in cells for r in c["curve"]})
    table = np.full((len(cells), len(steps)), np.nan)
    for i, c in enumerate(cells):
        for r in c["curve"]:
            table[i, steps.index(r["step"])] = r.get(key, np.nan)
    defined = ~np.isnan(table)
    count = defined.sum(0)
    mean = np.where(count > 0, np.nansum(table, 0) / np.maximum(count, 1), np.nan)
    dev = np.where(defined, table - mean, 0.0)
    sd = np.where(count > 1, np.sqrt((dev**2).sum(0) / np.maximum(count - 1, 1)), 0.0)
    return np.asarray(steps, float), mean, sd


def save_study_figure(curves: Mapping[str, dict], path: str | os.PathLike, *, base: Mapping | None = None) -> pathlib.Path:
    """The study's figure -> path: each STUDY_PANELS metric against step, and AUC-mean against accuracy.

    curves: {cell: {"variant", "seed", "curve": [{"step", "val/...": value}]}}. One line per variant (the seed
    mean) with a band of ± one seed-SD; cells that have not evaluated the base start from the base point."""
    by_variant: dict[str, list[dict]] = {}
    for cell in curves.values():
        curve = list(cell["curve"])
        if base is not None and (not curve or curve[0]["step"] != 0):
            curve = [dict(base)] + curve
        by_variant.setdefault(cell["variant"], []).append({**cell, "curve": curve})
    fig = Figure(figsize=(15, 8.5))
    axes = fig.subplots(2, 3).ravel()
    colors = {v: f"C{i}" for i, v in enumerate(by_variant)}
    for ax, (key, title) in zip(axes, STUDY_PANELS):
        for variant, cells in by_variant.items():
            steps, mean, sd = _seed_band(cells, key)
            ok = ~np.isnan(mean)
            if not ok.any():
                continue
            ax.plot(steps[ok], mean[ok], "-o", ms=3, color=colors[variant], label=f"{variant} (n={len(cells)})")
            ax.fill_between(steps[ok], (mean - sd)[ok], (mean + sd)[ok], color=colors[variant], alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = axes[len(STUDY_PANELS)]
    for variant, cells in by_variant.items():
        _, acc, _ = _seed_band(cells, "val/accuracy")
        _, auc, _ = _seed_band(cells, "val/auc_mean")
        ok = ~(np.isnan(acc) | np.isnan(auc))
        if ok.any():
            ax.plot(acc[ok], auc[ok], "-o", ms=3, color=colors[variant], label=variant)
            ax.plot(acc[ok][-1:], auc[ok][-1:], "s", ms=7, color=colors[variant])
    ax.set_title("AUC-mean against accuracy (square: last evaluation)")
    ax.set_xlabel("accuracy")
    ax.set_ylabel("AUC-mean")
    ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
