"""DCPO on Qwen3-8B (non-thinking): the model states CONFIDENCE after its answer; decoupled advantages."""

import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root, so config_flags can load this from any cwd
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import ml_collections  # noqa: E402

from configs import base  # noqa: E402


def get_config():
    config = base.get_base_config()
    base.paper_model(config, "qwen3-8b")
    config.data.source = base.DEEPSCALER  # DeepScaleR (DCPO's uniform-difficulty 10k set is not public)
    config.data.subset_size = 10_000  # a 10k subset, drawn with data.subset_seed
    config.data.holdout = 240  # validation prompts held out from the subset
    config.data.max_prompt_len = 1024  # prompt token limit
    config.data.template = "dcpo"  # asks for a boxed answer followed by "CONFIDENCE: <p>"
    # Non-thinking: Qwen3's chat template writes the empty "<think>\n\n</think>\n\n" only when this is False.
    config.data.chat_template_kwargs = ml_collections.ConfigDict({"enable_thinking": False})
    config.rollout.n = 8  # samples per prompt
    config.rollout.max_new_tokens = 3000  # response limit
    config.rollout.temperature = 1.0  # sampling temperature
    config.algo.name = "dcpo"  # accuracy advantage on reasoning tokens, calibration advantage on confidence tokens
    config.algo.lam = 0.5  # calibration target: half group accuracy, half the sample's own correctness
    config.algo.clip_low = 0.2  # PPO clip below 1
    config.algo.clip_high = 0.28  # clip-higher
    config.algo.kl_coef = 0.001  # KL penalty to the reference
    config.algo.kl_kind = "k3"  # low-variance KL estimator
    config.algo.loss_agg = "token-mean"  # token-level aggregation
    config.optim.lr = 2e-6  # constant learning rate
    config.optim.schedule = "constant"  # no decay
    config.optim.weight_decay = 0.01  # AdamW weight decay
    config.optim.grad_clip = 1.0  # global-norm clip
    config.train.steps = 300  # RL steps
    config.train.prompts_per_step = 256  # prompts per step
    config.train.ppo_mini_batch = 64  # prompts per optimizer update
    config.train.micro_batch = 16  # rows per forward/backward chunk: update phase 66% of 80 GB (32 rows: 98%); see the README plan table
    config.mesh.fsdp = 4  # 4-way FSDP x 2-way tensor parallel: the 8x80 GB plan that fits
    config.mesh.tp = 2  # tensor-parallel degree
    return config
