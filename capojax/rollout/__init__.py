"""Rollout engines: the interface (`base`), the embedded JAX KV-cache sampler (`sampler`)."""

from capojax.rollout.base import Rollout, RolloutEngine, SamplingParams
from capojax.rollout.sampler import JaxRolloutEngine, SampleOutput, apply_presence_penalty, process_logits, sample

__all__ = ["JaxRolloutEngine", "Rollout", "RolloutEngine", "SampleOutput", "SamplingParams", "apply_presence_penalty",
           "process_logits", "sample"]
