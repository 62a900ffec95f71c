"""Tokenizer loading from an HF checkpoint folder, and the special ids the sampler needs.

A checkpoint folder normally holds `tokenizer.json` (the fast-tokenizer definition) next to
`tokenizer_config.json` (special tokens, chat template) and `generation_config.json` (the EOS ids that
end a generation). Only `tokenizer.json` is required: a bare `tokenizer.json` (e.g. the test fixture
`../shared/data/tokenizers/qwen2.5`) loads too, and the special ids then fall back to Qwen's
`<|endoftext|>` / `<|im_end|>` tokens when the vocabulary has them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from transformers import PreTrainedTokenizerFast

from capojax.errors import UserError

# Qwen2/2.5/3 special tokens, used only when the folder does not say which tokens pad and end a sequence.
_QWEN_PAD = "<|endoftext|>"
_QWEN_EOS = ("<|im_end|>", "<|endoftext|>")


class TokenizerNotFoundError(UserError, FileNotFoundError):
    """The tokenizer folder or its tokenizer.json does not exist."""


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """pad_id pads prompts/completions; eos_ids end a generated row (the sampler's default stop ids)."""

    pad_id: int
    eos_ids: tuple[int, ...]


def _folder_and_file(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    path = pathlib.Path(path)
    if path.is_file():
        return path.parent, path
    return path, path / "tokenizer.json"


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Loads the fast tokenizer of a checkpoint folder (or a `tokenizer.json` file itself).

    With `tokenizer_config.json` present, transformers reads special tokens and the chat template from
    it (`tokenizer.apply_chat_template` then works); otherwise the bare `tokenizer.json` is wrapped and
    `pad_token`/`eos_token` are set from Qwen's defaults when they exist in the vocabulary.
    """
    folder, tok_file = _folder_and_file(path)
    if not folder.exists():
        raise TokenizerNotFoundError(f"tokenizer path {folder} does not exist; pass an HF checkpoint folder "
                                "that contains tokenizer.json")
    if not tok_file.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise TokenizerNotFoundError(
            f"no tokenizer.json in {folder} (found: {present}); capojax needs the fast-tokenizer file. "
            "Copy tokenizer.json (and tokenizer_config.json) from the original Hugging Face checkpoint "
            "into this folder, or point the config at a folder that has it.")
    if (folder / "tokenizer_config.json").is_file() and tok_file.name == "tokenizer.json":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
        vocab = tokenizer.get_vocab()
        if tokenizer.pad_token is None and _QWEN_PAD in vocab:
            tokenizer.pad_token = _QWEN_PAD
        if tokenizer.eos_token is None:
            for tok in _QWEN_EOS:
                if tok in vocab:
                    tokenizer.eos_token = tok
                    break
    return tokenizer


def _eos_from_json(file: pathlib.Path) -> tuple[int, ...]:
    if not file.is_file():
        return ()
    value = json.loads(file.read_text()).get("eos_token_id")
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def special_token_ids(tokenizer: PreTrainedTokenizerFast,
                      checkpoint_dir: str | os.PathLike | None = None) -> SpecialIds:
    """pad and EOS ids for sampling.

    EOS ids come from, in order: `generation_config.json` then `config.json` in `checkpoint_dir`
    (what the model was trained to stop on, e.g. both `<|im_end|>` and `<|endoftext|>` for instruct
    models), else the tokenizer's eos token plus Qwen's end tokens found in the vocabulary.
    pad is the tokenizer's pad token, else `<|endoftext|>`, else the first EOS id.
    """
    eos: tuple[int, ...] = ()
    if checkpoint_dir is not None:
        folder, _ = _folder_and_file(checkpoint_dir)
        eos = _eos_from_json(folder / "generation_config.json") or _eos_from_json(folder / "config.json")
    if not eos:
        vocab = tokenizer.get_vocab()
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids += [vocab[t] for t in _QWEN_EOS if t in vocab]
        eos = tuple(dict.fromkeys(ids))  # dedupe, keep order
    if not eos:
        raise ValueError("cannot tell which token ends a sequence: the tokenizer has no eos_token and the "
                         "checkpoint folder has no generation_config.json/config.json with eos_token_id; "
                         "pass stop_token_ids explicitly in SamplingParams")
    if tokenizer.pad_token_id is not None:
        pad = int(tokenizer.pad_token_id)
    else:
        pad = tokenizer.get_vocab().get(_QWEN_PAD, eos[0])
    return SpecialIds(pad_id=int(pad), eos_ids=tuple(int(e) for e in eos))
