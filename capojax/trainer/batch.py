"""Turns prompts and a `Rollout` into the padded arrays the trainer's jitted passes consume.

Layout of one row (N = B * G rows, prompt-major like the Rollout):

    [ pad .. pad | prompt tokens | completion tokens | pad .. pad ]
      <-------- P (left-padded) -><------------ T (right-padded) -->

The prompt block is left-padded so that every completion starts at column P: the logits that score the
completion are then one static slice `[:, P-1 : P+T-1]`, whatever the prompt lengths. P and T are rounded up
to buckets so that a run compiles a handful of shapes, not one per step.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from capojax.rollout.base import Rollout


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclasses.dataclass
class SequenceBatch:
    """Host arrays for N rows.

    input_ids:      i32[N, P+T]
    attention_mask: bool[N, P+T]
    positions:      i32[N, P+T]  (0 at the first real token of the prompt)
    response_mask:  bool[N, T]   True on completion tokens that are trained on
    sampler_logp:   f32[N, T]    the rollout engine's log-probs of the completion tokens
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray
    response_mask: np.ndarray
    sampler_logp: np.ndarray

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]


def assemble(
    prompts: Sequence[Sequence[int]],
    rollout: Rollout,
    *,
    pad_id: int,
    bucket: int = 32,
    min_rows: int = 1,
    prompt_len: int | None = None,
    length: int | None = None,
) -> SequenceBatch:
    """Builds a `SequenceBatch`; `rollout.prompt_index` says which prompt each row answers.

    Rows are padded up to a multiple of `min_rows` (e.g. the number of data-parallel shards) with fully
    masked rows, which contribute nothing to any loss or metric. prompt_len, length: fixed P and T (e.g. one
    shape for a whole evaluation, so it compiles once); None: the rows' own, rounded up to `bucket`.
    """
    if rollout.num_rows == 0:
        raise ValueError("the rollout has no rows")
    n_real = rollout.num_rows
    n = round_up(n_real, min_rows)
    p = _fixed_or_bucketed(max(len(prompts[i]) for i in rollout.prompt_index), prompt_len, bucket, "prompt_len")
    t = _fixed_or_bucketed(int(rollout.lengths.max(initial=1)), length, bucket, "length")

    input_ids = np.full((n, p + t), pad_id, np.int32)
    attention_mask = np.zeros((n, p + t), bool)
    response_mask = np.zeros((n, t), bool)
    sampler_logp = np.zeros((n, t), np.float32)
    for row, prompt_index in enumerate(rollout.prompt_index):
        prompt = np.asarray(prompts[prompt_index], np.int32)
        length = int(rollout.lengths[row])
        input_ids[row, p - len(prompt) : p] = prompt
        input_ids[row, p : p + length] = rollout.tokens[row, :length]
        attention_mask[row, p - len(prompt) : p + length] = True
        response_mask[row, :length] = rollout.mask[row, :length]
        sampler_logp[row, :length] = rollout.logprobs[row, :length]
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int32)
    return SequenceBatch(input_ids, attention_mask, positions, response_mask, sampler_logp)


def _fixed_or_bucketed(needed: int, fixed: int | None, bucket: int, name: str) -> int:
    if fixed is None:
        return round_up(needed, bucket)
    if fixed < needed:
        raise ValueError(f"{name}={fixed} is shorter than the longest row ({needed} tokens); pass at least {needed}")
    return int(fixed)
