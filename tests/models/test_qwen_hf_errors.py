"""A checkpoint that does not match its config.json fails before any weight is used, naming what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.numpy import load_file, save_file

from capojax.models import load_pretrained, weight_table


def _copy(hf_checkpoints, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(hf_checkpoints[name].path, dst)
    return dst, load_file(dst / "model.safetensors")


def _rewrite(path, tensors):
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_table_names_every_tensor_transformers_writes(hf_checkpoints):
    for ckpt in hf_checkpoints.values():
        from capojax.models import QwenConfig

        config = QwenConfig.from_json(ckpt.path)
        names = {e.hf_name.format(i=i) for e in weight_table(config) for i in range(config.num_layers)}
        assert names == set(load_file(ckpt.path / "model.safetensors"))


def test_missing_tensor(hf_checkpoints, tmp_path):
    path, tensors = _copy(hf_checkpoints, "qwen3", tmp_path)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    _rewrite(path, tensors)
    with pytest.raises(ValueError, match=r"missing from the checkpoint: model\.layers\.1\.self_attn\.k_norm\.weight"):
        load_pretrained(path)


def test_wrong_shape_names_tensor_and_both_shapes(hf_checkpoints, tmp_path):
    path, tensors = _copy(hf_checkpoints, "qwen2-untied", tmp_path)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:100]
    _rewrite(path, tensors)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight has shape \(100, 64\) in the "
                                         r"checkpoint but config\.json implies \(128, 64\)"):
        load_pretrained(path)


def test_unknown_tensor(hf_checkpoints, tmp_path):
    path, tensors = _copy(hf_checkpoints, "qwen2-tied", tmp_path)
    tensors["model.layers.0.self_attn.o_proj.bias"] = tensors["model.norm.weight"]
    _rewrite(path, tensors)
    with pytest.raises(ValueError, match=r"does not know: model\.layers\.0\.self_attn\.o_proj\.bias"):
        load_pretrained(path)


def test_tied_checkpoint_may_carry_lm_head_copy(hf_checkpoints, tmp_path):
    path, tensors = _copy(hf_checkpoints, "qwen2-tied", tmp_path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    _rewrite(path, tensors)
    _, config = load_pretrained(path)
    assert config.tie_word_embeddings


def test_untied_config_needs_lm_head(hf_checkpoints, tmp_path):
    path, _ = _copy(hf_checkpoints, "qwen2-tied", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: lm_head\.weight"):
        load_pretrained(path)


def test_unknown_architecture(hf_checkpoints, tmp_path):
    path, _ = _copy(hf_checkpoints, "qwen2-tied", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture.*mistral"):
        load_pretrained(path)


def test_sharded_index_lists_missing_file(hf_checkpoints, tmp_path):
    path, tensors = _copy(hf_checkpoints, "qwen2-tied", tmp_path)
    (path / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name in tensors}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00001.safetensors"):
        load_pretrained(path)


def test_no_weights_or_no_folder(tmp_path, hf_checkpoints):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    shutil.copy(hf_checkpoints["qwen3"].path / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(tmp_path)
