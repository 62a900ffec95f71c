"""Seconds per RL step, tokens/s and model FLOP utilisation of the tiny config, against a matmul peak measured
in the same run (the higher of this process's and a fresh one's with JAX's defaults, see `reference_peak`).

    .venv/bin/python scripts/bench_train_step.py [--config configs/tiny_grpo.py] [--steps 5] [--prompts 2 --n 8 --new 64]

The default shape, 2 prompts x 8 samples x 64 new tokens, is the one scripts/bench_vs_trl.py runs side by side
with TRL's GRPOTrainer (same checkpoint and prompt ids, alternating runs). Model FLOPs count 2 x params per token for
every forward token (sampling, old log-probs unless the step is on-policy, reference) and 6 x params per trained token (forward + backward);
attention FLOPs are left out, as is usual for MFU.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    """f32 GFLOP/s of a jitted n x n matmul (median of reps)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def reference_peak() -> float:
    """`matmul_peak` in a fresh process with JAX's defaults. This one runs with `capojax.host_memory`'s synchronous
    dispatch, under which a lone 1024^3 matmul has measured from as fast to ~20 % slower; the MFU is set against the
    higher of the two, which never flatters it."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
            "from bench_train_step import matmul_peak; print(matmul_peak())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def load_config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny_grpo.py")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step that compiles)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new", type=int, default=64, help="max new tokens")
    ap.add_argument("--model-path", default="", help="HF checkpoint (default: the config's tiny SFT base)")
    args = ap.parse_args(argv)

    from capojax.host_memory import configure_host
    from capojax.trainer.loop import Trainer

    configure_host()  # as every capojax command does, before jax starts its backend

    config = load_config(args.config)
    config.train.prompts_per_step = args.prompts
    config.train.ppo_mini_batch = args.prompts
    config.train.steps = args.steps + 1
    config.rollout.n = args.n
    config.rollout.max_new_tokens = args.new
    config.log.val_every = 0
    config.checkpoint.every = 10**9
    if args.model_path:
        config.model.path = args.model_path
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        n_params = sum(x.size for x in jax.tree.leaves(trainer.params))
        peak = max(reference_peak(), matmul_peak())
        rows = []
        for i in range(args.steps + 1):
            m = trainer.train_step().metrics
            if i:  # the first step compiles
                rows.append(m)
        trainer.checkpointer.close()
        trainer.close()
    peak_after = max(reference_peak(), matmul_peak())

    def med(key):
        return statistics.median(r.get(key, 0.0) for r in rows)

    step_s = med("timing/step")
    new_tokens = med("tokens")
    rows_n = args.prompts * args.n
    # forward tokens per pass: prompt + completion for every row (bucketed shapes are what actually runs)
    # sampling, old log-probs (none on an on-policy step: the update's forward gives them), reference
    forward_passes = 1 + (0 if trainer.programs.old_logp_in_update else 1) + (1 if trainer.needs_reference else 0)
    flops = 2 * n_params * new_tokens * forward_passes + 6 * n_params * new_tokens
    achieved = flops / step_s / 1e9
    peak_mid = statistics.median([peak, peak_after])
    print(f"\nRL step on {args.config}: {rows_n} samples x <= {args.new} new tokens, {n_params / 1e6:.2f}M params, "
          f"algorithm {config.algo.name}, {jax.device_count()} device(s), median of {len(rows)} steps\n")
    print(f"| {'metric':<28} | {'value':>10} |")
    print(f"|{'-' * 30}|{'-' * 12}|")
    for key in ("timing/step", "timing/rollout", "timing/reward", "timing/old_logp", "timing/ref_logp",
                "timing/advantage", "timing/update", "timing/sync"):
        if any(key in r for r in rows):
            print(f"| {key + ' (s)':<28} | {med(key):>10.3f} |")
    print(f"| {'new tokens / step':<28} | {new_tokens:>10.0f} |")
    print(f"| {'tokens/s (new, whole step)':<28} | {new_tokens / step_s:>10.0f} |")
    print(f"| {'model GFLOP/s':<28} | {achieved:>10.2f} |")
    print(f"| {'matmul peak GFLOP/s (f32)':<28} | {peak_mid:>10.1f} |")
    print(f"| {'MFU':<28} | {achieved / peak_mid:>10.2%} |")
    print("\nagainst TRL's GRPOTrainer on the same shapes: scripts/bench_vs_trl.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
