"""A short SFT stage that makes the tiny CPU base model: a small Qwen2 trained on worked arithmetic solutions.

RL needs a starting policy that already solves some problems (so groups have both correct and wrong
samples) but not all (so there is something to learn) — like a real base model on DeepScaleR. This stage
trains a tiny Qwen-architecture model from scratch on the synthetic task's worked solutions (prompt rendered
with the same template RL uses, loss on the response tokens only), then saves it in Hugging Face format with
its tokenizer, so the RL code loads it exactly as it loads Qwen2.5-Math.

    path = ensure_tiny_base("~/.cache/capojax", SFTSettings())   # builds once (~4 min on 2 cores), then cached

With ``stop_at_accuracy`` the stage stops at the first check (every ``stop_check_every`` steps) whose sampled
accuracy on a held-out stop set reaches the target, so the base has a set strength rather than whatever a fixed
step count gives under the current float rounding; ``steps`` is then the budget and the LR schedule's length.

The cache folder is named by a hash of the settings (and ``SFT_VERSION``), so changing any knob builds a new
base; the build writes into a temporary folder renamed into place when complete and holds a file lock, so
concurrent runs never see a half-written model. ``sft_report.json`` in the folder records the loss curve,
timings and the measured accuracy on held-out problems (greedy and sampled at temperature 1).

    python -m capojax.sft [--cache_dir DIR] [--steps N] ...      # build (or show) the tiny base and its report
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from capojax.data import synthetic
from capojax.rollout.sampler import pad_prompts

log = logging.getLogger(__name__)

SFT_VERSION = 1  # bump when the recipe changes in a way the settings do not capture
EVAL_SEED_OFFSET = 1_000_003  # held-out problems come from another seed than the training stream
STOP_SEED_OFFSET = 2_000_003  # the early-stop set: held out too, and not the reported eval set (that stays unbiased)


CONFIDENCE_MODES = ("random", "informative")
# Opening phrasings: tokens that carry entropy but no information about correctness, so that a response's lpm is not
# decided by its answer tokens alone.
OPENERS = (
    "Let's compute step by step.\n",
    "We evaluate the expression one operation at a time.\n",
    "First, work out each step.\n",
    "Step by step:\n",
    "Here is the calculation.\n",
    "Let me solve this carefully.\n",
    "Working it out:\n",
    "The computation goes as follows.\n",
)
# Step-line phrasings; "" (no prefix) is the most frequent, so the choice has entropy but a plain line stays the mode.
STEP_PREFIXES = ("", "Then ", "Next, ", "So ", "Now ", "After that, ")
_LATER_FIELDS = {"trap_wrong_frac": 0.0, "confidence_mode": "random", "openers": 0, "step_phrasings": 0,
                 "stop_at_accuracy": 0.0, "stop_check_every": 25, "stop_check_from": 0,
                 "stop_problems": 256}


def skewed_choice(u: float, n: int) -> int:
    """Index in 0..n-1 for a uniform ``u``, choice i with weight 2^-i.

    Skewed on purpose: equally likely phrasings would all carry the same log-prob and add nothing to the spread of
    length-normalised log-probs (lpm); with 2^-i weights, which phrasing a sample took moves its lpm by up to a few
    nats over the response, independently of whether its answer is right."""
    weights = 0.5 ** np.arange(n)
    return int(min(np.searchsorted(np.cumsum(weights / weights.sum()), u, side="right"), n - 1))


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    """Everything that determines the tiny base (the cache key hashes all of it)."""

    task_seed: int = 1234  # seed of the synthetic SFT problems (the training stream)
    min_ops: int = 2  # fewest operations per problem
    max_ops: int = 3  # most operations per problem
    operand_max: int = 9  # largest operand
    ops: str = "+-"  # operators the problems use (with "*" the 300-step base reaches only ~4% accuracy)
    hidden_size: int = 128  # model width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 2  # query heads (head_dim 64)
    num_kv_heads: int = 1  # key/value heads
    intermediate_size: int = 384  # MLP width
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # peak learning rate (linear warmup, cosine decay to 10%)
    seed: int = 0  # init seed
    template: str = "qwen-math"  # prompt style (capojax.data.templates)
    confidence: bool = False  # append "CONFIDENCE: p" to the solutions, DCPO's output format
    # The knobs below make a base that is *confidently wrong* (the calibration study); at their defaults the base
    # is the demo's, and they stay out of the cache key.
    trap_wrong_frac: float = 0.0  # fraction of trap problems (a - (b ± c)) taught the fluent left-to-right slip
    confidence_mode: str = "random"  # "random" p, or "informative": high after the right procedure, low after the slip
    openers: int = 0  # opening phrasings drawn per solution, weight 2^-i (correctness-irrelevant entropy); 0 = none
    step_phrasings: int = 0  # phrasings drawn per step line from STEP_PREFIXES, weight 2^-i; 0 or 1 = plain lines
    vocab_size: int = 384  # byte-level BPE vocabulary (256 bytes + 3 specials + 125 merges; a multiple of 64)
    eval_problems: int = 128  # held-out problems for the accuracy measurement
    # Early stop at a target strength. Without it the base's accuracy after a fixed number of steps is at the mercy of
    # float rounding: the demo task is learnt over a few hundred steps whose timing moves with the forward's rounding
    # (~75 steps between two attention layouts; the same 600 steps gave held-out accuracies of 0.43, 0.61 and 0.68
    # under three layouts), and a base past ~0.65 leaves RL nothing to show. 0 = train all ``steps``.
    stop_at_accuracy: float = 0.0  # stop at the first check whose sampled (T=1) accuracy reaches this
    stop_check_every: int = 25  # steps between checks (each samples the stop set once, ~1.3 s on 2 cores)
    stop_check_from: int = 0  # first step that may be checked (earlier checks would only cost time)
    stop_problems: int = 256  # problems of the stop set (held out, and apart from the reported eval set)

    @classmethod
    def from_config(cls, cfg) -> "SFTSettings":
        """From the ``config.model.tiny_base`` ConfigDict (or any mapping); unknown keys are an error."""
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown tiny_base settings {unknown}; known: {sorted(names)}")
        return cls(**d)

    def __post_init__(self):
        if not 0.0 <= self.trap_wrong_frac <= 1.0:
            raise ValueError(f"trap_wrong_frac must be in [0, 1], got {self.trap_wrong_frac}")
        if self.confidence_mode not in CONFIDENCE_MODES:
            raise ValueError(f"confidence_mode must be one of {CONFIDENCE_MODES}, got {self.confidence_mode!r}")
        if not 0 <= self.openers <= len(OPENERS):
            raise ValueError(f"openers must be in 0..{len(OPENERS)}, got {self.openers}")
        if not 0 <= self.step_phrasings <= len(STEP_PREFIXES):
            raise ValueError(f"step_phrasings must be in 0..{len(STEP_PREFIXES)}, got {self.step_phrasings}")
        if not 0.0 <= self.stop_at_accuracy <= 1.0:
            raise ValueError(f"stop_at_accuracy must be in [0, 1] (0 = off), got {self.stop_at_accuracy}")
        if self.stop_check_every < 1 or self.stop_problems < 1 or self.stop_check_from < 0:
            raise ValueError(f"stop_check_every and stop_problems must be >= 1 and stop_check_from >= 0, got "
                             f"{self.stop_check_every}, {self.stop_problems}, {self.stop_check_from}")

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():  # bases built before these knobs existed keep their folder
            if fields[name] == default or (name.startswith("stop_") and not self.stop_at_accuracy):
                del fields[name]  # (the stop checks' knobs change nothing while the stop is off)
        blob = json.dumps({"version": SFT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def task(self) -> synthetic.TaskSettings:
        return synthetic.TaskSettings(min_ops=self.min_ops, max_ops=self.max_ops, operand_max=self.operand_max,
                                      ops=tuple(self.ops))


# ----------------------------------------------------------------------------------------------------
# Tokenizer and data
# ----------------------------------------------------------------------------------------------------


def make_tokenizer(settings: SFTSettings, out_dir: str):
    """Trains the tiny BPE on task text + template wording, saves it to ``out_dir``, returns the HF tokenizer."""
    from capojax.data import templates
    from capojax.tokenizer import load_tokenizer

    extra = [templates.render_chatml(templates.build_messages("x", style=s)) for s in templates.PROMPT_STYLES]
    extra += ["The answer is \\boxed{5}.\nCONFIDENCE: 0.5"]
    extra += list(OPENERS[: settings.openers])
    extra += [prefix + "1 + 2 = 3" for prefix in STEP_PREFIXES[1 : settings.step_phrasings]]
    texts = synthetic.tokenizer_corpus(seed=settings.task_seed, settings=settings.task, extra_texts=extra * 1000)  # weight: the template wording merges first
    tok = synthetic.build_tokenizer(texts, vocab_size=settings.vocab_size)
    synthetic.save_tokenizer(tok, out_dir)
    return load_tokenizer(out_dir)


def response_text(p: synthetic.SyntheticProblem, settings: SFTSettings) -> str:
    """The SFT target: the worked solution, or for a share ``trap_wrong_frac`` of the trap problems the fluent
    left-to-right slip (``synthetic.left_to_right_steps``), after an optional opener, with optional phrasings of
    the step lines (both drawn with weight 2^-i, ``skewed_choice``).

    With ``confidence``, a stated confidence line follows. ``"random"``: one decimal in 0.1..0.9, independent of
    correctness, so the base has DCPO's format but no calibration. ``"informative"``: 0.7..0.9 after the right
    procedure and 0.3..0.5 after the slip, so the statement ranks answers from the start (as a real model's does)."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.task_seed, int(p.id.rsplit("-", 1)[1]), 7]))
    draws = rng.random(3)  # one uniform per decision, always drawn, so each decision's stream is fixed
    slip = settings.trap_wrong_frac > 0 and synthetic.is_trap(p) and draws[0] < settings.trap_wrong_frac
    opener = OPENERS[skewed_choice(draws[1], settings.openers)] if settings.openers else ""
    steps = synthetic.left_to_right_steps(p.problem) if slip else p.steps
    prefixes = None
    if settings.step_phrasings > 1:  # its own stream, so the slip / opener / confidence draws above stay as they were
        phrasing_rng = np.random.default_rng(np.random.SeedSequence([settings.task_seed, int(p.id.rsplit("-", 1)[1]), 11]))
        prefixes = [STEP_PREFIXES[skewed_choice(u, settings.step_phrasings)] for u in phrasing_rng.random(len(steps))]
    text = synthetic.worked_solution(steps, opener=opener, prefixes=prefixes)
    if not settings.confidence:
        return text
    if settings.confidence_mode == "random":
        stated = rng.integers(1, 10) / 10
    else:
        stated = (0.3 if slip else 0.7) + 0.1 * int(draws[2] * 3)
    return text + f"\nCONFIDENCE: {stated:.1f}"


def encode_examples(problems: Sequence[synthetic.SyntheticProblem], tokenizer, settings: SFTSettings,
                    seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded training rows: tokens i32[N, seq_len], attention bool[N, seq_len], loss_mask bool[N, seq_len]
    (True where the *next* token is a response token, i.e. the positions whose prediction is trained)."""
    from capojax.data.templates import render_prompt

    eos = tokenizer.convert_tokens_to_ids(synthetic.IM_END)
    n = len(problems)
    tokens = np.full((n, seq_len), tokenizer.pad_token_id, np.int32)
    attn = np.zeros((n, seq_len), bool)
    loss = np.zeros((n, seq_len), bool)
    for i, p in enumerate(problems):
        prompt = tokenizer(render_prompt(p.problem, tokenizer=tokenizer, style=settings.template),
                           add_special_tokens=False)["input_ids"]
        resp = tokenizer(response_text(p, settings), add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt + resp)[:seq_len]
        tokens[i, : len(ids)] = ids
        attn[i, : len(ids)] = True
        loss[i, len(prompt) - 1 : len(ids) - 1] = True  # position t predicts token t+1
    return tokens, attn, loss


# ----------------------------------------------------------------------------------------------------
# Model, training step, generation
# ----------------------------------------------------------------------------------------------------


def model_config(settings: SFTSettings, tokenizer):
    from capojax.models import QwenConfig

    vocab = -(-len(tokenizer) // 64) * 64
    eos = tokenizer.convert_tokens_to_ids(synthetic.IM_END)
    return QwenConfig(
        vocab_size=vocab,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        num_kv_heads=settings.num_kv_heads,
        head_dim=settings.hidden_size // settings.num_heads,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        qkv_bias=True,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=eos,
        model_type="qwen2",
    )


def loss_fn(model, tokens: jax.Array, attn: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the response positions. tokens i32[B,T]; masks bool[B,T]."""
    logits = model(tokens, attention_mask=attn)  # f32[B, T, V]
    targets = jnp.roll(tokens, -1, axis=1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    m = loss_mask.astype(jnp.float32)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


@nnx.jit
def train_step(model, optimizer, tokens, attn, loss_mask):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, attn, loss_mask)
    optimizer.update(model, grads)
    return loss


@nnx.jit(static_argnames=("max_new_tokens",))
def generate(model, prompt_tokens: jax.Array, prompt_mask: jax.Array, key: jax.Array, temperature: jax.Array,
             *, max_new_tokens: int) -> jax.Array:
    """KV-cache decoding for the accuracy measurement (greedy when temperature == 0).

    prompt_tokens i32[B,P] left-padded, prompt_mask bool[B,P] -> completion i32[B, max_new_tokens], padded with
    the pad id 0 after the first EOS. (The RL loop samples with capojax.rollout; this is the SFT stage's own
    small evaluator so that building the base depends only on the model.)"""
    b, p = prompt_tokens.shape
    eos = jnp.asarray(model.config.eos_token_ids, jnp.int32)
    max_len = p + max_new_tokens
    cache = model.init_cache(b, max_len)
    cache_mask = jnp.zeros((b, max_len), bool).at[:, :p].set(prompt_mask)
    positions = jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1) - 1, 0)
    logits, cache = model.decode(prompt_tokens, positions=positions, cache=cache, cache_mask=cache_mask, index=0)
    next_pos = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)  # i32[B]

    def pick(logits, key):
        greedy = jnp.argmax(logits, axis=-1)
        sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)
        return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)

    def body(i, carry):
        tok, done, out, cache, cache_mask, key = carry
        out = out.at[:, i].set(jnp.where(done, 0, tok))
        done = done | jnp.isin(tok, eos)
        cache_mask = cache_mask.at[:, p + i].set(True)
        logits, cache = model.decode(tok[:, None], positions=(next_pos + i)[:, None], cache=cache,
                                     cache_mask=cache_mask, index=p + i)
        key, sub = jax.random.split(key)
        return pick(logits[:, -1], sub), done, out, cache, cache_mask, key

    key, sub = jax.random.split(key)
    first = pick(logits[:, -1], sub)
    init = (first, jnp.zeros((b,), bool), jnp.zeros((b, max_new_tokens), jnp.int32), cache, cache_mask, key)
    _, _, out, _, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, init)
    return out


def measure_accuracy(model, tokenizer, problems: Sequence[synthetic.SyntheticProblem], settings: SFTSettings, *,
                     temperature: float, seed: int = 0, max_new_tokens: int = 80, batch: int = 128) -> dict:
    """Accuracy (and, with ``confidence``, the fraction of parseable CONFIDENCE lines) on ``problems``."""
    from capojax.data.templates import render_prompt
    from capojax.rewards import grade, parse_confidence

    prompts = [tokenizer(render_prompt(p.problem, tokenizer=tokenizer, style=settings.template),
                         add_special_tokens=False)["input_ids"] for p in problems]
    correct, parsed, texts = [], [], []
    key = jax.random.key(seed)
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        toks, mask = pad_prompts(chunk, max(len(x) for x in chunk), tokenizer.pad_token_id)
        key, sub = jax.random.split(key)
        out = np.asarray(generate(model, jnp.asarray(toks), jnp.asarray(mask), sub, jnp.float32(temperature),
                                  max_new_tokens=max_new_tokens))
        for row, p in zip(out, problems[s : s + batch]):
            text = tokenizer.decode([t for t in row if t != 0], skip_special_tokens=True)
            texts.append(text)
            correct.append(grade(text, p.answer))
            parsed.append(parse_confidence(text) is not None)
    res = {"accuracy": float(np.mean(correct)), "n": len(problems), "example": texts[0]}
    if settings.confidence:
        res["confidence_parsed"] = float(np.mean(parsed))
    return res


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


def run_sft(settings: SFTSettings, out_dir: str, *, evaluate: bool = True) -> dict:
    """Trains the tiny base and saves model + tokenizer + sft_report.json into ``out_dir``; returns the report."""
    from capojax.models import save_pretrained
    from capojax.models.qwen import Qwen

    t0, cpu0 = time.time(), time.process_time()  # CPU time too: wall time on a shared machine says little
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = make_tokenizer(settings, out_dir)
    mcfg = model_config(settings, tokenizer)
    model = Qwen(mcfg, rngs=nnx.Rngs(settings.seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, warmup_steps=max(1, settings.steps // 10),
                                                  decay_steps=settings.steps, end_value=settings.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    # One fixed padded length for the whole run (one compilation): the longest row of a large sample.
    probe = synthetic.make_problems(512, seed=settings.task_seed, start=10**8, settings=settings.task)
    _, probe_attn, _ = encode_examples(probe, tokenizer, settings, seq_len=512)
    seq_len = int(-(-(probe_attn.sum(1).max() + 8) // 16) * 16)

    stop_set = synthetic.make_problems(settings.stop_problems, seed=settings.task_seed + STOP_SEED_OFFSET,
                                       settings=settings.task) if settings.stop_at_accuracy > 0 else []
    losses, checks = [], []
    t_train, check_s = time.time(), 0.0
    for step in range(settings.steps):
        problems = synthetic.make_problems(settings.batch_size, seed=settings.task_seed,
                                           start=step * settings.batch_size, settings=settings.task)
        tokens, attn, lmask = encode_examples(problems, tokenizer, settings, seq_len)
        loss = train_step(model, optimizer, jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(lmask))
        losses.append(float(loss))
        if step % 50 == 0 or step == settings.steps - 1:
            log.info("sft step %d loss %.4f (%.1fs)", step, losses[-1], time.time() - t_train)
        if stop_set and (step + 1) % settings.stop_check_every == 0 and step + 1 >= settings.stop_check_from:
            t_check = time.time()
            acc = measure_accuracy(model, tokenizer, stop_set, settings, temperature=1.0, seed=2)["accuracy"]
            check_s += time.time() - t_check
            checks.append({"step": step + 1, "accuracy": acc})
            log.info("sft step %d: stop-set accuracy %.3f (target %.2f)", step + 1, acc, settings.stop_at_accuracy)
            if acc >= settings.stop_at_accuracy:
                break
    train_s = time.time() - t_train
    train_cpu_s = time.process_time() - cpu0

    report: dict[str, Any] = {"settings": dataclasses.asdict(settings), "key": settings.key(),
                              "model_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
                              "seq_len": seq_len, "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
                              "losses": losses[::10], "train_seconds": train_s,
                              "train_cpu_seconds": train_cpu_s}
    if stop_set:
        reached = bool(checks) and checks[-1]["accuracy"] >= settings.stop_at_accuracy
        report["early_stop"] = {"target": settings.stop_at_accuracy, "reached": reached, "steps_trained": len(losses),
                                "checks": checks, "check_seconds": check_s}
        if not reached:
            log.warning("the tiny base never reached stop-set accuracy %.2f in %d steps (last check %s): it is the "
                        "fully trained one", settings.stop_at_accuracy, settings.steps, checks[-1] if checks else None)
    if evaluate:
        t_eval = time.time()
        held_out = synthetic.make_problems(settings.eval_problems, seed=settings.task_seed + EVAL_SEED_OFFSET,
                                           settings=settings.task)
        report["greedy"] = measure_accuracy(model, tokenizer, held_out, settings, temperature=0.0)
        report["sampled_t1"] = measure_accuracy(model, tokenizer, held_out, settings, temperature=1.0, seed=1)
        report["eval_seconds"] = time.time() - t_eval
    save_pretrained(model, mcfg, out_dir)
    report["total_seconds"] = time.time() - t0
    report["total_cpu_seconds"] = time.process_time() - cpu0
    with open(os.path.join(out_dir, "sft_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _is_complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "tokenizer.json", "sft_report.json"))


def ensure_tiny_base(cache_dir: str | os.PathLike, settings: SFTSettings = SFTSettings(), *,
                     evaluate: bool = True) -> str:
    """The folder of the tiny base for ``settings`` under ``cache_dir``, building it first if needed."""
    cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"tiny_base-{settings.key()}")
    if _is_complete(path):
        return path
    with open(os.path.join(cache_dir, f".tiny_base-{settings.key()}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same base: wait for it
        if _is_complete(path):
            return path
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("building the tiny SFT base %s (once; cached)", path)
        report = run_sft(settings, tmp, evaluate=evaluate)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete folder from an older crash
        os.replace(tmp, path)
        log.info("tiny base ready: %s (%.0fs, greedy acc %s)", path, report["total_seconds"],
                 report.get("greedy", {}).get("accuracy"))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache_dir", default="~/.cache/capojax")
    for f in dataclasses.fields(SFTSettings):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in ("bool", bool) else type(f.default)
        parser.add_argument(f"--{f.name}", type=kind, default=f.default)
    args = vars(parser.parse_args(argv))
    cache_dir = args.pop("cache_dir")
    logging.basicConfig(level=logging.INFO)
    path = ensure_tiny_base(cache_dir, SFTSettings(**args))
    with open(os.path.join(path, "sft_report.json")) as f:
        report = json.load(f)
    report.pop("losses", None)
    print(path)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
