"""Rollout throughput: the embedded JAX sampler vs a vLLM sidecar on the same checkpoint and settings, plus the
seconds and GB/s of a weight sync to the sidecar. Prints one table.

    .venv/bin/python scripts/bench_rollout.py                      # tiny Qwen2 (Qwen2.5 vocab), built in a tmp dir
    .venv/bin/python scripts/bench_rollout.py --model /ckpt/Qwen2.5-Math-1.5B --dtype bfloat16 --prompts 64 --n 8
    .venv/bin/python scripts/bench_rollout.py --url http://127.0.0.1:8000 --model <the server's checkpoint>

Both engines get the same prompts (random token ids), the same SamplingParams and no stop ids, so every row
has exactly --max-new-tokens tokens and tok/s compare like for like. The first call of each engine (JAX compile,
vLLM warm-up) is timed separately and left out of tok/s. vLLM runs from .venv-vllm (scripts/setup_vllm_venv.sh).
On a CPU machine the vLLM CPU build pins its compute to the cores it does not reserve (1 of 2 here) while JAX
uses all of them: read the CPU numbers as a check that everything runs, not as a verdict.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "qwen2.5"


def build_tiny_checkpoint(folder: pathlib.Path, tokenizer_dir: pathlib.Path) -> pathlib.Path:
    """The tiny-bench preset with the Qwen2.5 vocabulary (head_dim 64, which vLLM's CPU attention needs)."""
    from capojax.models import PRESETS, init_model, save_pretrained

    if not (tokenizer_dir / "tokenizer.json").is_file():
        sys.exit(f"error: no tokenizer.json in {tokenizer_dir}; pass --tokenizer DIR or --model CHECKPOINT")
    config = PRESETS["tiny-bench"].replace(vocab_size=151936, bos_token_id=151643, eos_token_id=151643)
    model = init_model(config, seed=0)
    save_pretrained(model, config, folder, tokenizer_path=tokenizer_dir)
    return folder


def perturbed(model, seed: int, scale: float = 1e-3):
    new = nnx.clone(model)
    state = nnx.state(new, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(new, jax.tree.unflatten(jax.tree.structure(state), [
        x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
    return new


def time_engine(engine, prompts, params, repeats: int) -> dict[str, float]:
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    first = time.perf_counter() - t0
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, params)
        secs.append(time.perf_counter() - t0)
    tokens = int(out.lengths.sum())
    best = min(secs)
    return {"rows": out.num_rows, "tokens": tokens, "first": first, "seconds": best, "tok_s": tokens / best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF checkpoint folder (default: build a tiny one in a tmp dir)")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer folder for the tiny checkpoint")
    p.add_argument("--url", default=None, help="use this running vLLM server (serving --model) instead of starting one")
    p.add_argument("--dtype", default="float32", help="server dtype (float32 | bfloat16)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2, help="timed generate calls per engine (best is reported)")
    p.add_argument("--syncs", type=int, default=3, help="timed weight syncs")
    p.add_argument("--enforce-eager", action="store_true", help="start vLLM without compilation")
    p.add_argument("--skip-jax", action="store_true")
    p.add_argument("--logp-tol", type=float, default=2e-3, help="probe tolerance of the sync (float32 server)")
    args = p.parse_args()

    from capojax.models import load_pretrained
    from capojax.rollout import JaxRolloutEngine, SamplingParams
    from capojax.rollout.vllm_engine import VLLMRolloutEngine
    from capojax.rollout.vllm_server import ServerConfig, launch_vllm_server

    tmp = None
    if args.model is None:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-rollout-"))
        model_dir = build_tiny_checkpoint(tmp / "ckpt", pathlib.Path(args.tokenizer))
    else:
        model_dir = pathlib.Path(args.model)
    model, config = load_pretrained(model_dir)
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(0, min(config.vocab_size, 151643), args.prompt_len)]
               for _ in range(args.prompts)]
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0)
    pad = config.eos_token_ids[0] if config.eos_token_ids else 0
    rows: list[tuple[str, dict[str, float]]] = []
    server = None
    try:
        if not args.skip_jax:
            jax_engine = JaxRolloutEngine(model, pad_id=pad)
            rows.append(("jax sampler", time_engine(jax_engine, prompts, params, args.repeats)))
            jax_engine.close()

        startup = float("nan")
        url = args.url
        if url is None:
            t0 = time.perf_counter()
            server = launch_vllm_server(ServerConfig(
                model=str(model_dir), dtype=args.dtype, max_model_len=args.prompt_len + args.max_new_tokens + 8,
                cpu_kvcache_gb=1, enforce_eager=args.enforce_eager), startup_timeout=1800)
            startup = time.perf_counter() - t0
            url = server.url
        engine = VLLMRolloutEngine(url, pad_id=pad, server=server, template=model, logp_gap_tolerance=args.logp_tol)
        rows.append((f"vllm server ({args.dtype})", time_engine(engine, prompts, params, args.repeats)))
        syncs = [engine.update_weights(nnx.state(perturbed(model, seed=k + 1))) for k in range(args.syncs)]
        engine.close()
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"checkpoint: {model_dir if args.model else 'tiny-bench preset, vocab 151936'} "
          f"({config.num_params() / 1e6:.1f}M params); {args.prompts} prompts x n={args.n}, prompt "
          f"{args.prompt_len} tokens, {args.max_new_tokens} new tokens, T={args.temperature}; "
          f"devices: {jax.devices()[0].platform} x{len(jax.devices())}, {os.cpu_count()} cpus")
    print(f"{'engine':<24}{'rows':>6}{'tokens':>8}{'first call s':>14}{'best s':>10}{'tok/s':>10}")
    for name, r in rows:
        print(f"{name:<24}{r['rows']:>6}{r['tokens']:>8}{r['first']:>14.2f}{r['seconds']:>10.2f}{r['tok_s']:>10.1f}")
    if not np.isnan(startup):
        print(f"vLLM server startup: {startup:.0f} s")
    mean = lambda k: float(np.mean([s[k] for s in syncs]))  # noqa: E731
    print(f"\n{'weight sync (file transport)':<30}{'GB':>7}{'total s':>9}{'write s':>9}{'load s':>9}{'probe s':>9}"
          f"{'GB/s':>8}{'logp gap':>10}")
    print(f"{f'mean of {len(syncs)}':<30}{mean('sync/gb'):>7.3f}{mean('timing/sync'):>9.2f}"
          f"{mean('timing/sync_write'):>9.2f}{mean('timing/sync_load'):>9.2f}{mean('timing/sync_probe'):>9.2f}"
          f"{mean('sync/gbps'):>8.3f}{max(s['sync/logp_gap'] for s in syncs):>10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
