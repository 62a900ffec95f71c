"""resolve_model_path: config.model -> the checkpoint folder to load, or a message that says what to do."""

import ml_collections
import pytest

from capojax import errors, sft
from capojax.models.resolve import ModelNotFoundError, resolve_model_path


def _model_cfg(**fields):
    from configs import base

    cfg = base.get_base_config().model
    cfg.update(fields)
    return cfg


def test_an_hf_folder_resolves_to_itself_with_the_user_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert resolve_model_path(_model_cfg(path="~/ckpt")) == str(tmp_path / "ckpt")


def test_tiny_builds_the_sft_base_from_the_configs_settings_in_the_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sft, "ensure_tiny_base", lambda cache, settings: calls.append((cache, settings)) or "built")
    cfg = _model_cfg(path="tiny", cache_dir=str(tmp_path / "cache"))
    cfg.tiny_base.steps = 7
    assert resolve_model_path(cfg) == "built"
    assert calls == [(str(tmp_path / "cache"), sft.SFTSettings.from_config(cfg.tiny_base))]
    assert calls[0][1].steps == 7


@pytest.mark.parametrize("field, value, says", [("stop_at_accuracy", 1.5, "stop_at_accuracy must be in [0, 1]"),
                                                 ("openers", 99, "openers must be in 0..")])
def test_bad_tiny_base_settings_are_a_config_error_naming_the_section(field, value, says):
    cfg = _model_cfg(path="tiny")
    cfg.tiny_base[field] = value
    with pytest.raises(errors.ConfigError, match=r"^config\.model\.tiny_base: ") as e:
        resolve_model_path(cfg)
    assert says in str(e.value)


def test_unset_path_names_the_hub_model_and_the_key_to_set():
    with pytest.raises(ModelNotFoundError, match="config.model.path is not set") as e:
        resolve_model_path(_model_cfg(path="", hf_name="Qwen/Qwen2.5-Math-7B"))
    message = str(e.value)
    assert "huggingface-cli download Qwen/Qwen2.5-Math-7B --local-dir /models/Qwen2.5-Math-7B" in message
    assert "--config.model.path=/models/Qwen2.5-Math-7B" in message
    with pytest.raises(ModelNotFoundError, match="or tiny for the built-in tiny base"):
        resolve_model_path(_model_cfg(path="", hf_name=""))


def test_a_folder_without_config_json_is_a_one_line_user_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json") as e:
        resolve_model_path(ml_collections.ConfigDict({"path": str(tmp_path), "hf_name": ""}))
    assert isinstance(e.value, errors.UserError) and isinstance(e.value, FileNotFoundError)
    assert "\n" not in str(e.value)
