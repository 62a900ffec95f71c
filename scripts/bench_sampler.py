"""Tokens/s of capojax's JAX sampler vs transformers `generate` (torch, CPU) on the same random weights.

    .venv/bin/python scripts/bench_sampler.py [--batch 16] [--prompt-len 32] [--new-tokens 128] [--repeats 5]
    .venv/bin/python scripts/bench_sampler.py --ab HEAD --no-transformers   # this tree's sampler vs HEAD's, A/B

The model is the `tiny-bench` preset (Qwen2: hidden 256, 4 layers, 4 heads x 64, 2 kv heads, intermediate 688,
vocab 1024, tied embeddings), randomly initialised by `init_model`, exported with our `save_pretrained` and loaded
by `transformers.AutoModelForCausalLM`, so both sides run the same float32 weights. Both sample at temperature 1
with no top-k / top-p and never stop early (EOS ignored): every run produces batch x new_tokens tokens.
Runs are interleaved (ours, theirs, ours, ...) after one warm-up each (our warm-up includes the compile) and the
table reports the median wall time of end-to-end `generate` calls (host token lists in, host arrays out).
A parity line checks that transformers' teacher-forced log-probs of our sampled tokens equal ours.

`--ab REV` adds the sampler of git revision REV (`git show REV:capojax/rollout/sampler.py`, imported from a
temporary file beside this tree's package, so only the sampler module differs) to the interleaved runs, with
the same weights, prompts and seed: the before/after check of a sampler change on a machine shared with other
jobs, where only interleaved medians mean something. Same numerics give the same tokens; the table says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from capojax.models import PRESETS, init_model, save_pretrained
from capojax.rollout import JaxRolloutEngine, SamplingParams

REPO = pathlib.Path(__file__).resolve().parent.parent


def sampler_at(rev: str, folder: str):
    """The module `capojax/rollout/sampler.py` as of git revision `rev`, imported under its own name."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:capojax/rollout/sampler.py"], check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as err:
        sys.exit(f"--ab {rev}: cannot read capojax/rollout/sampler.py at that revision ({err.stderr.strip()})")
    path = os.path.join(folder, "sampler_at_rev.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("capojax_sampler_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    parser.add_argument("--ab", metavar="REV", help="also time the sampler of this git revision (A/B)")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers generate")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    config = PRESETS["tiny-bench"]
    model = init_model(config, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    # ids >= 3 so that no prompt contains the preset's bos/eos ids
    prompts = rng.integers(3, config.vocab_size, (args.batch, args.prompt_len)).tolist()
    tokens_per_run = args.batch * args.new_tokens

    params = SamplingParams(n=1, max_new_tokens=args.new_tokens, temperature=1.0, seed=args.seed)
    ours_name = "capojax (JAX sampler)"
    engines = {ours_name: JaxRolloutEngine(model, pad_id=0, eos_ids=())}  # no stop ids: always new_tokens tokens
    tmp = tempfile.TemporaryDirectory()
    if args.ab:
        old = sampler_at(args.ab, tmp.name)
        engines = {f"capojax @{args.ab}": old.JaxRolloutEngine(model, pad_id=0, eos_ids=()), **engines}
    runs = {name: (lambda e=e: e.generate(prompts, params)) for name, e in engines.items()}

    compile_s = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        rollout = fn()
        compile_s[name] = time.perf_counter() - t0
        assert rollout.tokens.shape == (args.batch, args.new_tokens) and rollout.mask.all()
    rollout = runs[ours_name]()
    notes = [f"first call (compile + run) of {name}: {secs:.2f} s" for name, secs in compile_s.items()]
    if args.ab:
        before = runs[f"capojax @{args.ab}"]()
        notes.append(f"@{args.ab} vs this tree: same tokens in {np.mean(before.tokens == rollout.tokens):.1%} of "
                     f"places, max |logp difference| = {np.abs(before.logprobs - rollout.logprobs).max():.2e}")

    if not args.no_transformers:
        with tempfile.TemporaryDirectory() as folder:
            save_pretrained(model, config, folder)
            hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None  # never stop early, like ours
        input_ids = torch.tensor(prompts)
        attention = torch.ones_like(input_ids)

        def theirs():
            with torch.inference_mode():
                return hf.generate(input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0,
                                   top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                   pad_token_id=0)

        out_hf = theirs()
        assert out_hf.shape == (args.batch, args.prompt_len + args.new_tokens)
        runs["transformers generate"] = theirs
        # Parity: transformers' teacher-forced log-probs of our samples == our sampler's log-probs.
        with torch.inference_mode():
            full = torch.cat([input_ids, torch.from_numpy(rollout.tokens).long()], dim=1)
            logp = torch.log_softmax(hf(full).logits[:, args.prompt_len - 1:-1].float(), -1)
            hf_lp = logp.gather(-1, torch.from_numpy(rollout.tokens).long()[..., None])[..., 0].numpy()
        notes.append(f"max |logp ours - logp transformers teacher-forced| = "
                     f"{float(np.abs(hf_lp - rollout.logprobs).max()):.2e}")

    # CPU seconds (all threads of this process) next to wall time: on a shared machine wall time mostly
    # measures the neighbours, and multi-threaded torch suffers most from losing its cores.
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    tmp.cleanup()

    baseline = "transformers generate" if "transformers generate" in runs else next(iter(runs))
    base = statistics.median(times[baseline])
    base_cpu = statistics.median(cpu[baseline])
    print(f"\nsampler benchmark: tiny-bench Qwen2 (hidden 256, 4 layers, vocab 1024), batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, T=1, EOS ignored; {args.repeats} interleaved "
          f"runs, median; speedup over {baseline}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} devices), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average at start {os.getloadavg()[0]:.1f} (wall-time figures need an idle machine)")
    width = max(24, *(len(name) + 2 for name in runs))
    print(f"{'engine':<{width}}{'median s':>10}{'min s':>10}{'tok/s':>10}{'ms/step':>10}{'speedup':>10}"
          f"{'cpu s':>10}{'tok/cpu-s':>11}{'cpu speedup':>13}")
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        print(f"{name:<{width}}{med:>10.3f}{min(ts):>10.3f}{tokens_per_run / med:>10.0f}"
              f"{1e3 * med / args.new_tokens:>10.2f}{base / med:>9.2f}x"
              f"{med_cpu:>10.3f}{tokens_per_run / med_cpu:>11.0f}{base_cpu / med_cpu:>12.2f}x")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
