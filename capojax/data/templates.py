"""Prompt templates: Qwen2.5-Math chain-of-thought and the DCPO confidence variant.

Styles (``PROMPT_STYLES``):

- ``"qwen-math"``: the Qwen2.5-Math evaluation prompt (``qwen25-math-cot``): the system message
  ``QWEN_MATH_INSTRUCTION`` and the problem as the user message.
- ``"dcpo"``: the same, plus the request to end with a last line ``CONFIDENCE: <number between 0 and 1>``
  (parsed by :func:`capojax.rewards.parse_confidence`).

:func:`render_prompt` renders the messages with the tokenizer's chat template when it has one (real
Qwen checkpoints ship it in ``tokenizer_config.json``; Qwen3's template also takes
``chat_template_kwargs={"enable_thinking": False}``). Without a tokenizer, or with one that has no chat
template (e.g. the bare ``tokenizer.json`` fixture), it writes out the Qwen ChatML format that the
Qwen2.5 template produces for a system + user turn::

    <|im_start|>system
    {instruction}<|im_end|>
    <|im_start|>user
    {problem}<|im_end|>
    <|im_start|>assistant

(with a newline after ``assistant``: the generation prompt).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "QWEN_MATH_INSTRUCTION",
    "DCPO_INSTRUCTION",
    "PROMPT_STYLES",
    "CONFIDENCE_STYLES",
    "asks_for_confidence",
    "build_messages",
    "render_chatml",
    "render_prompt",
]

QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DCPO_INSTRUCTION = (
    QWEN_MATH_INSTRUCTION
    + " After your final answer, on the last line, state your confidence that your answer is correct"
    " in the format `CONFIDENCE: <number between 0 and 1>`."
)
PROMPT_STYLES: dict[str, str] = {"qwen-math": QWEN_MATH_INSTRUCTION, "dcpo": DCPO_INSTRUCTION}
# Styles whose prompt asks the model to state `CONFIDENCE: <p>`: only their responses carry a confidence to parse,
# so only they can feed an algorithm that needs one (`AlgorithmSpec.needs_confidence`).
CONFIDENCE_STYLES: frozenset[str] = frozenset({"dcpo"})


def asks_for_confidence(style: str) -> bool:
    """Whether prompts of `style` ask for a `CONFIDENCE: <p>` line (an unknown style is an error)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {sorted(PROMPT_STYLES)}")
    return style in CONFIDENCE_STYLES


def build_messages(problem: str, *, style: str = "qwen-math") -> list[dict[str, str]]:
    """Chat messages ``[system instruction, user problem]`` for ``style``."""
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"problem must be a non-empty string, got {problem!r:.80}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {sorted(PROMPT_STYLES)}")
    return [
        {"role": "system", "content": PROMPT_STYLES[style]},
        {"role": "user", "content": problem},
    ]


def render_chatml(messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """Qwen ChatML written out: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out


def render_prompt(
    problem: str,
    *,
    tokenizer: Any = None,
    style: str = "qwen-math",
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt string for one problem, ending with the assistant generation prompt.

    Args:
      problem: the problem statement.
      tokenizer: a ``transformers`` tokenizer; its ``chat_template`` is used when set.
      style: ``"qwen-math"`` or ``"dcpo"``.
      chat_template_kwargs: extra variables for the chat template (e.g. ``{"enable_thinking": False}``).
    """
    messages = build_messages(problem, style=style)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
    if chat_template_kwargs:
        raise ValueError(
            "chat_template_kwargs were given but the tokenizer has no chat template; load the checkpoint's "
            "tokenizer_config.json (it carries the template) or drop chat_template_kwargs"
        )
    return render_chatml(messages)
