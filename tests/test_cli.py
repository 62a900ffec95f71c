"""User mistakes read as one line: `error: ...` on stderr, no traceback, exit code 2, nothing left in the workdir.

Through the real CLI: the mistakes caught while flags are parsed (no jax import: fast) and one of each kind that
goes through the trainer's start (jax imported). The other start-up mistakes (mesh, engine, dtype, missing
model) are checked in-process in tests/trainer/test_startup.py: any UserError prints as one line, shown here."""

import importlib.util
import json
import subprocess
import sys

import ml_collections
import pytest

from capojax import cli, errors
from e2e import ROOT, run_cli


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == errors.USER_ERROR_EXIT_CODE, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr and "orbax" not in proc.stderr.lower()
    return lines[0]


def assert_no_workdir_or_empty(workdir) -> None:
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(p.name for p in workdir.iterdir())


def _config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"algo": {"tau": 0.5, "name": "capo", "kl_coef": 0.0},
                                      "model": {"path": "", "tiny_base": {"steps": 3}}})


# ---------------------------------------------------------------------------------------- key suggestions


def test_flat_keys_and_has_key():
    config = _config()
    assert sorted(cli.flat_keys(config)) == ["algo.kl_coef", "algo.name", "algo.tau", "model.path",
                                             "model.tiny_base.steps"]
    assert cli.has_key(config, "model.tiny_base.steps") and cli.has_key(config, "model.tiny_base")
    assert not cli.has_key(config, "algo.tua") and not cli.has_key(config, "algo.tau.x")


def test_unknown_key_message_suggests_the_nearest_key():
    line = cli.unknown_key_message("config", "algo.tua", _config())
    assert "'algo.tua'" in line and "did you mean --config.algo.tau" in line and "\n" not in line
    # nothing close: list the keys of the section the user was aiming at
    line = cli.unknown_key_message("config", "algo.zzzzzzzz", _config())
    assert "did you mean" not in line
    assert "keys of algo are:" in line and all(k in line for k in ("algo.tau", "algo.name", "algo.kl_coef"))


# ---------------------------------------------------------------------------------------- train CLI


@pytest.mark.parametrize("args, expected", [
    (["--config.algo.tua=0.5"], "did you mean --config.algo.tau"),
    (["--config.train.stesp=3"], "did you mean --config.train.steps"),
    (["--config.train.steps=abc"], "--config.train.steps=abc"),
])
def test_train_user_error_is_one_line_and_writes_nothing(args, expected, tmp_path):
    workdir = tmp_path / "run"
    line = assert_one_line_error(run_cli("tiny_grpo", workdir, *args, check=False))
    assert expected in line
    assert_no_workdir_or_empty(workdir)


def test_paper_config_without_model_path_is_one_line(tmp_path):
    # Before: a 20-line traceback, then orbax's "cannot schedule new futures after interpreter shutdown".
    workdir = tmp_path / "run"
    line = assert_one_line_error(run_cli("capo_1p5b", workdir, check=False))
    assert "config.model.path is not set" in line and "Qwen/Qwen2.5-Math-1.5B" in line
    assert_no_workdir_or_empty(workdir)


def test_missing_config_file_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "capojax.train", "--config=configs/no_such_config.py", f"--workdir={tmp_path}/run"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "configs/no_such_config.py" in assert_one_line_error(proc)


def test_foreign_workdir_is_refused_in_one_line_before_loading_the_model(tmp_path):
    # A workdir with a finalized checkpoint (an empty step folder is enough for orbax) of another config; the
    # refusal comes before the model (tiny: built on first use, minutes) is resolved.
    spec = importlib.util.spec_from_file_location("tiny_grpo", ROOT / "configs" / "tiny_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = module.get_config()
    saved.optim.lr = 0.5
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict(), default=str))
    line = assert_one_line_error(run_cli("tiny_grpo", tmp_path, check=False))
    assert "different config" in line and "optim.lr: 0.5 (workdir)" in line and "force_resume" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json"]


def test_verbose_shows_the_traceback(tmp_path):
    for extra, env in (["--verbose"], None), ([], {cli.DEBUG_ENV: "1"}):
        proc = run_cli("tiny_grpo", tmp_path / "run", "--config.algo.tua=1", *extra, env_extra=env, check=False)
        assert proc.returncode == errors.USER_ERROR_EXIT_CODE
        assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: --config.algo.tua")


def test_internal_errors_keep_their_traceback(tmp_path):
    # A bug (here: a non-UserError raised from inside the run) is not shortened to one line.
    code = ("import sys; from capojax import cli\n"
            "def main(argv):\n    raise RuntimeError('bug')\n"
            "sys.argv = ['prog']; cli.run(main)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: bug" in proc.stderr


def test_stopped_by_signal_exits_with_the_stop_code():
    code = ("import sys; from capojax import cli, errors\n"
            "def main(argv):\n    raise errors.StoppedBySignal('SIGTERM', 7, '/w/checkpoints')\n"
            "sys.argv = ['prog']; cli.run(main)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == errors.STOPPED_EXIT_CODE
    assert proc.stderr.strip() == ("stopped by SIGTERM at step 7; checkpoint saved in /w/checkpoints; "
                                   "rerun the same command to resume")


# ---------------------------------------------------------------------------------------- argparse (evaluate)


def test_argparse_errors_are_one_line_with_a_suggestion(capsys):
    from capojax.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        cli.run_argparse(main, ["--checkpoint", "/nonexistent", "--out", "/tmp/x", "--nn", "4"])
    assert exit_info.value.code == errors.USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unrecognized arguments: --nn 4 (did you mean --n?)")


def test_evaluate_bad_checkpoint_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "capojax.evaluate", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "is not a folder" in assert_one_line_error(proc)
