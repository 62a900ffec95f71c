"""Start a vLLM sidecar for RL rollouts on loopback and keep it running until Ctrl-C / SIGTERM.

    .venv/bin/python scripts/serve_vllm.py --model runs/tiny_capo/hf --port 8000
    .venv/bin/python scripts/serve_vllm.py --model /ckpt/Qwen2.5-Math-1.5B --dtype bfloat16 \
        --gpu-memory-utilization 0.35 -- --max-num-seqs 256

    # the server the trainer's config would launch, on its GPUs of the node (rollout.vllm_devices / co-location):
    .venv/bin/python scripts/serve_vllm.py --model /ckpt/Qwen2.5-Math-7B --config configs/capo_7b.py \
        --set rollout.vllm_devices=2 --set rollout.vllm_dtype=bfloat16

With --config, every server setting comes from that config exactly as `rollout.vllm_launch=True` would start it
(`capojax.rollout.vllm_engine.launch_config`): dtype, context, seed, and on a GPU node the layout of
`capojax.rollout.layout`, i.e. the last `rollout.vllm_devices` GPUs (CUDA_VISIBLE_DEVICES, tensor_parallel_size)
or a co-located memory share, refused with the numbers when it cannot fit. The trainer, started with the same
config (and the same --set values as --config.KEY=VALUE) and this server's loopback URL as `rollout.vllm_url`,
applies the same layout to itself; the script prints the environment it will set. Sleep mode is left off: only a
server the trainer launches is put to sleep. Without --config the flags below set the server up.

It waits until the server answers /health (printing the URL), or exits non-zero with the server's log tail.
vLLM runs from the venv made by scripts/setup_vllm_venv.sh (.venv-vllm) unless --python says otherwise. The RL
settings (processed log-probs, no prefix caching, dev-mode endpoints, capojax's worker extension for weight
reloads) are those of `capojax.rollout.vllm_server.ServerConfig`; flags after `--` go to vLLM verbatim.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import signal
import sys
import time

from capojax.errors import ConfigError
from capojax.rollout.vllm_server import ServerConfig, VLLMServerError, launch_vllm_server


def parse_args(argv):
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint folder (capojax.models.save_pretrained writes one)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; keep loopback (dev endpoints are open)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--python", default=None, help="interpreter with vllm (default: .venv-vllm/bin/python)")
    p.add_argument("--dtype", default="float32", help="float32 for parity with the trainer, bfloat16 on GPUs")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="share of GPU memory for vLLM; the JAX trainer keeps the rest")
    p.add_argument("--cpu-kvcache-gb", type=int, default=2, help="KV cache GiB on CPU builds")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--enforce-eager", action="store_true", help="no compilation: faster start, slower decode")
    p.add_argument("--prefix-caching", action="store_true",
                   help="allow prefix caching (the engine resets it after every weight sync)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default=None, help="server log file (default: a temp file, printed)")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--config", default=None,
                   help="a capojax config file: the server (and its GPUs) as the trainer would launch it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted key, Python literal or bare string), with --config")
    args = p.parse_args(argv)
    if args.set and not args.config:
        p.error("--set needs --config")
    if args.config:  # the config sets these; a flag beside it would be silently ignored
        given = [f"--{name.replace('_', '-')}" for name in CONFIG_SETS if getattr(args, name) != p.get_default(name)]
        if given:
            p.error(f"{', '.join(given)} with --config: the config sets the server; use --set rollout.vllm_... "
                    f"(or -- FLAG for vLLM itself)")
    return args, tuple(extra)


# Server flags that --config replaces (by rollout.vllm_dtype, vllm_max_model_len, ..., train.seed).
CONFIG_SETS = ("dtype", "max_model_len", "max_num_seqs", "gpu_memory_utilization", "cpu_kvcache_gb",
               "tensor_parallel_size", "enforce_eager", "prefix_caching", "seed")


def load_config(path: str, overrides: list[str]):
    """`get_config()` of a config file with dotted `KEY=VALUE` overrides (values parsed as Python literals)."""
    spec = importlib.util.spec_from_file_location("serve_config", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        node = config
        try:
            for name in parents:
                node = node[name]
            current = node[leaf]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"--set {key}: the config has no such key") from None
        node[leaf] = _typed(key, current, value)
    return config


def _typed(key: str, current, value):
    """`value` in the type of the config's `current` value (a bool only from True/False/true/false/1/0)."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value in (True, False, 0, 1):
            return bool(value)
        raise ConfigError(f"--set {key}={value!r}: expected true or false")
    if isinstance(current, (int, float)) and not isinstance(value, type(current)):
        try:
            return type(current)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--set {key}={value!r}: expected a {type(current).__name__}") from None
    return value


def server_config(args, extra, environ=None) -> tuple[ServerConfig, object]:
    """The server to start and the node layout it follows (None without --config or without GPUs)."""
    if not args.config:
        return ServerConfig(
            model=args.model, host=args.host, port=args.port, python=args.python, dtype=args.dtype,
            max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization, cpu_kvcache_gb=args.cpu_kvcache_gb,
            tensor_parallel_size=args.tensor_parallel_size, enforce_eager=args.enforce_eager,
            prefix_caching=args.prefix_caching, seed=args.seed, extra_args=extra, log_path=args.log), None
    from capojax.rollout.layout import server_layout
    from capojax.rollout.vllm_engine import launch_config

    config = load_config(args.config, args.set)
    layout = server_layout(config, environ)
    launched = launch_config(config, args.model, layout)
    sleepless = tuple(a for a in launched.extra_args if a != "--enable-sleep-mode")
    return dataclasses.replace(launched, host=args.host, port=args.port, log_path=args.log,
                               python=args.python or launched.python, extra_args=sleepless + extra), layout


def main(argv=None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, layout = server_config(args, extra)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if layout is not None:
        env = " ".join(f"{k}={v}" for k, v in layout.trainer_environment().items())
        print(f"node layout: {layout.describe()}\nthe trainer (same config, rollout.vllm_url on this host) sets "
              f"{env} for itself", flush=True)
    env_prefix = " ".join(f"{k}={v}" for k, v in config.env)
    print("starting:", (env_prefix + " " if env_prefix else "") + " ".join(config.command(args.port or 0)),
          flush=True)
    t0 = time.perf_counter()
    try:
        server = launch_vllm_server(config, startup_timeout=args.startup_timeout)
    except (VLLMServerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"vLLM server healthy at {server.url} (pid {server.pid}) after {time.perf_counter() - t0:.0f} s; "
          f"log: {server.log_path}. Ctrl-C stops it.", flush=True)
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["flag"]:
            if not server.alive():
                print(f"error: {server.describe_death()}", file=sys.stderr)
                return 1
            time.sleep(1.0)
    finally:
        server.stop()
    print("vLLM server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
