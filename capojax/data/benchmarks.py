"""Evaluation benchmarks: load AIME24/25, MATH-500, AMC, Minerva, OlympiadBench (or any json/jsonl file).

``load_benchmark(name_or_path, *, limit=None, data_dir=None) -> list[Problem]``.

Names map to the primary files of ``../shared/data/README.md`` (see ``BENCHMARKS``):

==============  =================================================  =====  ==============================
name            file (under the data dir)                          n      gold
==============  =================================================  =====  ==============================
aime24          eval/aime24/deepscaler_aime.json                    30     zero-padded str ("025")
aime25          eval/aime25/areal_test.jsonl                        30     int
math500         eval/math500/deepscaler_math.json                   500    LaTeX str
amc23           eval/amc23/qwen25math_test.jsonl                    40     float (27.0); AMC 2023 only
amc             eval/amc/deepscaler_amc.json                        83     float; AMC12 2022A/B + 2023A/B
minerva         eval/minerva/deepscaler_minerva.json                272    list of acceptable answers
olympiadbench   eval/olympiadbench/deepscaler_olympiad_bench.json   675    list of 1 ``$...$`` str
==============  =================================================  =====  ==============================

Papers disagree on "AMC23": Qwen2.5-Math-lineage papers mean the 40 problems (``amc23``), DeepScaleR-lineage
papers the 83 (``amc``).

A name is found (``capojax.data.fetch.locate``) in the ``data_dir`` argument or ``$CAPOJAX_DATA_DIR`` when one
is given (and only there), else in ``../shared/data`` beside the checkout, else in the cache
(``~/.cache/capojax/data``, ``$CAPOJAX_DATA_CACHE``), else it is downloaded from its pinned source
(``capojax.data.sources``) and kept only when its git blob hash matches. A path (``.json`` list of objects or ``.jsonl``, one object per line)
is read with the same field rules: problem from ``problem`` | ``question`` | ``prompt``; gold from
``answer`` | ``final_answer`` | ``gold`` | ``ground_truth``, else the last ``\\boxed{}`` of ``solution``;
id from ``id`` | ``unique_id`` | ``idx`` | ``problem_id``, else ``"<name>/<row index>"``.

``Problem.gold`` is a tuple of acceptable answers as strings: ints stay as written, integral floats
lose their ``.0`` (``142.0`` -> ``"142"``), strings keep their text minus surrounding whitespace (AIME's
``"025"`` stays ``"025"``; grading compares numbers numerically). ``capojax.rewards.grade(response, problem.gold)``
takes it as is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

from capojax.data.fetch import DATA_DIR_ENV, default_data_dir, locate
from capojax.data.sources import SOURCES

__all__ = ["Problem", "BENCHMARKS", "load_benchmark", "default_data_dir", "DATA_DIR_ENV"]

# name -> file under a data dir (the layout of ../shared/data); sources and hashes in capojax.data.sources
BENCHMARKS: dict[str, str] = {name: source.path for name, source in SOURCES.items()}

_PROBLEM_KEYS = ("problem", "question", "prompt")
_ANSWER_KEYS = ("answer", "final_answer", "gold", "ground_truth")
_ID_KEYS = ("id", "unique_id", "idx", "problem_id")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One evaluation problem. ``gold`` holds every acceptable answer (most benchmarks have one)."""

    id: str
    problem: str
    gold: tuple[str, ...]


def _gold_item(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: gold answer {value!r} is not an answer; fix or drop the row")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: gold answer {value!r} is not finite; fix or drop the row")
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return value.strip()
    raise ValueError(f"{where}: gold answer has type {type(value).__name__}; expected a string, number or list")


def _row_to_problem(row: Any, index: int, name: str, where: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object per problem, got {type(row).__name__}")
    problem = next((row[k] for k in _PROBLEM_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
    if problem is None:
        raise ValueError(
            f"{where}: no problem text; give the row a non-empty string field "
            f"{' | '.join(_PROBLEM_KEYS)} (it has {sorted(row)[:12]})"
        )
    raw = next((row[k] for k in _ANSWER_KEYS if row.get(k) is not None), None)
    if raw is None and isinstance(row.get("solution"), str):
        from capojax.rewards.boxed import extract_boxed  # light: no math-verify

        raw = extract_boxed(row["solution"])
    if raw is None:
        raise ValueError(
            f"{where}: no gold answer; give the row a field {' | '.join(_ANSWER_KEYS)} "
            f"(or a `solution` ending in \\boxed{{...}})"
        )
    items = raw if isinstance(raw, list) else [raw]
    gold = tuple(g for g in (_gold_item(v, where) for v in items) if g)
    if not gold:
        raise ValueError(f"{where}: the gold answer is empty ({raw!r}); fix or drop the row")
    pid = next((row[k] for k in _ID_KEYS if row.get(k) is not None), None)
    return Problem(id=str(pid) if pid is not None else f"{name}/{index}", problem=problem, gold=gold)


def _read_rows(path: pathlib.Path) -> list[tuple[Any, str]]:
    """Rows with a location string for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((json.loads(line), f"{path}:{lineno}"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); a .json benchmark must be a list of objects") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of problem objects, got {type(data).__name__}")
        return [(row, f"{path}[{i}]") for i, row in enumerate(data)]
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use a .json list of objects or a .jsonl file")


def load_benchmark(
    name_or_path: str | os.PathLike, *, limit: int | None = None, data_dir: str | os.PathLike | None = None
) -> list[Problem]:
    """Load a benchmark by name (``BENCHMARKS``) or a ``.json``/``.jsonl`` path -> list of :class:`Problem`.

    Args:
      name_or_path: ``aime24 | aime25 | math500 | amc23 | amc | minerva | olympiadbench`` or a file path.
      limit: keep only the first ``limit`` problems (file order), for quick runs.
      data_dir: where the named benchmarks live (default: ../shared/data, the cache, else a verified download;
        see the module docstring).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    key = str(name_or_path)
    if key.lower() in BENCHMARKS:
        name = key.lower()
        path = locate(name, data_dir).path
    else:
        path = pathlib.Path(key).expanduser()
        if path.suffix.lower() not in (".json", ".jsonl"):
            raise ValueError(
                f"unknown benchmark {key!r}: not one of {sorted(BENCHMARKS)} and not a .json/.jsonl path"
            )
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} does not exist; check the path")
        name = path.stem
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    problems = [_row_to_problem(row, i, name, where) for i, (row, where) in enumerate(rows)]
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            raise ValueError(
                f"{path}: problem id {p.id!r} appears at rows {seen[p.id]} and {i}; ids must be unique (they key the "
                f"per-sample output)"
            )
        seen[p.id] = i
    return problems
