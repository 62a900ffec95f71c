"""`python -m capojax.train --config=configs/NAME.py [--config.a.b=value ...] [--workdir=DIR]`

Trains with the algorithm named by `config.algo.name` (grpo | drgrpo | gspo | capo | dcpo). Rerunning the same
command on the same workdir resumes from its latest checkpoint. `--config.dry_run=True` prints the per-device
memory plan of the configured model and mesh without loading weights; `--config.print_prompt=True` prints the first
training prompt as the tokenizer renders it (`--config.model.tokenizer_path=DIR`) and exits.

A user mistake (unset model path, misspelt key, wrong value, foreign workdir, impossible mesh, unreachable vLLM
URL) prints one line `error: ...` and exits with 2; `--verbose` or CAPOJAX_DEBUG=1 shows the traceback. SIGTERM or
SIGINT saves a checkpoint of the last completed step and exits with 75 (rerun the same command to resume); a
second Ctrl-C exits at once with 130. See `capojax.errors` for the exit codes.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from capojax import cli, errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/NAME.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, tensorboard). "
                               "Default: runs/<config file name>.")


def _maybe_init_distributed() -> None:
    """Multi-host: with JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID set (or on a cluster JAX
    auto-detects, signalled by CAPOJAX_DISTRIBUTED=1), join the job before any device is touched."""
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("CAPOJAX_DISTRIBUTED") == "1":
        # CPU hosts (tests, CPU clusters) need a collectives backend for cross-process reductions.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]), process_id=int(os.environ["JAX_PROCESS_ID"])
        )
    elif os.environ.get("CAPOJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def _print_first_prompt(config) -> int:
    """`--config.print_prompt=True`: the exact first training prompt, through the tokenizer only (no weights)."""
    from capojax.data.preview import first_training_prompt, format_first_prompt, preview_tokenizer_path
    from capojax.tokenizer import load_tokenizer
    from capojax.trainer.loop import check_algorithm_fits_data

    check_algorithm_fits_data(config)
    tokenizer_dir = preview_tokenizer_path(config.model)
    tokenizer = load_tokenizer(tokenizer_dir)
    print(format_first_prompt(config, first_training_prompt(config, tokenizer), tokenizer, tokenizer_dir), flush=True)
    return 0


def _check_algo_keys_given(config) -> None:
    """`--config.algo.tau=0.6` with `algo.name=grpo` is an error even at tau's default value: the user asked for a
    setting the algorithm ignores (the Trainer checks values; only the command line knows what was given)."""
    from capojax.trainer.settings import check_algo_keys

    given = config_flags.get_override_values(flags.FLAGS["config"])
    check_algo_keys(config.algo, explicit=[key.split(".", 1)[1] for key in given if key.startswith("algo.")])


def main(argv) -> int:
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments {argv[1:]}; settings go through --config.KEY=VALUE")
    config = _CONFIG.value
    if config is None:
        raise errors.UserError("--config=configs/NAME.py is required (see configs/ for the available files)")
    _check_algo_keys_given(config)
    # Libraries (orbax, jax) log every checkpoint at INFO; keep their warnings and our own progress.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("capojax").setLevel(logging.INFO)
    workdir = _WORKDIR.value or os.path.join("runs", pathlib.Path(flags.FLAGS["config"].config_filename).stem)
    if config.get("print_prompt"):
        return _print_first_prompt(config)
    if not config.dry_run:  # GPU node + launched vLLM server: the trainer's GPUs / memory share, before jax starts
        from capojax.rollout.layout import apply_trainer_environment

        apply_trainer_environment(config)
    if config.dry_run:  # fake the planned mesh's devices on the host when fewer exist (before jax's backend starts)
        from capojax.memory_plan import planned_device_count, request_host_devices

        request_host_devices(planned_device_count(config))
    _maybe_init_distributed()

    if config.dry_run:
        from capojax.memory_plan import print_memory_plan

        print_memory_plan(config)
        return 0

    from capojax.trainer.loop import Trainer

    trainer = Trainer(config, workdir)
    try:
        final = trainer.run()
    finally:
        trainer.close()
    keys = ("accuracy", "reward/mean", "auc_mean", "ece", "val/accuracy", "val/auc_mean", "val/ece")
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in keys if k in final and final[k] is not None)
    print(f"done: {trainer.step} steps in {workdir}; last step: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
