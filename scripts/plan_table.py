"""The dry-run memory plan of every paper preset as one markdown table (the README's plan table).

    .venv/bin/python scripts/plan_table.py [--presets capo_1p5b,capo_7b] [--device-memory-gb 80] [--json OUT]

Each row is `python -m capojax.train --config=configs/NAME.py --config.dry_run=True` in numbers (per device, GB):
the update, log-prob and reference log-prob phases compiled by XLA on 8 fake host devices, and the JAX sampler's
rollout phase (analytic). "headroom" is 1 - peak / device memory; the presets' micro-batches are chosen to keep
it at or above 15 %. Takes ~30 s per preset on 2 cores. `--json OUT` also writes every plan's exact bytes
(`MemoryPlan.to_dict()` without compile times) by preset, to compare two versions of the code field by field.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER_PRESETS = ("grpo_1p5b", "capo_1p5b", "gspo_1p5b", "grpo_7b", "capo_7b", "dcpo_qwen3_8b")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PAPER_PRESETS))
    p.add_argument("--device-memory-gb", type=float, default=80.0)
    p.add_argument("--json", default="", help="also write the exact plans (bytes) by preset to this file")
    args = p.parse_args(argv)
    # 8 fake host devices before jax starts (the presets plan one 8-GPU node).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    from capojax.memory_plan import GB, memory_plan

    exact = {}
    print("| preset | mesh | micro-batch | update | log-prob | ref log-prob | rollout (JAX sampler) | peak | headroom |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.presets.split(","):
        config = importlib.import_module(f"configs.{name}").get_config()
        config.device_memory_gb = args.device_memory_gb
        plan = memory_plan(config)
        ref = f"{plan.ref_logprob_peak / GB:.1f}" if plan.ref_logprob is not None else "-"
        headroom = 1 - plan.total / plan.budget
        print(f"| {name} | {plan.mesh['fsdp']}x{plan.mesh['tp']} | {plan.micro_batch_rows} | "
              f"{plan.update_peak / GB:.1f} | {plan.logprob_peak / GB:.1f} | {ref} | {plan.rollout_peak / GB:.1f} | "
              f"{plan.total / GB:.1f} | {100 * headroom:.0f}%{'' if plan.fits else ' (does not fit)'} |", flush=True)
        exact[name] = plan.to_dict()
        for program in ("update", "logprob", "ref_logprob"):
            if exact[name][program] is not None:
                exact[name][program].pop("compile_seconds")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(exact, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
