"""Datasets and prompts.

Submodules (import the one you need; this package imports nothing heavy on its own):

- :mod:`capojax.data.templates` — prompt templates (Qwen2.5-Math CoT, DCPO confidence variant).
- :mod:`capojax.data.benchmarks` — evaluation benchmarks (AIME24/25, MATH-500, AMC, Minerva, OlympiadBench).
- :mod:`capojax.data.sources` — each named benchmark file's upstream repository, commit, path and git blob hash.
- :mod:`capojax.data.fetch` — finds a named benchmark's file on disk, else downloads it once and checks its hash
  (``python -m capojax.data.fetch [NAME ... | all]`` prefetches).
- :mod:`capojax.data.pipeline` — the grain training iterator.
- :mod:`capojax.data.synthetic` — the tiny verifiable arithmetic task.
"""
