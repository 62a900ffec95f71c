"""End to end through the real CLI: each tiny config for a few steps, resume, and bad input."""

import json

import pytest

from e2e import FAST, read_metrics, run_cli

REQUIRED = ["reward/mean", "accuracy", "auc_mean", "ece", "lpm/correct", "lpm/wrong", "entropy", "clip_frac",
            "grad_norm", "response_len/mean", "frac_zero_std", "adv/abs_mean", "timing/rollout", "timing/reward",
            "timing/update", "timing/sync", "timing/old_logp", "tokens_per_s", "sampler/logp_gap_max"]


# tiny_grpo's run is in the slow step: the default suite runs GRPO's CLI end to end in the resume test below.
@pytest.mark.parametrize("config", ["tiny_capo", pytest.param("tiny_grpo", marks=pytest.mark.slow), "tiny_dcpo"])
def test_tiny_config_runs_end_to_end(config, tiny_base, tmp_path):
    run_cli(config, tmp_path, f"--config.model.path={tiny_base}", *FAST)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0 is the validation before training
    for row in rows[1:]:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"{config}: metrics.jsonl lacks {missing}"
        assert 0.0 <= row["accuracy"] <= 1.0 and row["update/skipped"] == 0
        assert row["response_len/mean"] > 0 and row["tokens_per_s"] > 0
        # recomputed log-probs agree with the sampler's (same weights, same temperature)
        assert row["sampler/logp_gap_max"] < 1e-3
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[2]
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {"problem", "gold", "response", "correct"} <= set(samples[0])
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    assert list((tmp_path / "tensorboard").iterdir())
    if config == "tiny_capo":
        # CAPO's noise mask reads the reference, so its perplexity and the KL to it are logged
        assert "ref_ppl/mean" in rows[1] and "kl" in rows[1]


def test_capo_without_the_noise_mask_loads_no_reference(tiny_base, tmp_path):
    run_cli("tiny_capo", tmp_path, f"--config.model.path={tiny_base}", *FAST, "--config.algo.use_ref_mask=False",
            "--config.log.val_every=0", "--config.checkpoint.export_hf=False")
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and not any(k.startswith("ref_ppl") or k == "kl" for k in rows[-1])
    assert rows[-1]["adv/abs_mean"] > 0 or rows[-1]["frac_zero_std"] == 1.0


def test_rerun_resumes_from_the_latest_checkpoint(tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *FAST, "--config.log.val_every=0"]
    run_cli("tiny_grpo", tmp_path, *args)
    first = read_metrics(tmp_path)
    proc = run_cli("tiny_grpo", tmp_path, *args, "--config.train.steps=3")
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == first  # the resumed run appended; nothing recomputed
    assert "done: 3 steps" in proc.stdout


def test_workdir_from_another_config_is_refused(tiny_base, tmp_path):
    args = [f"--config.model.path={tiny_base}", *FAST, "--config.train.steps=1", "--config.log.val_every=0"]
    run_cli("tiny_grpo", tmp_path, *args)
    proc = run_cli("tiny_grpo", tmp_path, *args, "--config.optim.lr=0.5", check=False)
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "optim.lr" in proc.stderr and "force_resume" in proc.stderr


def test_unknown_config_key_names_the_key(tmp_path):
    proc = run_cli("tiny_capo", tmp_path, "--config.algo.tua=0.3", check=False)
    assert proc.returncode != 0 and "tua" in proc.stderr


def test_a_key_of_another_algorithm_given_on_the_command_line_is_refused(tmp_path):
    """tau is CAPO's: given to GRPO it would be ignored, so the command stops, even at tau's default value."""
    proc = run_cli("tiny_grpo", tmp_path, "--config.algo.tau=0.6", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config.algo.tau=0.6 is read only by capo, not by config.algo.name='grpo', so it would be ignored; "
        "remove the tau setting (from the command line or the config file), or set --config.algo.name to an "
        "algorithm that reads it (capo)")
    assert not tmp_path.joinpath("checkpoints").exists()


@pytest.mark.slow
def test_a_nan_fault_at_the_advantage_boundary_skips_that_steps_updates(tiny_base, tmp_path):
    """CAPOJAX_FAULTS=nan@advantage:1 poisons step 1's advantages after the advantage phase: every update of step 1
    is skipped by the non-finite guard, step 2 trains normally."""
    run_cli("tiny_grpo", tmp_path, f"--config.model.path={tiny_base}", *FAST, "--config.log.val_every=0",
            env_extra={"CAPOJAX_FAULTS": "nan@advantage:1"})
    first, second = read_metrics(tmp_path)
    assert first["update/skipped"] == first["update/count"] == 2 and first["adv/abs_mean"] is None
    assert second["update/skipped"] == 0 and second["adv/abs_mean"] is not None


def test_missing_paper_checkpoint_says_where_to_get_it(tmp_path):
    proc = run_cli("capo_1p5b", tmp_path, check=False)
    assert proc.returncode != 0
    assert "Qwen/Qwen2.5-Math-1.5B" in proc.stderr and "--config.model.path" in proc.stderr


@pytest.mark.slow
def test_corrected_command_starts_on_the_workdir_of_a_failed_start(tiny_base, tmp_path):
    args = [*FAST, "--config.train.steps=1", "--config.log.val_every=0", "--config.checkpoint.export_hf=False"]
    good = f"--config.model.path={tiny_base}"
    for mistake in (["--config.model.path=/nonexistent"], [good, "--config.mesh.fsdp=16"], [good, "--config.algo.tua=1"]):
        failed = run_cli("tiny_grpo", tmp_path, *args, *mistake, check=False)
        assert failed.returncode == 2, failed.stderr[-3000:]
        assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing left behind
    run_cli("tiny_grpo", tmp_path, *args, good)  # before: refused as a "different config" workdir
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_print_prompt_shows_the_dcpo_presets_first_prompt_without_weights(tmp_path, qwen3_style_tokenizer_dir):
    """A user sees the exact first prompt a preset sends (template, chat kwargs, think block) through the tokenizer
    they pass; the paper preset has no model path, so loading weights would fail."""
    rows = [{"problem": f"Compute {i} + {i}.", "answer": str(2 * i)} for i in range(300)]
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("dcpo_qwen3_8b", tmp_path / "run", f"--config.model.tokenizer_path={qwen3_style_tokenizer_dir}",
                   f"--config.data.source={source}", "--config.data.subset_size=0", "--config.print_prompt=True")
    out = proc.stdout
    assert "chat_template_kwargs: {'enable_thinking': False}" in out and "think block in the prompt: yes" in out
    prompt = out.split("----- prompt (verbatim) -----\n")[1].split("\n----- end of prompt -----")[0]
    assert prompt.startswith("<|im_start|>system\n") and "CONFIDENCE: <number between 0 and 1>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert any(f"Compute {i} + {i}." in prompt for i in range(300))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written

    missing = run_cli("dcpo_qwen3_8b", tmp_path / "run", "--config.print_prompt=True", check=False)
    assert missing.returncode != 0 and "--config.model.tokenizer_path=DIR" in missing.stderr
