"""Qwen2 / Qwen2.5 / Qwen3 in Flax NNX, and HF checkpoint import / export."""

from capojax.models.config import PRESETS, QwenConfig
from capojax.models.hf import init_model, load_pretrained, save_pretrained, weight_table
from capojax.models.qwen import KVCache, Qwen, default_positions

__all__ = [
    "PRESETS", "KVCache", "Qwen", "QwenConfig", "default_positions", "init_model", "load_pretrained",
    "save_pretrained", "weight_table",
]
