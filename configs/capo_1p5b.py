"""CAPO on Qwen2.5-Math-1.5B with DeepScaleR (arXiv 2604.12632 settings)."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    config = base.get_base_config()
    base.paper_model(config, "qwen2.5-math-1.5b")
    config.data.source = base.DEEPSCALER  # DeepScaleR-Preview training set (problem/answer jsonl)
    config.data.subset_size = 20_000  # the paper's 20k subset, drawn with data.subset_seed
    config.data.holdout = 240  # validation prompts held out from the subset
    config.data.max_prompt_len = 1024  # prompt token limit
    config.rollout.n = 8  # samples per prompt
    config.rollout.val_n = 16  # samples per validation prompt
    config.rollout.temperature = 1.0  # sampling temperature
    config.rollout.max_new_tokens = 3072  # response limit (prompt + response fit Qwen2.5-Math's 4096 context)
    config.algo.name = "capo"  # logistic-AUC advantage with reference-perplexity mask
    config.algo.tau = 0.6  # surrogate temperature
    config.algo.ref_high = 2.5  # lucky-guess filter on correct samples
    config.algo.ref_low = 1.05  # near-miss filter on wrong samples
    config.algo.clip_low = 0.2  # PPO clip
    config.algo.clip_high = 0.2  # PPO clip
    config.algo.kl_coef = 0.0  # no KL penalty
    config.algo.entropy_coef = 0.0  # no entropy bonus
    config.algo.loss_agg = "token-mean"  # verl's default (the paper trains with verl and names no other)
    config.optim.lr = 1e-6  # constant learning rate
    config.optim.weight_decay = 0.01  # verl's actor AdamW default (the paper is silent)
    config.train.steps = 600  # RL steps
    config.train.prompts_per_step = 128  # prompts per step
    config.train.ppo_mini_batch = 64  # prompts per optimizer update
    config.train.micro_batch = 64  # rows per forward/backward chunk: the largest with >= 15% headroom on 8x80 GB (dry-run plan 54%)
    return config
