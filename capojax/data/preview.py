"""What a preset will send: its first training prompt, rendered through the user's tokenizer, without weights.

    python -m capojax.train --config=configs/dcpo_qwen3_8b.py --config.model.tokenizer_path=DIR \\
        --config.print_prompt=True

shows the exact text (template, chat-template kwargs such as Qwen3's `enable_thinking`, the think block) and
token count of the first prompt of the first training batch, drawn exactly as the trainer draws it (same subset,
hold-out, length filter and shuffle), then exits. Only the tokenizer is read.
"""

from __future__ import annotations

import os

from capojax.data import pipeline

__all__ = ["preview_tokenizer_path", "first_training_prompt", "format_first_prompt"]


def preview_tokenizer_path(model_cfg) -> str:
    """The tokenizer folder the trainer would use: `tokenizer_path`, else the checkpoint folder (`model.path`),
    else, for `model.path="tiny"`, the cached tiny base. Never builds or loads a model."""
    if model_cfg.tokenizer_path:
        return os.path.expanduser(str(model_cfg.tokenizer_path))
    path = str(model_cfg.path or "")
    if path == "tiny":
        from capojax import sft

        key = sft.SFTSettings.from_config(model_cfg.tiny_base).key()
        cached = os.path.join(os.path.expanduser(str(model_cfg.cache_dir)), f"tiny_base-{key}")
        if os.path.isfile(os.path.join(cached, "tokenizer.json")):
            return cached
        raise FileNotFoundError(
            f"the tiny base is not built yet (no {cached}); printing a prompt does not build models. Run the "
            "config once, or pass --config.model.tokenizer_path=DIR (a folder with tokenizer.json).")
    if path and os.path.isfile(os.path.join(os.path.expanduser(path), "tokenizer.json")):
        return os.path.expanduser(path)
    name = str(getattr(model_cfg, "hf_name", "") or "the model")
    raise FileNotFoundError(
        f"no tokenizer to render the prompt with: config.model.tokenizer_path is unset and config.model.path="
        f"{path!r} holds no tokenizer.json. Pass --config.model.tokenizer_path=DIR, a folder with {name}'s "
        "tokenizer.json and tokenizer_config.json (the chat template lives there).")


def first_training_prompt(config, tokenizer) -> pipeline.PromptExample:
    """The first prompt of the trainer's first batch (capojax.trainer.loop.Trainer draws it the same way)."""
    data = pipeline.build_prompt_data(config.data, tokenizer)
    iterator = pipeline.make_iterator(data, batch_size=int(config.train.prompts_per_step),
                                      seed=int(config.data.shuffle_seed), multihost=False)
    batch = next(iterator)
    return pipeline.PromptExample(batch.ids[0], batch.problems[0], batch.answers[0], batch.prompts[0],
                                  tuple(batch.prompt_ids[0]))


def format_first_prompt(config, example: pipeline.PromptExample, tokenizer, tokenizer_dir: str) -> str:
    """A header (template, chat kwargs, tokenizer, think block, token count) and the prompt text verbatim."""
    kwargs = pipeline.chat_template_kwargs(config.data) or {}
    has_template = bool(getattr(tokenizer, "chat_template", None))
    think = "<think>" in example.prompt
    lines = [
        f"first training prompt of {config.algo.name} on {config.data.source} (row id {example.id})",
        f"template: {config.data.template}; chat_template_kwargs: {kwargs}",
        f"tokenizer: {tokenizer_dir} ({'its chat template' if has_template else 'no chat template: Qwen ChatML'})",
        f"think block in the prompt: {'yes' if think else 'no'}; {len(example.prompt_ids)} tokens",
        "----- prompt (verbatim) -----",
        example.prompt,
        "----- end of prompt -----",
    ]
    return "\n".join(lines)
