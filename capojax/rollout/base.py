"""The rollout interface shared by the JAX sampler and the vLLM sidecar.

The trainer only talks to a `RolloutEngine`: it hands over token ids of prompts and sampling settings and
gets back a `Rollout` of completions with the sampler's own log-probs. Token ids go in and come out, never
text, so that no re-tokenisation drift separates what was sampled from what is trained on.

Ordering contract: `N = len(prompts) * params.n` rows, prompt-major (the samples of prompt `i` are rows
`i*n .. i*n + n - 1`), so `x.reshape(B, G, ...)` recovers groups.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample; mirrors vLLM's SamplingParams where names overlap."""

    n: int = 1  # samples per prompt (G)
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    stop_token_ids: tuple[int, ...] = ()  # generation of a row ends after emitting one of these
    seed: int = 0
    # Subtracted from the logit of every token the row has already *generated* (prompt tokens do not count),
    # before temperature / top-k / top-p: vLLM's and OpenAI's definition. 0 = off. vLLM accepts [-2, 2].
    presence_penalty: float = 0.0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if not math.isfinite(self.presence_penalty):
            raise ValueError(f"SamplingParams.presence_penalty must be finite, got {self.presence_penalty}")


@dataclasses.dataclass
class Rollout:
    """Completions for `N = B * n` rows (numpy arrays on the host).

    tokens:   i32[N, T]  completion token ids, right-padded with `pad_id`
    logprobs: f32[N, T]  log-prob of each sampled token under the sampling distribution (0 at padding)
    mask:     bool[N, T] True on real completion tokens (a stop token that ended the row counts as real)
    lengths:  i32[N]     number of real completion tokens
    finished: bool[N]    True when the row ended on a stop/EOS token rather than on max_new_tokens
    prompt_index: i32[N] which input prompt each row answers
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    prompt_index: np.ndarray
    pad_id: int = 0

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])


def check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    """The engines' shared input check: at least one prompt, and no empty prompt."""
    if len(prompts) == 0:
        raise ValueError("generate() needs at least one prompt")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty; every prompt needs at least one token")


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions and receives new weights after each update."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> Rollout:
        """Samples `params.n` completions for each prompt (token ids, unpadded)."""
        ...

    def update_weights(self, params: Any) -> dict[str, float]:
        """Makes the engine sample from `params` (an nnx.State of the actor); returns metrics to log
        (e.g. `timing/sync`, `sync/gbps`, `sync/logp_gap`)."""
        ...

    def close(self) -> None:
        ...
