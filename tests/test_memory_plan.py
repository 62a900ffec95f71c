"""The dry-run memory plan: exact parameter/optimizer bytes per device, XLA's numbers for the compiled programs,
model-config resolution without weights, and the CLI."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from capojax import memory_plan as mp
from capojax.models import PRESETS

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import capo_1p5b, tiny_capo  # noqa: E402

# Every dim divides its mesh axis on fsdp=4 x tp=2 except the 1 kv head (replicated over tp) and head_dim.
SMALL = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                      num_kv_heads=1, head_dim=32, vocab_size=96)


def small_config(fsdp=4, tp=2, micro_batch=8):
    c = tiny_capo.get_config()  # CAPO: reads the reference, so the reference log-prob pass is compiled too
    c.mesh.fsdp, c.mesh.tp = fsdp, tp
    c.data.max_prompt_len, c.rollout.max_new_tokens = 8, 8
    c.rollout.n = 4
    c.train.prompts_per_step, c.train.ppo_mini_batch, c.train.micro_batch = 8, 4, micro_batch
    c.model.ref_dtype = "bfloat16"
    return c


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    (folder / "config.json").write_text(json.dumps(SMALL.to_hf()))  # config only: the plan reads no weights
    c = small_config()
    c.model.path = str(folder)
    return mp.memory_plan(c)


MESH_AXIS = {"embed": "fsdp", "vocab": "tp", "q_heads": "tp", "kv_heads": "tp", "mlp": "tp"}


def expected_per_device(dtype_bytes: int, fsdp: int, tp: int) -> tuple[int, int]:
    """(per-device, total) parameter bytes of SMALL from its logical axes, written out independently of
    capojax.sharding: a dim is split by its mesh axis when it divides and the axis is still unused."""
    import jax
    from flax import nnx

    from capojax.models import Qwen

    state = nnx.state(nnx.eval_shape(lambda: Qwen(SMALL, rngs=nnx.Rngs(0))))
    sizes = {"fsdp": fsdp, "tp": tp}
    per_device = total = 0
    for var in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        n = math.prod(var.shape) * dtype_bytes
        total += n
        used, split = set(), 1
        for name, size in zip(var.get_metadata()["out_sharding"], var.shape):
            axis = MESH_AXIS.get(name)
            if axis and axis not in used and size % sizes[axis] == 0:
                used.add(axis)
                split *= sizes[axis]
        per_device += n // split
    return per_device, total


def test_param_and_optimizer_bytes_are_the_sharded_sizes(plan):
    per_device, total = expected_per_device(4, fsdp=4, tp=2)
    assert (plan.params, plan.params_total) == (per_device, total)
    assert plan.params < total / 4  # split over both axes for the big matrices, not just fsdp
    ref_per_device, ref_total = expected_per_device(2, fsdp=4, tp=2)  # bfloat16 reference
    assert (plan.reference, plan.reference_total) == (ref_per_device, ref_total)
    # AdamW: mu and nu like the params, plus int32 step counters (Adam's and the schedule's), replicated.
    assert 0 < plan.opt_state - 2 * plan.params <= 16
    assert plan.num_params == total // 4


def test_xla_arguments_match_the_planned_arrays(plan):
    rows, L, T = plan.rows_per_update, plan.seq_len, plan.response_len
    assert (rows, L, T, plan.micro_batch_rows, plan.rows_per_step) == (16, 16, 8, 8, 32)
    fsdp = plan.mesh["fsdp"]
    # input_ids + positions (i32), attention_mask (bool) [rows, L]; response_mask (bool), old_logp, advantages,
    # ref_logp (f32) [rows, T]; every batch array is split over fsdp.
    minibatch = rows // fsdp * (L * (4 + 4 + 1) + T * (1 + 4 + 4 + 4))
    assert plan.update.argument == plan.params + plan.opt_state + minibatch
    step_tokens = plan.rows_per_step // fsdp * L * (4 + 4 + 1)
    assert plan.logprob.argument == plan.params + step_tokens
    assert plan.ref_logprob.argument == plan.reference + step_tokens
    assert plan.update.alias == plan.params + plan.opt_state  # params and optimizer state are donated
    for program in (plan.update, plan.logprob, plan.ref_logprob):
        assert program.temp > 0


def test_total_is_the_peak_phase_and_fits_follows_the_budget(plan):
    assert plan.update_peak == (plan.update.argument + plan.update.output - plan.update.alias + plan.update.temp
                                + plan.update.code + plan.reference + plan.step_batch)
    assert plan.total == max(plan.update_peak, plan.logprob_peak, plan.ref_logprob_peak)
    assert plan.total > plan.resident
    assert dataclasses.replace(plan, budget=plan.total).fits
    small = dataclasses.replace(plan, budget=plan.total - 1)
    assert not small.fits
    text = mp.format_plan(small)
    assert "DOES NOT FIT" in text and "try:" in text
    assert "--config.model.remat=True" in text  # the tiny config runs without remat
    names = [row[0] for row in plan.rows()]
    assert names.count("TOTAL (peak over phases)") == 1
    json.dumps(plan.to_dict())  # serialisable for --config.plan_json


def test_replicated_activations_are_flagged(plan):
    # A chunk's whole f32 logits [rows, T, V / tp] in every device's temporaries means XLA did not split the rows.
    whole = plan.logprob_chunk_rows * plan.response_len * 151936 * 4 // plan.mesh["tp"]
    replicated = dataclasses.replace(plan, vocab_size=151936,
                                     logprob=dataclasses.replace(plan.logprob, temp=int(1.5 * whole)))
    assert mp.activations_replicated(replicated)
    assert "did not split the activations" in mp.format_plan(replicated)
    split = dataclasses.replace(replicated, logprob=dataclasses.replace(plan.logprob, temp=int(1.5 * whole) // 4))
    assert not mp.activations_replicated(split)
    assert not mp.activations_replicated(plan)  # the tiny vocabulary's logits are not what dominates here


def test_model_config_from_hub_name_folder_or_preset(tmp_path):
    c = capo_1p5b.get_config()
    assert c.model.path == ""
    cfg, source = mp.resolve_model_config(c.model)
    assert cfg == PRESETS["qwen2.5-math-1.5b"] and "Qwen/Qwen2.5-Math-1.5B" in source
    assert mp.hub_name_to_preset("Qwen/Qwen3-8B") == "qwen3-8b"
    (tmp_path / "config.json").write_text(json.dumps(SMALL.to_hf()))
    c.model.path = str(tmp_path)  # a folder with config.json wins over hf_name; no weights needed
    assert mp.resolve_model_config(c.model)[0] == SMALL
    c.model.path = ""
    c.model.hf_name = "someone/unknown-model"
    with pytest.raises(ValueError, match="no built-in preset"):
        mp.resolve_model_config(c.model)


def test_bad_micro_batch_says_what_to_do():
    c = small_config(micro_batch=6)
    with pytest.raises(ValueError, match="micro_batch=6 must divide"):
        mp.memory_plan(c)
    c = small_config(micro_batch=2)  # divides 16 and 32 rows but not over fsdp=4
    with pytest.raises(ValueError, match="multiple of 4"):
        mp.memory_plan(c)


def _cli(*overrides, config="configs/capo_1p5b.py", timeout=3600):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI must fake the devices itself
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "capojax.train", f"--config={config}", "--config.dry_run=True", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_dry_run_needs_no_checkpoint_tiny_shapes():
    out = _cli("--config.model.path=tiny-bench", "--config.data.max_prompt_len=8", "--config.rollout.max_new_tokens=8",
               "--config.rollout.n=2", "--config.train.prompts_per_step=8", "--config.train.ppo_mini_batch=4",
               "--config.train.micro_batch=8", "--config.model.remat=True", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh fsdp=8 x tp=1" in out.stdout and "TOTAL (peak over phases)" in out.stdout


@pytest.mark.slow
def test_cli_dry_run_full_size_1p5b():
    out = _cli("--config.train.micro_batch=8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1.54B params" in out.stdout and "mesh fsdp=8 x tp=1" in out.stdout
    total = [line for line in out.stdout.splitlines() if line.startswith("TOTAL")]
    assert len(total) == 1 and float(total[0].split()[4]) > 3 * 1.54 * 4 / 8  # params + Adam at least
    assert np.isfinite(float(total[0].split()[4]))


def test_rollout_phase_of_the_jax_sampler_counts_in_the_peak(plan):
    # SMALL on fsdp=4 x tp=2, float32 compute: 8 prompts (a power of two, a multiple of fsdp) x n=4 = 32 rows;
    # prompt 8 and completion 8 tokens each bucketed to 16 -> 32 slots; 1 kv head (not split over tp=2).
    assert (plan.rollout_rows, plan.rollout_slots) == (32, 32)
    assert plan.kv_cache_jax == 2 * SMALL.num_layers * 32 * 32 * 1 * SMALL.head_dim * 4 // 4
    assert plan.decode_weights == 0  # compute dtype == param dtype: the sampler casts nothing
    assert plan.sampler_logits == 3 * (32 // 4) * (SMALL.vocab_size // 2) * 4
    assert plan.rollout_peak == plan.resident + plan.kv_cache_jax + plan.sampler_logits
    big_cache = dataclasses.replace(plan, kv_cache_jax=10 * plan.total)
    assert big_cache.total == big_cache.rollout_peak  # the rollout phase is a phase like the others
    assert "peak: rollout phase (JAX sampler)" in mp.format_plan(big_cache)
    assert "fewer prompts per step" in mp.format_plan(dataclasses.replace(big_cache, budget=plan.total))
    vllm = dataclasses.replace(big_cache, rollout_engine="vllm")  # the server holds its own KV cache
    assert vllm.rollout_peak == 0 and vllm.total == plan.total


def test_bf16_sampler_decodes_with_a_half_size_copy_of_f32_weights():
    from capojax.memory_plan import jax_sampler_memory

    got = jax_sampler_memory(PRESETS["qwen2.5-math-7b"], prompts=128, n=8, prompt_len=1024, new_tokens=3072, fsdp=4,
                             tp=2, compute_itemsize=2, params_per_device=1000, param_itemsize=4)
    assert got["decode_weights"] == 500
    assert (got["rows"], got["slots"]) == (1024, 1024 + 4096)  # the completion buffer is bucketed to 4096
    assert got["kv_cache"] == 2 * 28 * 1024 * 5120 * 4 * 128 * 2 // 8
