"""`python -m capojax.study --config=configs/study_calibration.py [--workdir=runs/study]`

The calibration study: a grid of {algorithm variant} x {seed}, every cell an ordinary training run (the same
`Trainer` that `capojax.train` runs, so resume, metrics.jsonl and tensorboard come for free) from one shared base
model, evaluated on one fixed held-out set with one fixed sampling key. It answers: under the same budget, does
CAPO keep the perplexity ranking (AUC-mean) that GRPO destroys, and does DCPO keep stated confidence honest?

Workdir layout:

    cells/<variant>-s<seed>/   a training run (metrics.jsonl, checkpoints/, tensorboard/); done.json when finished
    study.json                 every cell's evaluation curves, the base row, the per-variant summary
    summary.md                 mean ± seed-SD over the reporting window for each variant, and the base row
    study.png                  accuracy, AUC-mean, ECE, entropy, stated-confidence ECE against step; AUC-mean
                               against accuracy; one line per variant with a band over seeds

A rerun skips finished cells and resumes an interrupted one; when every cell is done, the outputs are rebuilt
from the cells' logs without training. The reporting window (the last `config.window` evaluations) is part of
the config so that it is fixed before any result is seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from capojax.errors import ConfigError

log = logging.getLogger(__name__)

# Each variant is a set of overrides of the cell's training config. Everything else (optimizer, clipping, batch,
# template, budget) is shared, so a difference between two rows is a difference of the objective.
VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"algo.name": "grpo"},  # on the DCPO template the confidence is stated but not rewarded: DCPO's baseline
    "drgrpo": {"algo.name": "drgrpo"},
    "capo": {"algo.name": "capo", "algo.use_ref_mask": True},
    "capo_nomask": {"algo.name": "capo", "algo.use_ref_mask": False},
    "dcpo": {"algo.name": "dcpo"},
    # CAPO with tau at the scale of the base's in-group lpm spread (its SD is ~0.08 on the study base, logged as
    # val/lpm/group_sd): at tau = 0.6 >> spread the logistic surrogate is almost linear, i.e. close to Dr.GRPO.
    "capo_tau01": {"algo.name": "capo", "algo.use_ref_mask": True, "algo.tau": 0.1},
}

# (metric key in metrics.jsonl, column title) of the summary table, in order.
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("val/accuracy", "accuracy"),
    ("val/auc_mean", "AUC-mean"),
    ("val/n_mixed", "n_mixed"),
    ("val/auroc", "AUROC"),
    ("val/ece", "ECE"),
    ("val/pce", "PCE"),
    ("val/stated/ece", "stated ECE"),
    ("val/stated/pce", "stated PCE"),
    ("val/stated/brier", "stated Brier"),
    ("val/stated/auroc", "stated AUROC"),
    ("val/stated/mean_confidence", "stated mean"),
    ("val/entropy", "entropy"),
    ("val/lpm/correct", "lpm correct"),
    ("val/lpm/wrong", "lpm wrong"),
    ("val/lpm/group_sd", "in-group lpm SD"),
)


class StudyConfigError(ConfigError):
    """A study config that cannot run; the message says which field and what to do (one line on the CLI)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str
    seed: int
    workdir: pathlib.Path
    config: ml_collections.ConfigDict

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"

    @property
    def done_file(self) -> pathlib.Path:
        return self.workdir / "done.json"


# ---------------------------------------------------------------------------------------------------- the grid


def parse_list(text: str, field: str, kind=str) -> list:
    """"a,b,c" -> [a, b, c] (each converted by `kind`); an empty list is an error."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise StudyConfigError(f"config.{field} is empty; give a comma-separated list")
    try:
        return [kind(x) for x in items]
    except ValueError as e:
        raise StudyConfigError(f"config.{field}={text!r}: {e}") from None


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """config["a.b.c"] = value, refusing keys the training config does not have (a typo would silently do nothing)."""
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node:
            raise StudyConfigError(f"override {key!r}: the training config has no section {p!r}")
        node = node[p]
    if leaf not in node:
        raise StudyConfigError(f"override {key!r}: the training config has no field {leaf!r}")
    node[leaf] = value


def effective_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study config with `quick` applied: 2 variants x 1 seed x a few steps on a small eval set and a
    cheaper base, the smoke test of the whole pipeline (what the tests run)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if not config.quick:
        return config
    config.algorithms = config.quick_algorithms
    config.seeds = str(parse_list(config.seeds, "seeds", int)[0])
    run = config.run
    run.train.steps = int(config.quick_steps)
    run.train.prompts_per_step = 8
    run.train.ppo_mini_batch = 4
    run.rollout.n = 4
    run.rollout.val_n = 4
    run.data.holdout = 16
    run.log.val_every = max(1, int(config.quick_steps) // 2)
    run.checkpoint.every = 1
    run.model.tiny_base.steps = int(config.quick_base_steps)
    config.window = 1
    return config


def plan_cells(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[Cell]:
    """The grid in run order: seeds outer, variants inner, so a partial study already compares every variant."""
    variants = parse_list(config.algorithms, "algorithms")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise StudyConfigError(f"config.algorithms: unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    seeds = parse_list(config.seeds, "seeds", int)
    if int(config.window) < 1:
        raise StudyConfigError(f"config.window must be >= 1 evaluation, got {config.window}")
    if not int(config.run.log.val_every):
        raise StudyConfigError("config.run.log.val_every is 0: the study needs evaluations")
    from capojax.trainer.settings import drop_foreign_algo_keys

    cells = []
    for seed in seeds:
        for variant in variants:
            cfg = ml_collections.ConfigDict(config.run.to_dict())
            for key, value in VARIANTS[variant].items():
                set_dotted(cfg, key, value)
            # The run config is shared: a setting for one algorithm (e.g. run.algo.tau for the CAPO cells) is not
            # one the other cells refuse to start with.
            drop_foreign_algo_keys(cfg.algo)
            cfg.train.seed = seed
            cfg.data.shuffle_seed = seed  # the seed sets the prompt stream too, not only the sampling keys
            cfg.log.val_at_start = not cells  # the base is evaluated once, by the first cell (fixed key: same numbers)
            cfg.checkpoint.export_hf = False
            cells.append(Cell(variant, seed, pathlib.Path(workdir) / "cells" / f"{variant}-s{seed}", cfg))
    return cells


def run_cell(cell: Cell) -> dict[str, Any]:
    """Trains one cell (resuming if it was interrupted) and writes its done.json; returns that record."""
    from capojax.trainer.loop import Trainer

    start = time.time()
    trainer = Trainer(cell.config, str(cell.workdir))
    try:
        resumed_at = trainer.step
        trainer.run()
    finally:
        trainer.close()
    record = {"variant": cell.variant, "seed": cell.seed, "steps": trainer.step, "resumed_at": resumed_at,
              "seconds": time.time() - start}
    cell.done_file.write_text(json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------------------------------------------- results


def read_rows(workdir: str | os.PathLike) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def cell_curve(rows: Sequence[dict]) -> list[dict[str, float]]:
    """The evaluation rows of one cell: step and every `val/*` metric, in step order."""
    out = [{"step": int(r["step"]), **{k: _num(v) for k, v in r.items() if k.startswith("val/")}}
           for r in rows if "val/accuracy" in r]
    return sorted(out, key=lambda r: r["step"])


def window_mean(curve: Sequence[dict[str, float]], window: int, key: str, *, exclude_step0: bool = True) -> float:
    """Mean of `key` over the last `window` evaluations (NaN entries skipped; NaN if none is defined)."""
    points = [r for r in curve if not (exclude_step0 and r["step"] == 0)][-window:]
    values = [r.get(key, float("nan")) for r in points]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample SD (ddof=1; NaN with one value) and count over the defined values."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def summarize(curves: dict[str, dict], window: int) -> dict[str, Any]:
    """Per variant: for each metric, the seed-mean and seed-SD of the cells' window means; and the base row.

    curves: {cell name: {"variant", "seed", "curve": [...]}}."""
    base = next((c["curve"][0] for c in curves.values() if c["curve"] and c["curve"][0]["step"] == 0), None)
    by_variant: dict[str, list[dict]] = {}
    for cell in curves.values():
        by_variant.setdefault(cell["variant"], []).append(cell)
    variants = {}
    for variant, cells in by_variant.items():
        row = {"seeds": sorted(c["seed"] for c in cells)}
        for key, _ in SUMMARY_METRICS:
            per_seed = [window_mean(c["curve"], window, key) for c in cells]
            m, sd, n = mean_sd(per_seed)
            row[key] = {"mean": m, "sd": sd, "n": n, "per_seed": per_seed}
        variants[variant] = row
    return {"window": window, "base": base, "variants": variants}


def comparisons(summary: dict[str, Any], key: str = "val/auc_mean") -> list[str]:
    """Plain-language lines: each variant against the base and against GRPO, in standard errors of the mean."""
    lines = []
    base = summary["base"]
    variants = summary["variants"]

    def se(stat):
        return stat["sd"] / math.sqrt(stat["n"]) if stat["n"] > 1 and not math.isnan(stat["sd"]) else float("nan")

    for name, row in variants.items():
        stat = row[key]
        if base is not None and not math.isnan(stat["mean"]):
            d = stat["mean"] - base.get(key, float("nan"))
            lines.append(f"{name}: {key} {stat['mean']:.3f} vs base {base.get(key, float('nan')):.3f} "
                         f"(diff {d:+.3f}, {d / se(stat):+.1f} SE over {stat['n']} seeds)"
                         if not math.isnan(se(stat)) else
                         f"{name}: {key} {stat['mean']:.3f} vs base {base.get(key, float('nan')):.3f} (diff {d:+.3f}; one seed)")
    if "grpo" in variants:
        g = variants["grpo"][key]
        for name, row in variants.items():
            if name == "grpo":
                continue
            s = row[key]
            pooled = math.sqrt(se(s) ** 2 + se(g) ** 2)
            d = s["mean"] - g["mean"]
            lines.append(f"{name} - grpo: {key} {d:+.3f}" + (f" ({d / pooled:+.1f} SE)" if pooled > 0 else ""))
    return lines


def _fmt(stat) -> str:
    if isinstance(stat, dict):
        if math.isnan(stat["mean"]):
            return "–"
        return f"{stat['mean']:.3f}" + ("" if math.isnan(stat["sd"]) else f" ± {stat['sd']:.3f}")
    return "–" if stat is None or math.isnan(stat) else f"{stat:.3f}"


def summary_markdown(summary: dict[str, Any], *, meta: dict[str, Any]) -> str:
    heads = [title for _, title in SUMMARY_METRICS]
    lines = [
        "# Calibration study",
        "",
        f"Mean ± seed-SD over the last {summary['window']} evaluation(s) of each cell (held-out set: "
        f"{meta.get('eval_prompts')} prompts x {meta.get('eval_samples')} samples at T = {meta.get('eval_temperature')}, "
        f"fixed sampling key). ECE/PCE: of exp(lpm); stated: of the CONFIDENCE line. Steps: {meta.get('steps')}.",
        "",
        "| variant | seeds | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    base = summary["base"]
    if base is not None:
        lines.append("| base (step 0) | – | " + " | ".join(_fmt(base.get(k, float("nan"))) for k, _ in SUMMARY_METRICS) + " |")
    for name, row in summary["variants"].items():
        seeds = ",".join(str(s) for s in row["seeds"])
        lines.append(f"| {name} | {seeds} | " + " | ".join(_fmt(row[k]) for k, _ in SUMMARY_METRICS) + " |")
    lines += ["", "AUC-mean:", ""] + [f"- {x}" for x in comparisons(summary)]
    lines += ["", "Stated-confidence ECE:", ""] + [f"- {x}" for x in comparisons(summary, "val/stated/ece")]
    lines += ["", f"Wall time of the cells: {meta.get('cell_seconds', float('nan')) / 60:.1f} min "
              f"({meta.get('cells')} cells).", ""]
    return "\n".join(lines)


def collect(cells: Sequence[Cell]) -> dict[str, dict]:
    out = {}
    for cell in cells:
        rows = read_rows(cell.workdir)
        done = json.loads(cell.done_file.read_text()) if cell.done_file.exists() else None
        out[cell.name] = {
            "variant": cell.variant, "seed": cell.seed, "done": done is not None,
            "seconds": None if done is None else done["seconds"],
            "curve": cell_curve(rows),
            "train": [{"step": int(r["step"]), "accuracy": _num(r.get("accuracy")), "entropy": _num(r.get("entropy")),
                       "confidence/mean": _num(r.get("confidence/mean"))} for r in rows if "accuracy" in r],
        }
    return out


def write_outputs(config, cells: Sequence[Cell], workdir: pathlib.Path) -> dict[str, Any]:
    """study.json, summary.md and study.png from the cells' logs on disk."""
    from capojax.plots import save_study_figure

    curves = collect(cells)
    summary = summarize(curves, int(config.window))
    run = config.run
    meta = {
        "cells": len(cells), "steps": int(run.train.steps),
        "eval_prompts": int(run.data.holdout), "eval_samples": int(run.rollout.val_n),
        "eval_temperature": float(run.rollout.val_temperature), "eval_seed": int(run.rollout.val_seed),
        "cell_seconds": float(sum(c["seconds"] or 0.0 for c in curves.values())),
    }
    study = {"config": config.to_dict(), "meta": meta, "summary": summary, "cells": curves}
    (workdir / "study.json").write_text(json.dumps(study, indent=1, allow_nan=True))
    (workdir / "summary.md").write_text(summary_markdown(summary, meta=meta))
    save_study_figure(curves, workdir / "study.png", base=summary["base"])
    return study


# ---------------------------------------------------------------------------------------------------- CLI


def run_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    config = effective_config(config)
    workdir = pathlib.Path(workdir)
    cells = plan_cells(config, workdir)
    todo = [c for c in cells if not c.done_file.exists()]
    print(f"study: {len(cells)} cells in {workdir} ({len(cells) - len(todo)} done, {len(todo)} to run)", flush=True)
    for i, cell in enumerate(cells, 1):
        if cell.done_file.exists():
            print(f"[{i}/{len(cells)}] {cell.name}: done earlier, skipped", flush=True)
            continue
        print(f"[{i}/{len(cells)}] {cell.name}: training {int(cell.config.train.steps)} steps ...", flush=True)
        record = run_cell(cell)
        last = cell_curve(read_rows(cell.workdir))[-1]
        print(f"[{i}/{len(cells)}] {cell.name}: done in {record['seconds']:.0f}s; step {last['step']}: "
              f"accuracy {last['val/accuracy']:.3f}, AUC-mean {last['val/auc_mean']:.3f} "
              f"(n_mixed {last['val/n_mixed']:.0f}), ECE {last['val/ece']:.3f}", flush=True)
    study = write_outputs(config, cells, workdir)
    print((workdir / "summary.md").read_text(), flush=True)
    print(f"study: wrote {workdir / 'study.json'}, {workdir / 'summary.md'}, {workdir / 'study.png'}", flush=True)
    return study


def main(argv) -> int:
    from absl import flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise StudyConfigError(f"unexpected arguments {argv[1:]}; settings go through --config.KEY=VALUE")
    config = _CONFIG.value
    if config is None:
        raise StudyConfigError("--config=configs/study_calibration.py is required")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("capojax").setLevel(logging.INFO)
    workdir = _WORKDIR.value or os.path.join("runs", pathlib.Path(flags.FLAGS["config"].config_filename).stem)
    run_study(config, workdir)
    return 0


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from capojax import cli

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to configs/study_calibration.py.", lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Study directory (default: runs/<config file name>).")
    cli.run(main)
