"""What the host's page faults cost the update pass: the same jitted update, A B in one process, with glibc's
default allocator behaviour and with freed memory kept for reuse.

    .venv/bin/python scripts/bench_update_faults.py [--vocab 1024] [--rounds 8] [--calls 5]

Why: XLA:CPU allocates an executable's temporaries with malloc at every call and frees them at its end (201 MB for
this update). glibc serves a block that large with a fresh mmap and returns it with munmap, so every call faults in
~50,000 new zeroed pages. The script makes every thread allocate from glibc's main heap (`M_ARENA_MAX = 1`, before
JAX starts its threads: a thread's own arena serves blocks over 64 MB by mmap whatever the settings), then alternates
rounds of `--calls` updates between
  glibc    mmap for large blocks, heap trimmed (glibc's defaults: M_MMAP_MAX 65536, M_TRIM_THRESHOLD 128 KiB);
  keep     no mmap, no trim (M_MMAP_MAX 0, M_TRIM_THRESHOLD -1): the freed block is reused by the next call,
and prints the median update time, minor page faults per update and the update MFU (`bench_vs_trl.train_flops`
against the f32 matmul peak measured between rounds). Shapes: bench_vs_trl's (2 prompts x 8 samples x 32 prompt + 64
new tokens, one mini-batch, no reference). Linux + glibc only.

This script isolates the cost with one arena for every thread, which capojax does not use: in the RL step it makes
the rollout's allocations contend for the arena's lock (rollout 0.16 -> 0.24-0.29 s; perf: twice the time in
_int_malloc, context switches on the lock). What capojax ships is `capojax.host_memory` (its docstring has the
reasons and measurements): synchronous CPU dispatch, so that the update allocates on the Python thread, from the
main heap; no mmap only during the update; and a block of the update's temporary size held between updates, so that
the rollout cannot nibble at it. Variants measured on the way (`bench_vs_trl.py`'s capojax worker, alternating runs):
- synchronous dispatch + no mmap for the whole process: update 0.31 -> 0.26 s but rollout 0.14 -> 0.17 s;
- no mmap only around the update, no held block: faster steps in 5 of 6 pairs, but a probe with a 128 MB temporary
  refaulted at every call in 1 process of 8 (small allocations between calls take part of the freed block);
- transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` at process start): 3x fewer faults; the update
  gained 0.04 s in one set of three pairs and nothing in another, with single updates of 0.5-0.6 s in between.
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MODES = {"glibc": ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 * 1024)),
         "keep": ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=8, help="A B pairs")
    ap.add_argument("--calls", type=int, default=5, help="timed updates per round (after one untimed)")
    args = ap.parse_args(argv)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        raise SystemExit("this benchmark sets glibc's malloc options: Linux + glibc only")
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    if libc.mallopt(M_ARENA_MAX, 1) != 1:  # before jax creates its threads
        raise SystemExit("mallopt(M_ARENA_MAX, 1) failed")

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    import jax
    import numpy as np
    from bench_train_step import matmul_peak
    from bench_vs_trl import build_checkpoint, train_flops

    from capojax.trainer.loop import Trainer
    from configs import tiny_grpo

    prompts, n, prompt_tokens, new = 2, 8, 32, 64
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pathlib.Path(tmp) / f"qwen2-v{args.vocab}"
        build_checkpoint(ckpt, args.vocab)
        config = tiny_grpo.get_config()
        config.model.path = str(ckpt)
        config.train.prompts_per_step = config.train.ppo_mini_batch = prompts
        config.train.micro_batch = 0
        config.rollout.n, config.rollout.max_new_tokens = n, new
        config.algo.kl_coef = 0.0
        config.log.val_every = 0
        config.checkpoint.every = 10**9
        trainer = Trainer(config, str(pathlib.Path(tmp) / "run"))
        rows, length = prompts * n, prompt_tokens + new
        rng = np.random.default_rng(0)
        batch = {"input_ids": rng.integers(10, args.vocab, (rows, length)).astype(np.int32),
                 "attention_mask": np.ones((rows, length), bool),
                 "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
                 "response_mask": np.ones((rows, new), bool),
                 "old_logp": np.full((rows, new), -7.0, np.float32),
                 "advantages": rng.normal(size=(rows, new)).astype(np.float32)}
        batch = {k: trainer._put(v) for k, v in batch.items()}
        update = trainer.programs.update
        params, opt_state = trainer.params, trainer.opt_state
        n_params = sum(int(x.size) for x in jax.tree.leaves(params))

        class Shape:
            pass

        shape = Shape()
        shape.prompts, shape.n, shape.prompt_tokens, shape.new = prompts, n, prompt_tokens, new
        flops = train_flops(n_params, args.vocab, shape)

        def call():
            nonlocal params, opt_state
            params, opt_state = update(params, opt_state, batch)[:2]
            jax.block_until_ready(params)

        call()  # compiles
        times = {mode: [] for mode in MODES}
        faults = {mode: [] for mode in MODES}
        peaks = []
        for r in range(args.rounds):
            for mode, settings in MODES.items():
                for param, value in settings:
                    libc.mallopt(param, value)
                if mode == "glibc":
                    libc.malloc_trim(0)  # hand back what `keep` held, as glibc would have
                call()  # the first call of a round settles the heap into the mode
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(args.calls):
                    start = time.perf_counter()
                    call()
                    times[mode].append(time.perf_counter() - start)
                faults[mode].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / args.calls)
            peaks.append(matmul_peak(reps=10))
            print(f"round {r + 1}: " + ", ".join(f"{m} {statistics.median(times[m][-args.calls:]):.3f} s"
                                                   for m in MODES), file=sys.stderr, flush=True)
        trainer.checkpointer.close()
        trainer.close()
    peak = statistics.median(peaks)
    print(f"\nUpdate pass, vocab {args.vocab}, {prompts} prompts x {n} x ({prompt_tokens} + {new}) tokens, "
          f"{flops / 1e9:.1f} GFLOP; {args.rounds} rounds x {args.calls} calls per mode, alternating; f32 matmul peak "
          f"{peak:.0f} GFLOP/s (median between rounds).\n")
    print("| host memory | update s (median) | minor faults / update | update MFU |")
    print("|---|---|---|---|")
    for mode in MODES:
        med = statistics.median(times[mode])
        print(f"| {mode} | {med:.3f} | {statistics.median(faults[mode]):,.0f} | {flops / med / 1e9 / peak:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
