"""Tokenizer loading from checkpoint folders (real Qwen2.5 tokenizer from ../shared/data)."""

import json
import shutil

import pytest

from capojax.tokenizer import load_tokenizer, special_token_ids


def test_real_qwen_tokenizer_encodes_and_gives_special_ids(qwen_tokenizer_dir):
    tok = load_tokenizer(qwen_tokenizer_dir)
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert tok.decode([9707, 1879]) == "Hello world"
    ids = special_token_ids(tok)
    # a bare tokenizer.json: Qwen's end tokens from the vocabulary (<|im_end|>, <|endoftext|>); pad <|endoftext|>
    assert ids.pad_id == 151643
    assert set(ids.eos_ids) == {151645, 151643}
    # the tokenizer.json file itself is accepted too
    assert load_tokenizer(qwen_tokenizer_dir / "tokenizer.json")("Hello world")["input_ids"] == [9707, 1879]


def test_checkpoint_folder_config_and_generation_config(qwen_tokenizer_dir, tmp_path):
    shutil.copy(qwen_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    text = tok.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert special_token_ids(tok).eos_ids == (151645, 151643)
    # the model's generation_config.json decides which ids stop a generation
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151643}))
    assert special_token_ids(tok, tmp_path).eos_ids == (151643,)
    assert special_token_ids(tok, tmp_path).pad_id == 151643


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json.*config.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
