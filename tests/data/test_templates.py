"""Prompt templates: Qwen2.5-Math CoT and DCPO, with and without a tokenizer chat template."""
import pytest

from capojax.data.templates import (
    DCPO_INSTRUCTION,
    PROMPT_STYLES,
    asks_for_confidence,
    QWEN_MATH_INSTRUCTION,
    build_messages,
    render_chatml,
    render_prompt,
)
from capojax.rewards import parse_confidence

# The message loop of the Qwen2.5 chat template, with Qwen3's enable_thinking branch (which a Qwen2.5 prompt never
# takes): the same string the session fixture builds its tokenizer with.
from conftest import QWEN3_CHAT_TEMPLATE as QWEN25_TEMPLATE  # noqa: E402

PROBLEM = "What is $1+1$?"


def test_fallback_is_qwen_chatml():
    assert render_prompt(PROBLEM) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_dcpo_asks_for_a_parseable_confidence_line():
    prompt = render_prompt(PROBLEM, style="dcpo")
    assert DCPO_INSTRUCTION in prompt and QWEN_MATH_INSTRUCTION in DCPO_INSTRUCTION
    assert "CONFIDENCE: <number between 0 and 1>" in prompt
    # the format the prompt asks for is the format the parser reads
    assert parse_confidence("... \\boxed{2}\nCONFIDENCE: 0.75") == 0.75


@pytest.fixture(scope="module")
def qwen_tok(qwen_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer_dir / "tokenizer.json"))


def test_chat_template_matches_fallback(qwen_tok):
    # the fixture tokenizer has no template: the fallback is used
    assert not qwen_tok.chat_template
    fallback = render_prompt(PROBLEM, tokenizer=qwen_tok, style="dcpo")
    qwen_tok.chat_template = QWEN25_TEMPLATE
    try:
        templated = render_prompt(PROBLEM, tokenizer=qwen_tok, style="dcpo")
        thinking_off = render_prompt(
            PROBLEM, tokenizer=qwen_tok, chat_template_kwargs={"enable_thinking": False}
        )
    finally:
        qwen_tok.chat_template = None
    assert templated == fallback
    assert thinking_off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_rendered_prompt_tokenizes_to_qwen_special_tokens(qwen_tok):
    ids = qwen_tok.encode(render_prompt(PROBLEM, tokenizer=qwen_tok))
    im_start, im_end = 151644, 151645
    assert ids[0] == im_start and ids.count(im_start) == 3 and ids.count(im_end) == 2
    assert qwen_tok.decode(ids[-3:]) == "<|im_start|>assistant\n"


def test_build_messages_and_errors():
    msgs = build_messages(PROBLEM, style="dcpo")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == PROBLEM
    assert render_chatml(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")
    with pytest.raises(ValueError, match="unknown prompt style"):
        render_prompt(PROBLEM, style="cot")
    with pytest.raises(ValueError, match="non-empty"):
        render_prompt("  ")
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(PROBLEM, chat_template_kwargs={"enable_thinking": False})


def test_only_the_confidence_style_asks_for_a_confidence():
    assert {s for s in PROMPT_STYLES if asks_for_confidence(s)} == {"dcpo"}
    assert all(("CONFIDENCE" in PROMPT_STYLES[s]) == asks_for_confidence(s) for s in PROMPT_STYLES)
    with pytest.raises(ValueError, match="unknown prompt style"):
        asks_for_confidence("cot")
