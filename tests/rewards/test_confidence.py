"""DCPO confidence: parsing, clipping, malformed lines, and exact token spans with the real Qwen2.5 tokenizer."""
import math

import numpy as np
import pytest

from capojax.rewards import (
    confidence_char_span,
    confidence_token_mask,
    confidence_token_span,
    parse_confidence,
    parse_confidences,
    strip_confidence,
    token_char_offsets,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("... \\boxed{5}\nCONFIDENCE: 0.85", 0.85),
        ("\\boxed{5}\nCONFIDENCE: 85%", 0.85),
        ("\\boxed{5}\nconfidence: 0.3\n", 0.3),
        ("\\boxed{5}\nConfidence = .9.", 0.9),
        ("\\boxed{5}\n**Confidence:** 70 %", 0.7),
        ("\\boxed{5}\nCONFIDENCE: 1.5", 1.0),  # clipped
        ("\\boxed{5}\nCONFIDENCE: -0.2", 0.0),  # clipped
        ("\\boxed{5}\nCONFIDENCE: 0.6<|im_end|>", 0.6),
        ("\\boxed{5}\nCONFIDENCE: 1\n\n<|endoftext|>", 1.0),
        ("CONFIDENCE: 0", 0.0),
    ],
)
def test_parse_confidence(text, expected):
    assert parse_confidence(text) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{5}",  # missing
        "\\boxed{5}\nCONFIDENCE: high",
        "\\boxed{5}\nCONFIDENCE:",
        "\\boxed{5}\nCONFIDENCE: 0.8 or 0.9",
        "CONFIDENCE: 0.7\n\\boxed{5}",  # not the last line
        "\\boxed{5}\nCONFIDENCE: 1e400",  # not finite
        "\\boxed{5}\nCONFIDENCE: nan",
        "",
        "x" * 10_000 + "CONFIDENCE: 0.5",  # one absurdly long last line
    ],
)
def test_parse_confidence_missing_or_malformed(text):
    assert parse_confidence(text) is None
    assert confidence_char_span(text) is None


def test_parse_confidences_batch_uses_nan():
    out = parse_confidences(["CONFIDENCE: 0.25", "nothing", "CONFIDENCE: 50%"])
    assert out.dtype == np.float32
    assert out[0] == np.float32(0.25) and math.isnan(out[1]) and out[2] == np.float32(0.5)


def test_char_span_and_strip():
    text = "Reasoning.\n\\boxed{7}\nCONFIDENCE: 0.9\n"
    s, e = confidence_char_span(text)
    assert text[s:e] == "CONFIDENCE: 0.9"
    assert strip_confidence(text) == "Reasoning.\n\\boxed{7}\n"
    assert strip_confidence("no confidence") == "no confidence"


def test_token_span_from_offsets():
    text = "ab\nCONFIDENCE: 0.5"
    # hand-made tokenization: "ab", "\n", "CONF", "IDENCE", ":", " 0", ".", "5"
    offsets = [(0, 2), (2, 3), (3, 7), (7, 13), (13, 14), (14, 16), (16, 17), (17, 18)]
    assert confidence_token_span(text, offsets) == (2, 8)
    assert confidence_token_span("no conf", [(0, 2), (2, 7)]) is None


@pytest.fixture(scope="module")
def qwen_tok(qwen_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer_dir / "tokenizer.json"))


COMPLETIONS = [
    "We compute 2+3.\nSo the answer is $\\boxed{5}$.\nCONFIDENCE: 0.85<|im_end|>",
    "Reasoning… 日本語 \\boxed{\\frac{1}{2}}\n**Confidence:** 85%",
    "答案是 \\boxed{7}\nConfidence = .9.\n",
    "\\boxed{3}\nCONFIDENCE: 1.0",
]


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_token_offsets_match_tokenizer_offsets(qwen_tok, completion):
    ids = qwen_tok.encode(completion)
    text, offsets = token_char_offsets(ids, qwen_tok)
    assert text == completion
    assert offsets == [tuple(o) for o in qwen_tok(completion, return_offsets_mapping=True)["offset_mapping"]]


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_confidence_mask_covers_exactly_the_segment(qwen_tok, completion):
    ids = qwen_tok.encode(completion)
    mask = confidence_token_mask(ids, qwen_tok, length=len(ids) + 5)
    assert mask.shape == (len(ids) + 5,) and mask.dtype == bool
    assert not mask[len(ids) :].any()
    s, e = confidence_char_span(completion)
    hf_offsets = qwen_tok(completion, return_offsets_mapping=True)["offset_mapping"]
    expected = [i for i, (a, b) in enumerate(hf_offsets) if a < e and b > s]  # tokens overlapping the segment
    idx = np.flatnonzero(mask).tolist()
    assert idx == expected and idx == list(range(idx[0], idx[-1] + 1))
    assert completion[s:e] in qwen_tok.decode([ids[i] for i in idx])


def test_confidence_mask_real_token_boundaries(qwen_tok):
    completion = "So $\\boxed{5}$.\nCONFIDENCE: 0.85"
    ids = qwen_tok.encode(completion)
    toks = qwen_tok.convert_ids_to_tokens(ids)
    mask = confidence_token_mask(ids, qwen_tok)
    masked = [t for t, m in zip(toks, mask) if m]
    # Qwen2 splits digits one by one; the newline is its own token (not in the segment)
    assert "".join(masked).replace("Ġ", " ") == "CONFIDENCE: 0.85"
    assert masked[-2:] == ["8", "5"]


def test_confidence_mask_all_false_without_confidence(qwen_tok):
    ids = qwen_tok.encode("The answer is \\boxed{5}.")
    assert not confidence_token_mask(ids, qwen_tok).any()
    assert confidence_token_mask([], qwen_tok, length=3).tolist() == [False] * 3


def test_confidence_mask_with_sampled_non_canonical_and_split_utf8(qwen_tok):
    # Sampled ids need not be the canonical encoding: spell "CONFIDENCE" letter by letter, and split a
    # 3-byte character across two tokens. Offsets still come out exact.
    pieces = ["æĹ", "¥"]  # bytes of 日 split in two byte-level tokens
    ids = [qwen_tok.convert_tokens_to_ids(p) for p in pieces]
    ids += qwen_tok.encode("\n") + [qwen_tok.convert_tokens_to_ids(c) for c in "CONFIDENCE"]
    ids += qwen_tok.encode(": 0.5")
    text, offsets = token_char_offsets(ids, qwen_tok)
    assert text == "日\nCONFIDENCE: 0.5"
    assert offsets[0] == (0, 1) and offsets[1] == (1, 1)  # the char belongs to the token with its first byte
    mask = confidence_token_mask(ids, qwen_tok)
    assert mask.tolist() == [False, False, False] + [True] * (len(ids) - 3)


def test_confidence_mask_rejects_short_length(qwen_tok):
    with pytest.raises(ValueError, match="shorter"):
        confidence_token_mask([1, 2, 3], qwen_tok, length=2)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(x=st.floats(-10, 10, allow_nan=False), percent=st.booleans(), body=st.text(max_size=50))
def test_property_parsed_value_is_the_clipped_number(x, percent, body):
    shown = f"{x * 100:.4f}%" if percent else f"{x:.6f}"
    value = parse_confidence(body + "\nCONFIDENCE: " + shown)
    expected = min(1.0, max(0.0, float(shown[:-1]) / 100 if percent else float(shown)))
    assert value == pytest.approx(expected, abs=1e-12)
