"""Training prompts through grain: load, filter, subset, render, tokenise, shuffle, batch, checkpoint.

    data = build_prompt_data(config.data, tokenizer)          # PromptData(train, val, stats)
    it = PromptIterator(data.train, batch_size=B, seed=config.data.shuffle_seed)
    batch = next(it)                                          # PromptBatch of B prompts
    state = it.get_state()                                    # JSON-able; goes into the orbax checkpoint
    it.set_state(state)                                       # ... and resumes the exact same batches

Sources (``config.data.source``):
- ``*.jsonl`` / ``*.json``: one object per row with ``problem`` (or ``question``) and ``answer`` (or
  ``final_answer`` / ``ground_truth``); ``../shared/data/train/deepscaler.jsonl`` works as is.
- ``*.parquet``: the same columns, or verl's format (``prompt`` = chat messages, ``reward_model.ground_truth``);
  DeepScaleR's instruction suffix is stripped from verl prompts because our template adds its own.
- ``"synthetic"``: the project's arithmetic task (capojax.data.synthetic), sized by ``config.data.synthetic``.

Row handling, all counted in ``PromptData.stats``: malformed rows (bad JSON, no problem text, wrong types)
are skipped; rows with an empty answer are dropped (DeepScaleR has 6); prompts longer than
``max_prompt_len`` tokens after rendering are dropped. If nothing usable is left the loader raises.

Subset and hold-out: the usable rows are permuted with ``subset_seed``; the first ``holdout`` rows of the
permutation that pass the length filter are the validation split, the next ``subset_size`` (0 = all) are
the training split. Only as many rows as needed are tokenised, so a 20k draw from 40k is quick.

Shuffling: grain shuffles the training indices with ``seed`` and reshuffles every epoch (``repeat``); the
stream is sharded by process (``grain.sharding.ShardOptions``; default ``ShardByJaxProcess``) so each host
reads ``batch_size / shard_count`` distinct prompts of every global batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from capojax.data.templates import render_prompt
from capojax.errors import UserError

log = logging.getLogger(__name__)

# DeepScaleR's verl prompts end with this instruction; our prompt templates add their own.
DEEPSCALER_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
PROBLEM_KEYS = ("problem", "question")
ANSWER_KEYS = ("answer", "final_answer", "ground_truth", "gold")


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One training/validation prompt, rendered and tokenised."""

    id: str  # stable row id (file row index or the row's own id)
    problem: str  # the question text as in the data
    answer: Any  # the gold answer (str, or a list of acceptable strings)
    prompt: str  # the rendered prompt text (chat template applied)
    prompt_ids: tuple[int, ...]  # the prompt's token ids (no padding)


@dataclasses.dataclass
class PromptBatch:
    """A batch of prompts for one RL step (host lists; the rollout engine pads)."""

    ids: list[str]
    problems: list[str]
    answers: list[Any]
    prompts: list[str]
    prompt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class PromptData:
    train: list[PromptExample]
    val: list[PromptExample]
    stats: dict[str, Any]  # counts of every filter, the seeds, and the source; written to the workdir


class DataError(UserError, ValueError):
    """The data source cannot produce a usable prompt set; the message says what to fix."""


# ----------------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------------


def _get_problem(row: Mapping) -> str | None:
    for k in PROBLEM_KEYS:
        v = row.get(k)
        if isinstance(v, str):
            return v
    prompt = row.get("prompt")  # verl: a list of chat messages, the question is the last user message
    if isinstance(prompt, str):
        return prompt[: -len(DEEPSCALER_SUFFIX)] if prompt.endswith(DEEPSCALER_SUFFIX) else prompt
    if isinstance(prompt, (list, tuple, np.ndarray)):
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        if users and isinstance(users[-1].get("content"), str):
            text = users[-1]["content"]
            return text[: -len(DEEPSCALER_SUFFIX)] if text.endswith(DEEPSCALER_SUFFIX) else text
    return None


_MISSING = object()


def _get_answer(row: Mapping) -> Any:
    """The gold answer normalised to str or list[str]; _MISSING when no answer field exists."""
    value = _MISSING
    for k in ANSWER_KEYS:
        if k in row:
            value = row[k]
            break
    else:
        rm = row.get("reward_model")
        if isinstance(rm, Mapping) and "ground_truth" in rm:
            value = rm["ground_truth"]
    if value is _MISSING:
        return _MISSING
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC-style 27.0 -> "27"
    return str(value).strip()


def read_rows(path: str | os.PathLike) -> tuple[list[Any], int]:
    """Raw rows of a jsonl / json / parquet file, and the number of lines that were not valid JSON."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(
            f"data file {path!r} not found. Set --config.data.source to a .jsonl/.json/.parquet file with "
            "problem/answer rows (e.g. DeepScaleR: huggingface-cli download agentica-org/DeepScaleR-Preview-Dataset "
            "--repo-type dataset) or to 'synthetic' for the built-in arithmetic task."
        )
    bad_json = 0
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), 0
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if isinstance(obj, Mapping):  # {"problem": [...], "answer": [...]} column layout
            keys = list(obj)
            obj = [dict(zip(keys, vals)) for vals in zip(*(obj[k] for k in keys))]
        if not isinstance(obj, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(obj).__name__}")
        return obj, 0
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    bad_json += 1
        return rows, bad_json
    raise DataError(f"{path}: unsupported extension; use .jsonl, .json or .parquet")


def synthetic_rows(num_problems: int, *, seed: int, min_ops: int, max_ops: int, operand_max: int,
                   ops: str = "+-*") -> list[dict]:
    from capojax.data import synthetic

    settings = synthetic.TaskSettings(min_ops=min_ops, max_ops=max_ops, operand_max=operand_max, ops=tuple(ops))
    return synthetic.problems_as_records(synthetic.make_problems(num_problems, seed=seed, settings=settings))


# ----------------------------------------------------------------------------------------------------
# Building the prompt set
# ----------------------------------------------------------------------------------------------------


def chat_template_kwargs(data_cfg) -> dict[str, Any] | None:
    """``data_cfg.chat_template_kwargs`` as a plain dict for ``render_prompt`` (None when unset or empty), e.g.
    ``{"enable_thinking": False}``: Qwen3's template writes its empty think block only when that flag is False."""
    kwargs = data_cfg.get("chat_template_kwargs") if hasattr(data_cfg, "get") else None
    if not kwargs:
        return None
    return dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)


def build_prompt_data(data_cfg, tokenizer, *, rows: Sequence[Any] | None = None, chunk: int = 2048) -> PromptData:
    """Loads ``data_cfg.source`` (or ``rows``), filters, draws subset + hold-out, renders and tokenises.

    ``data_cfg`` needs: source, subset_size, subset_seed, holdout, max_prompt_len, template, and (for the
    synthetic source) synthetic.{num_problems, seed, min_ops, max_ops, operand_max}; ``chat_template_kwargs``
    (optional) goes to the tokenizer's chat template."""
    template_kwargs = chat_template_kwargs(data_cfg)
    stats: dict[str, Any] = {"source": str(data_cfg.source), "subset_seed": int(data_cfg.subset_seed),
                             "template": str(data_cfg.template), "chat_template_kwargs": template_kwargs or {}}
    bad_json = 0
    if rows is None:
        if data_cfg.source == "synthetic":
            s = data_cfg.synthetic
            rows = synthetic_rows(int(s.num_problems), seed=int(s.seed), min_ops=int(s.min_ops),
                                  max_ops=int(s.max_ops), operand_max=int(s.operand_max),
                                  ops=str(s.get("ops", "+-*")))
        elif not data_cfg.source:
            raise DataError("config.data.source is empty: set it to a .jsonl/.json/.parquet file or 'synthetic'.")
        else:
            rows, bad_json = read_rows(data_cfg.source)
    stats["rows"] = len(rows) + bad_json

    usable: list[tuple[str, str, Any]] = []  # (id, problem, answer)
    malformed, empty_answer = bad_json, 0
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            malformed += 1
            continue
        problem = _get_problem(row)
        answer = _get_answer(row)
        if problem is None or not problem.strip() or answer is _MISSING:
            malformed += 1
            continue
        if answer == "" or answer == []:
            empty_answer += 1
            continue
        rid = row.get("id", row.get("index", row.get("unique_id", i)))
        usable.append((str(rid), problem, answer))
    stats["malformed"] = malformed
    stats["empty_answer"] = empty_answer
    if malformed:
        log.warning("data: skipped %d malformed rows of %s", malformed, data_cfg.source)
    if not usable:
        raise DataError(
            f"no usable rows in {data_cfg.source!r}: {stats['rows']} rows, {malformed} malformed, "
            f"{empty_answer} with an empty answer. Each row needs a problem ('problem'/'question' or verl "
            f"'prompt') and a non-empty answer ('answer'/'final_answer' or verl 'reward_model.ground_truth')."
        )

    holdout, subset = int(data_cfg.holdout), int(data_cfg.subset_size)
    want = holdout + (subset if subset > 0 else len(usable))
    order = np.random.default_rng(int(data_cfg.subset_seed)).permutation(len(usable))
    max_len = int(data_cfg.max_prompt_len)
    accepted: list[PromptExample] = []
    too_long = 0
    pos = 0
    while len(accepted) < want and pos < len(order):
        idx = order[pos : pos + chunk]
        pos += len(idx)
        prompts = [render_prompt(usable[j][1], tokenizer=tokenizer, style=data_cfg.template,
                                 chat_template_kwargs=template_kwargs) for j in idx]
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for j, text, ids in zip(idx, prompts, encoded):
            if len(accepted) >= want:
                break
            if len(ids) > max_len:
                too_long += 1
                continue
            rid, problem, answer = usable[j]
            accepted.append(PromptExample(rid, problem, answer, text, tuple(int(t) for t in ids)))
    stats["too_long"] = too_long
    stats["usable"] = len(usable)
    if len(accepted) <= holdout:
        raise DataError(
            f"only {len(accepted)} prompts of {data_cfg.source!r} fit max_prompt_len={max_len} "
            f"({too_long} too long, {malformed} malformed, {empty_answer} empty answers), but holdout={holdout} "
            "needs more: raise --config.data.max_prompt_len or lower --config.data.holdout."
        )
    if subset > 0 and len(accepted) < want:
        log.warning("data: asked for %d training prompts, only %d usable", subset, len(accepted) - holdout)
    val, train = accepted[:holdout], accepted[holdout:]
    stats["train"] = len(train)
    stats["val"] = len(val)
    stats["prompt_len_max"] = max(len(e.prompt_ids) for e in accepted)
    stats["prompt_len_mean"] = float(np.mean([len(e.prompt_ids) for e in accepted]))
    log.info("data: %s", stats)
    return PromptData(train=train, val=val, stats=stats)


def write_manifest(data: PromptData, path: str | os.PathLike) -> None:
    """Records the draw (stats + the ids of both splits) so a run's subset can be audited and re-drawn."""
    with open(path, "w") as f:
        json.dump({"stats": data.stats, "train_ids": [e.id for e in data.train],
                   "val_ids": [e.id for e in data.val]}, f)


def to_batch(examples: Sequence[PromptExample]) -> PromptBatch:
    return PromptBatch(
        ids=[e.id for e in examples],
        problems=[e.problem for e in examples],
        answers=[e.answer for e in examples],
        prompts=[e.prompt for e in examples],
        prompt_ids=[list(e.prompt_ids) for e in examples],
    )


# ----------------------------------------------------------------------------------------------------
# The iterator
# ----------------------------------------------------------------------------------------------------


def index_dataset(num_examples: int, *, batch_size: int, seed: int,
                  shard: grain.sharding.ShardOptions | None = None) -> grain.MapDataset:
    """An endless grain MapDataset of i64[batch_size / shard_count] index batches for this process.

    Every epoch is a fresh permutation (grain's ShuffleMapDataset keys it by epoch); process k of n takes
    positions k, k+n, k+2n, ... of the global stream, so the n processes together read each global batch once."""
    shard = shard or grain.sharding.NoSharding()
    if batch_size % shard.shard_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {shard.shard_count} data shards (processes)")
    ds = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(None)
    ds = ds[shard.shard_index :: shard.shard_count]
    return ds.batch(batch_size // shard.shard_count, drop_remainder=True)


class PromptIterator:
    """Endless iterator of PromptBatch over ``examples`` with a checkpointable position."""

    def __init__(self, examples: Sequence[PromptExample], *, batch_size: int, seed: int,
                 shard: grain.sharding.ShardOptions | None = None):
        if not examples:
            raise DataError("PromptIterator needs at least one example")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.shard = shard or grain.sharding.NoSharding()
        self._ds = index_dataset(len(self.examples), batch_size=batch_size, seed=seed, shard=self.shard)
        self._it = iter(self._ds)

    def __iter__(self):
        return self

    def __next__(self) -> PromptBatch:
        idx = next(self._it)
        return to_batch([self.examples[int(i)] for i in idx])

    def _identity(self) -> dict:
        return {"num_examples": len(self.examples), "batch_size": self.batch_size, "seed": self.seed,
                "shard_index": self.shard.shard_index, "shard_count": self.shard.shard_count,
                "first_id": self.examples[0].id, "last_id": self.examples[-1].id}

    def get_state(self) -> dict:
        """JSON-able state: grain's iterator state plus what it was taken over (checked on restore)."""
        return {"grain": self._it.get_state(), "identity": self._identity()}

    def set_state(self, state: Mapping) -> None:
        mine = self._identity()
        theirs = dict(state.get("identity", {}))
        if theirs != mine:
            diff = {k: (theirs.get(k), mine.get(k)) for k in mine if theirs.get(k) != mine.get(k)}
            raise DataError(
                f"the saved data-iterator state belongs to a different prompt set or batching (saved, now): {diff}. "
                "Resume with the same data config, or start a fresh workdir."
            )
        self._it.set_state(dict(state["grain"]))


def make_iterator(data: PromptData, *, batch_size: int, seed: int, multihost: bool = True) -> PromptIterator:
    """The training iterator, sharded by JAX process when ``multihost`` (a no-op on one process)."""
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True) if multihost else None
    return PromptIterator(data.train, batch_size=batch_size, seed=seed, shard=shard)
