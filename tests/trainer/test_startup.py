"""Trainer start-up: a mistake is a one-line UserError and leaves the workdir absent; a failure after the workdir
was opened closes the checkpointer, the logger and the engine; a leftover workdir without checkpoints is taken
over. (tests/test_cli.py shows that a UserError prints as one line through the command line.)"""

import importlib.util
import json
import pathlib

import pytest

from capojax import checkpoint as ckpt_lib
from capojax import errors
from capojax.trainer import loop
from capojax.trainer.logger import MetricsLogger

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(model_path, **overrides):
    spec = importlib.util.spec_from_file_location("tiny_grpo", ROOT / "configs" / "tiny_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.path = str(model_path)
    config.train.steps, config.train.prompts_per_step, config.train.ppo_mini_batch = 2, 4, 2
    config.rollout.n, config.rollout.max_new_tokens, config.data.holdout = 4, 24, 4
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


@pytest.mark.parametrize("overrides, expected", [
    ({"model__path": "/nonexistent"}, "config.model.path='/nonexistent' has no config.json"),
    ({"mesh__fsdp": 16}, "config.mesh.fsdp=16, config.mesh.tp=1 is impossible here"),
    ({"mesh__tp": 3}, "config.mesh.fsdp=-1, config.mesh.tp=3 is impossible here"),
    ({"rollout__engine": "vlm"}, "config.rollout.engine='vlm' is not one of jax, vllm"),
    ({"model__dtype": "fp8"}, "config.model.dtype='fp8' is not a dtype"),
    ({"algo__name": "capo2"}, "unknown algorithm 'capo2'"),
    ({"train__ppo_mini_batch": 3}, "is not a multiple of config.train.ppo_mini_batch=3"),
    ({"data__source": "/nonexistent/train.jsonl"}, "/nonexistent/train.jsonl"),
    ({"rollout__engine": "vllm", "rollout__vllm_url": "http://127.0.0.1:1"}, "no vLLM server answers at rollout"),
    ({"rollout__engine": "vllm", "rollout__vllm_url": "127.0.0.1:8000"}, "config.rollout.vllm_url: base_url must"),
])
def test_start_up_mistake_is_a_one_line_user_error_and_writes_nothing(overrides, expected, tiny_base, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(errors.UserError, match=expected) as e:
        loop.Trainer(tiny_config(tiny_base, **overrides), str(workdir))
    assert "\n" not in str(e.value)
    assert not workdir.exists()


def test_failure_after_the_workdir_opened_closes_what_was_opened(tiny_base, tmp_path, monkeypatch):
    closed = []
    real_ckpt_close, real_logger_close = ckpt_lib.Checkpointer.close, MetricsLogger.close

    def ckpt_close(self):
        closed.append("checkpointer")
        real_ckpt_close(self)

    def logger_close(self):
        closed.append("logger")
        real_logger_close(self)

    def broken_engine(*args, **kwargs):
        raise RuntimeError("engine failed to start")

    monkeypatch.setattr(ckpt_lib.Checkpointer, "close", ckpt_close)
    monkeypatch.setattr(MetricsLogger, "close", logger_close)
    monkeypatch.setattr(loop, "make_rollout_engine", broken_engine)
    with pytest.raises(RuntimeError, match="engine failed to start"):
        loop.Trainer(tiny_config(tiny_base), str(tmp_path / "run"))
    assert closed == ["logger", "checkpointer"]  # last opened, first closed


def test_workdir_with_a_config_but_no_checkpoint_is_taken_over(tiny_base, tmp_path, caplog):
    # What a failed start of an earlier version left behind: another config, an empty checkpoints/, and rows of a
    # run that never saved.
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "3.orbax-checkpoint-tmp-99").mkdir(parents=True)  # unfinalized: not a checkpoint
    leftover = tiny_config("/nonexistent").to_dict()
    (workdir / "config.json").write_text(json.dumps(leftover, default=str))
    (workdir / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n')
    trainer = loop.Trainer(tiny_config(tiny_base), str(workdir))
    trainer.close()
    assert trainer.step == 0
    assert "taking it over" in caplog.text and "model.path: '/nonexistent' (workdir)" in caplog.text
    assert json.loads((workdir / "config.json").read_text())["model"]["path"] == str(tiny_base)
    assert json.loads((workdir / "config.json.prev").read_text())["model"]["path"] == "/nonexistent"
    assert (workdir / "metrics.jsonl").read_text() == ""  # the old run's rows are not this run's


def test_check_workdir_refuses_checkpoints_of_another_config_in_one_line(tmp_path):
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps({"optim": {"lr": 0.5}}))
    with pytest.raises(ckpt_lib.ConfigMismatchError) as e:
        ckpt_lib.check_workdir(tmp_path, {"optim": {"lr": 0.1}})
    assert isinstance(e.value, errors.UserError) and "\n" not in str(e.value)
    assert "up to step 4" in str(e.value) and "optim.lr: 0.5 (workdir) -> 0.1 (now)" in str(e.value)
    assert ckpt_lib.check_workdir(tmp_path, {"optim": {"lr": 0.1}}, force=True) is not None
    assert ckpt_lib.check_workdir(tmp_path, {"optim": {"lr": 0.5}}) is None  # same config: a plain resume
    assert ckpt_lib.check_workdir(tmp_path / "absent", {"optim": {"lr": 0.1}}) is None
