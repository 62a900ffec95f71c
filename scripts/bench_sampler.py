"""Tokens/s of capojax's JAX sampler vs transformers `generate` (torch, CPU) on the same random weights.

    .venv/bin/python scripts/bench_sampler.py [--batch 16] [--prompt-len 32] [--new-tokens 128] [--repeats 5]

The model is the `tiny-bench` preset (Qwen2: hidden 256, 4 layers, 4 heads x 64, 2 kv heads, intermediate 688,
vocab 1024, tied embeddings), randomly initialised by `init_model`, exported with our `save_pretrained` and loaded
by `transformers.AutoModelForCausalLM`, so both sides run the same float32 weights. Both sample at temperature 1
with no top-k / top-p and never stop early (EOS ignored): every run produces batch x new_tokens tokens.
Runs are interleaved (ours, theirs, ours, ...) after one warm-up each (our warm-up includes the compile) and the
table reports the median wall time of end-to-end `generate` calls (host token lists in, host arrays out).
A parity line checks that transformers' teacher-forced log-probs of our sampled tokens equal ours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from capojax.models import PRESETS, init_model, save_pretrained
from capojax.rollout import JaxRolloutEngine, SamplingParams


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    config = PRESETS["tiny-bench"]
    model = init_model(config, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    # ids >= 3 so that no prompt contains the preset's bos/eos ids
    prompts = rng.integers(3, config.vocab_size, (args.batch, args.prompt_len)).tolist()
    tokens_per_run = args.batch * args.new_tokens

    engine = JaxRolloutEngine(model, pad_id=0, eos_ids=())  # no stop ids: always new_tokens tokens
    params = SamplingParams(n=1, max_new_tokens=args.new_tokens, temperature=1.0, seed=args.seed)

    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, config, folder)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early, like ours
    input_ids = torch.tensor(prompts)
    attention = torch.ones_like(input_ids)

    def ours():
        return engine.generate(prompts, params)

    def theirs():
        with torch.inference_mode():
            return hf.generate(input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0,
                               top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               pad_token_id=0)

    t0 = time.perf_counter()
    rollout = ours()
    compile_s = time.perf_counter() - t0
    out_hf = theirs()
    assert rollout.tokens.shape == (args.batch, args.new_tokens) and rollout.mask.all()
    assert out_hf.shape == (args.batch, args.prompt_len + args.new_tokens)

    # Parity: transformers' teacher-forced log-probs of our samples == our sampler's log-probs.
    with torch.inference_mode():
        full = torch.cat([input_ids, torch.from_numpy(rollout.tokens).long()], dim=1)
        logp = torch.log_softmax(hf(full).logits[:, args.prompt_len - 1:-1].float(), -1)
        hf_lp = logp.gather(-1, torch.from_numpy(rollout.tokens).long()[..., None])[..., 0].numpy()
    parity = float(np.abs(hf_lp - rollout.logprobs).max())

    # CPU seconds (all threads of this process) next to wall time: on a shared machine wall time mostly
    # measures the neighbours, and multi-threaded torch suffers most from losing its cores.
    times = {"capojax (JAX sampler)": [], "transformers generate": []}
    cpu = {name: [] for name in times}
    for _ in range(args.repeats):
        for name, fn in (("capojax (JAX sampler)", ours), ("transformers generate", theirs)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    base = statistics.median(times["transformers generate"])
    base_cpu = statistics.median(cpu["transformers generate"])
    print(f"\nsampler benchmark: tiny-bench Qwen2 (hidden 256, 4 layers, vocab 1024), batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, T=1, EOS ignored; {args.repeats} interleaved "
          f"runs, median")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} devices), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average at start {os.getloadavg()[0]:.1f} (wall-time figures need an idle machine)")
    print(f"{'engine':<24}{'median s':>10}{'min s':>10}{'tok/s':>10}{'ms/step':>10}{'speedup':>10}"
          f"{'cpu s':>10}{'tok/cpu-s':>11}{'cpu speedup':>13}")
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        print(f"{name:<24}{med:>10.3f}{min(ts):>10.3f}{tokens_per_run / med:>10.0f}"
              f"{1e3 * med / args.new_tokens:>10.2f}{base / med:>9.2f}x"
              f"{med_cpu:>10.3f}{tokens_per_run / med_cpu:>11.0f}{base_cpu / med_cpu:>12.2f}x")
    print(f"first capojax call (compile + run): {compile_s:.2f} s; "
          f"max |logp ours - logp transformers teacher-forced| = {parity:.2e}")


if __name__ == "__main__":
    main()
