"""Experiment configs: one ml_collections `get_config()` per file, all built on `configs/base.py`.

    python -m capojax.train --config=configs/capo_1p5b.py --config.model.path=/ckpt/Qwen2.5-Math-1.5B
"""
