"""One RL step of capojax against TRL's GRPOTrainer, side by side on the same checkpoint and shapes.

    bash scripts/setup_trl_venv.sh                 # once: .venv-trl (torch 2.13.0, trl, transformers, ...)
    .venv/bin/python scripts/bench_vs_trl.py [--vocabs 1024,151936] [--rounds 2] [--steps 3]
    .venv/bin/python scripts/bench_vs_trl.py --ab HEAD --vocabs 1024 --rounds 4   # this tree against HEAD's capojax

The checkpoint is built once per vocabulary size by transformers (Qwen2: hidden 256, 4 layers, 4 heads / 2 kv
heads, tied embeddings, random weights) with a word-level tokenizer ("t10" .. "t{V-1}" and three specials, so prompt ids
decode to text and back to exactly the same ids). Both trainers then get:

- the same prompts: `--prompts` prompts of `--prompt-tokens` token ids (TRL gets their text and re-tokenizes it;
  the worker checks that the ids come back unchanged);
- `--n` samples per prompt, exactly `--new` new tokens (EOS ignored: capojax samples with no stop ids, TRL with
  min_new_tokens = max_completion_length), temperature 1;
- no reference model (GRPO, KL 0), one optimizer update per step, float32 everywhere;
- a reward of 0 for every sample (capojax grades the random text with math-verify and finds no boxed answer; TRL
  gets a function returning 0.0), so neither spends anything on rewards beyond that.

Threads: TRL runs with torch's default threads (one per core), its own default and its faster setting on an idle
machine. On a loaded one those OpenMP threads spin against the other processes (transformers' `generate` of the
same 16 x 64 tokens once took 5.6 s with torch's 2 threads and 0.83 s with one): `--trl-threads 1` then gives
TRL its better setting. capojax keeps XLA's defaults.

Host memory: the capojax worker starts as every capojax command does (`capojax.host_memory.configure_host`:
synchronous CPU dispatch; the trainer then keeps the update's 201 MB of temporaries in resident pages instead of
page-faulting them afresh at every update); `--default-host` runs it with JAX's and glibc's
defaults instead. TRL runs as shipped.

Each run is its own process (no compile cache carried between runs), and the two alternate, capojax then TRL,
`--rounds` times: A B A B. Every run does one warm-up step and `--steps` timed steps. The table has every run and
the medians: seconds per step, rollout (generation) seconds, update seconds (capojax: the PPO update; TRL: the
optimizer step's forward/backward, i.e. step time minus `_generate_and_score_completions`), update MFU
(`train_flops` per update second against an f32 matmul peak: the higher of the one this process, with JAX's
defaults, measures right before and after each capojax run and the one the worker measures between its steps; the
machine's speed drifts between minutes and the worker runs with synchronous dispatch, under which a lone 1024^3
matmul has measured from as fast to ~20 % slower; the higher one never flatters the MFU), and TRL's time over
capojax's.

`--ab REV` puts capojax at git revision REV (`git archive`, its own worker) in TRL's place: the same alternating
runs and table, to tell whether a change made the step faster beyond the machine's drift between minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TRL_PYTHON = REPO / ".venv-trl" / "bin" / "python"
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 256, 4, 4, 2, 688
EOS_ID, PAD_ID, UNK_ID = 2, 0, 3


# ------------------------------------------------------------------------------------------- the checkpoint


def build_checkpoint(folder: pathlib.Path, vocab: int) -> None:
    """Random Qwen2 saved by transformers + a word-level tokenizer over the whole vocabulary."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=2048,
        tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    # Special tokens are matched before splitting, so none may be a prefix of a word ("t2" would split "t277").
    special = {PAD_ID: "<pad>", EOS_ID: "<eos>", UNK_ID: "<unk>"}
    words = {special.get(i, f"t{i}"): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")
    fast.save_pretrained(folder)


def make_prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(10, min(vocab, 1000), length)] for _ in range(count)]


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    """f32 GFLOP/s of a jitted n x n matmul, on this process's jax (bench_train_step's measurement, imported late so
    that the TRL side of this script never imports jax)."""
    from bench_train_step import matmul_peak as measure

    return measure(n, reps)


# ------------------------------------------------------------------------------------------- workers


def run_capojax(args) -> dict:
    """One capojax run: Trainer on the checkpoint, the fixed prompts every step, no stop ids."""
    sys.path.insert(0, str(REPO))
    from capojax.host_memory import configure_host

    configure_host()  # as every capojax command does, before jax starts its backend

    import jax

    from capojax.data.pipeline import PromptBatch
    from capojax.trainer.loop import Trainer
    from configs import tiny_grpo

    prompts = json.loads(args.prompt_ids)
    config = tiny_grpo.get_config()
    config.model.path = args.ckpt
    config.train.prompts_per_step = config.train.ppo_mini_batch = len(prompts)
    config.train.steps = args.steps + 1
    config.train.micro_batch = args.micro_batch
    config.rollout.n = args.n
    config.rollout.max_new_tokens = args.new
    config.rollout.temperature = 1.0
    config.algo.kl_coef = 0.0
    config.train.old_logp_from_update = not args.old_logp_pass
    config.data.max_prompt_len = max(128, len(prompts[0]))
    config.log.val_every = 0
    config.checkpoint.every = 10**9
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        assert not trainer.needs_reference
        # EOS ignored: every row runs to max_new_tokens, as TRL's with min_new_tokens.
        trainer.special = dataclasses.replace(trainer.special, eos_ids=())
        trainer.engine.eos_ids = ()
        batch = PromptBatch(ids=[str(i) for i in range(len(prompts))], problems=["-"] * len(prompts),
                            answers=["0"] * len(prompts), prompts=["-"] * len(prompts), prompt_ids=prompts)

        class Same:  # the same prompts every step; nothing to rewind
            def __next__(self):
                return batch

            def get_state(self):
                return {}

            def set_state(self, state):
                pass

        trainer.iterator = Same()
        n_params = sum(int(x.size) for x in jax.tree.leaves(trainer.params))
        steps, peaks = [], []
        for i in range(args.steps + 1):
            m = trainer.train_step().metrics
            if i:
                steps.append({"step": m["timing/step"], "rollout": m["timing/rollout"], "update": m["timing/update"],
                              "tokens": m["tokens"]})
            peaks.append(matmul_peak(reps=10))  # between steps; the parent takes the higher of this and its own
        trainer.checkpointer.close()
        trainer.close()
    import capojax

    return {"side": "capojax", "params": n_params, "steps": steps, "worker_peak_gflops": statistics.median(peaks),
            "capojax": str(pathlib.Path(capojax.__file__).resolve().parents[1])}


def run_trl(args) -> dict:
    """One TRL run in .venv-trl: GRPOTrainer with the same prompts (as text), shapes and settings."""
    import torch
    import transformers
    import trl
    from datasets import Dataset

    torch.manual_seed(0)
    prompts = json.loads(args.prompt_ids)
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(args.ckpt)  # Auto picks Qwen2's BPE class
    texts = [" ".join(f"t{i}" for i in p) for p in prompts]
    for text, ids in zip(texts, prompts):
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != ids:
            raise SystemExit(f"the tokenizer does not give back the prompt ids: {got[:8]}... != {ids[:8]}...")
    total_steps = args.steps + 1
    dataset = Dataset.from_list([{"prompt": t} for t in texts] * total_steps)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    def zero_reward(completions, **kwargs):
        return [0.0] * len(completions)

    with tempfile.TemporaryDirectory() as out:
        config = trl.GRPOConfig(
            output_dir=out, per_device_train_batch_size=len(prompts) * args.n, num_generations=args.n,
            gradient_accumulation_steps=1, max_completion_length=args.new, temperature=1.0, beta=0.0,
            learning_rate=1e-6, max_steps=total_steps, logging_steps=1, save_strategy="no", report_to=[],
            use_cpu=True, bf16=False, fp16=False, seed=0, shuffle_dataset=False,
            generation_kwargs={"min_new_tokens": args.new})
        trainer = trl.GRPOTrainer(model=model, reward_funcs=zero_reward, args=config, train_dataset=dataset,
                                  processing_class=tokenizer)
        timings: dict[str, float] = {}

        def timed(name, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            return wrapper

        trainer._generate_and_score_completions = timed("prepare", trainer._generate_and_score_completions)
        if hasattr(trainer, "_generate"):
            trainer._generate = timed("generate", trainer._generate)
        steps: list[dict] = []

        class Clock(transformers.TrainerCallback):
            def on_step_begin(self, *a, **k):
                timings.clear()
                self.start = time.perf_counter()

            def on_step_end(self, *a, **k):
                step = time.perf_counter() - self.start
                prepare = timings.get("prepare", 0.0)
                steps.append({"step": step, "rollout": timings.get("generate", prepare),
                              "update": step - prepare, "tokens": len(prompts) * args.n * args.new})

        trainer.add_callback(Clock())
        trainer.train()
    a = torch.ones(1024, 1024)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return {"side": "trl", "params": n_params, "steps": steps[1:], "trl": trl.__version__,
            "torch_peak_gflops": 2 * 1024**3 / statistics.median(times) / 1e9}


# ------------------------------------------------------------------------------------------- orchestration


def run_worker(side: str, args, ckpt: pathlib.Path, prompts, repo: pathlib.Path = REPO) -> dict:
    """One worker process of `side` on the capojax tree `repo` (this one, or --ab's revision)."""
    python = sys.executable if side == "capojax" else str(TRL_PYTHON)
    cmd = [python, str(repo / "scripts" / "bench_vs_trl.py"), "--worker", side, "--ckpt", str(ckpt),
           "--prompt-ids", json.dumps(prompts), "--steps", str(args.steps), "--n", str(args.n), "--new", str(args.new),
           "--micro-batch", str(args.micro_batch)] + (["--old-logp-pass"] if args.old_logp_pass else [])
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CAPOJAX_KEEP_HOST_MEMORY")}
    if args.default_host:
        env["CAPOJAX_KEEP_HOST_MEMORY"] = "0"
    env.setdefault("JAX_PLATFORMS", "cpu")
    if side == "trl" and args.trl_threads:
        env["OMP_NUM_THREADS"] = str(args.trl_threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{side} run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def run_capojax_worker(args, ckpt: pathlib.Path, prompts, repo: pathlib.Path = REPO) -> dict:
    """A capojax run of the tree `repo`, with its MFU reference: the higher of this process's peak around the run
    and the worker's between its steps, so that neither measurement's slow moment flatters the MFU."""
    before = matmul_peak(reps=10)
    run = run_worker("capojax", args, ckpt, prompts, repo=repo)
    run["peak_gflops"] = max(statistics.median([before, matmul_peak(reps=10)]), run["worker_peak_gflops"])
    imported = run.get("capojax", str(repo.resolve()))  # workers older than --ab do not say
    if imported != str(repo.resolve()):
        raise SystemExit(f"the worker of {repo} imported capojax from {imported}")
    return run


def train_flops(params: int, vocab: int, args) -> float:
    """FLOPs of one update (forward + backward = 6 per weight and token): the transformer body over every prompt and
    completion token, the output head (the tied embedding) over the completion tokens only, which is where both
    trainers compute logits; the embedding lookup is no matmul. Attention's own FLOPs are left out."""
    rows = args.prompts * args.n
    head = vocab * HIDDEN
    return 6 * (params - head) * rows * (args.prompt_tokens + args.new) + 6 * head * rows * args.new


def checkout(rev: str, folder: pathlib.Path) -> pathlib.Path:
    """The tree of git revision `rev` in `folder` (git archive: no worktree left behind)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--ab {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    if not (folder / "scripts" / "bench_vs_trl.py").is_file():
        raise SystemExit(f"--ab {rev}: that revision has no scripts/bench_vs_trl.py worker")
    return folder


def ratio(pairs: list[tuple[dict, dict]], key: str) -> float:
    """B's median `key` seconds over A's."""
    return statistics.median(med(b, key) for _, b in pairs) / statistics.median(med(a, key) for a, _ in pairs)


def print_table(results: dict, args, sides: tuple[str, str], columns: list[tuple[str, str]]) -> None:
    """Every run and the medians of both sides; `columns`: (header, key) of B's median seconds over A's."""
    print("| vocab | run | side | s/step | rollout s | update s | update MFU | "
          + " | ".join(header for header, _ in columns) + " |")
    print("|---" * (7 + len(columns)) + "|")
    for vocab, pairs in results.items():
        for label, picks in [(str(i + 1), [p]) for i, p in enumerate(pairs)] + [("median", pairs)]:
            for side in (0, 1):
                runs = [p[side] for p in picks]
                update = statistics.median(med(r, "update") for r in runs)
                # a capojax run's own reference peak (run_capojax_worker); TRL's update against its pair's capojax one
                peak = statistics.median(p[side].get("peak_gflops", p[0]["peak_gflops"]) for p in picks)
                mfu = train_flops(runs[0]["params"], vocab, args) / update / 1e9 / peak
                ratios = [f"{ratio(picks, key):.2f}x" if side else "" for _, key in columns]
                print(f"| {vocab} | {label} | {sides[side]} | {statistics.median(med(r, 'step') for r in runs):.3f} | "
                      f"{statistics.median(med(r, 'rollout') for r in runs):.3f} | {update:.3f} | {mfu:.1%} | "
                      + " | ".join(ratios) + " |")


def med(run: dict, key: str) -> float:
    return statistics.median(s[key] for s in run["steps"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocabs", default="1024,151936")
    ap.add_argument("--rounds", type=int, default=2, help="A B pairs per vocabulary")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=0, help="capojax train.micro_batch (0 = the whole batch)")
    ap.add_argument("--trl-threads", type=int, default=0,
                    help="OMP_NUM_THREADS of the TRL runs (0 = torch's default); see the module docstring")
    ap.add_argument("--old-logp-pass", action="store_true",
                    help="capojax runs the old-log-prob pass even on on-policy steps (TRL never does)")
    ap.add_argument("--default-host", action="store_true",
                    help="capojax runs with JAX's and glibc's defaults, not capojax.host_memory's (see above)")
    ap.add_argument("--ab", metavar="REV", help="capojax at this git revision instead of TRL (see above)")
    ap.add_argument("--worker", choices=("capojax", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        result = run_capojax(args) if args.worker == "capojax" else run_trl(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if not args.ab and not TRL_PYTHON.is_file():
        raise SystemExit(f"{TRL_PYTHON} not found: run `bash scripts/setup_trl_venv.sh` first")

    b_name = f"capojax @{args.ab}" if args.ab else "TRL"
    peak_before = matmul_peak()
    results: dict[int, list[tuple[dict, dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        other = checkout(args.ab, pathlib.Path(tmp) / "ab") if args.ab else None
        for vocab in [int(v) for v in args.vocabs.split(",")]:
            ckpt = pathlib.Path(tmp) / f"qwen2-v{vocab}"
            build_checkpoint(ckpt, vocab)
            prompts = make_prompts(args.prompts, args.prompt_tokens, vocab)
            results[vocab] = []
            for r in range(args.rounds):
                a = run_capojax_worker(args, ckpt, prompts)
                b = run_capojax_worker(args, ckpt, prompts, other) if other else run_worker("trl", args, ckpt, prompts)
                results[vocab].append((a, b))
                print(f"vocab {vocab} round {r + 1}: capojax {med(a, 'step'):.2f} s/step, {b_name} "
                      f"{med(b, 'step'):.2f} s/step", file=sys.stderr, flush=True)
    peak = statistics.median([peak_before, matmul_peak()])
    if args.ab:
        print(f"\nRL step, capojax (this tree, A) vs capojax @{args.ab} (B): {args.prompts} prompts x {args.n} samples "
              f"x {args.prompt_tokens} prompt + {args.new} new tokens, fp32, one update per step. Runs alternate A B A "
              f"B; each is the median of {args.steps} steps after a warm-up; f32 matmul peak {peak:.1f} GFLOP/s "
              f"before/after all runs; each run's MFU against the higher of its own two peaks (see above).\n")
        print_table(results, args, ("A", f"B @{args.ab}"), [("B / A update", "update"), ("B / A step", "step")])
        return 0

    trl_version = results[next(iter(results))][0][1].get("trl", "?")
    print(f"\nRL step, capojax vs TRL {trl_version} GRPOTrainer: {args.prompts} prompts x {args.n} samples x "
          f"{args.prompt_tokens} prompt + {args.new} new tokens, fp32, no reference, one update per step; "
          f"Qwen2 hidden {HIDDEN}, {LAYERS} layers, tied. Runs alternate A B A B; each is the median of "
          f"{args.steps} steps after a warm-up; TRL with OMP_NUM_THREADS={args.trl_threads or 'default'}. "
          f"f32 matmul peak (jax's defaults, this process): {peak:.1f} GFLOP/s before/after all runs; medians "
          f"{statistics.median(a['peak_gflops'] for pairs in results.values() for a, _ in pairs):.1f} "
          f"(the MFU's reference) and "
          f"{statistics.median(a['worker_peak_gflops'] for pairs in results.values() for a, _ in pairs):.1f} "
          f"inside the capojax workers between steps; each run's MFU is set against the higher of its two.\n")
    print_table(results, args, ("capojax", "TRL"), [("TRL / capojax", "step")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
