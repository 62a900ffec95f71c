"""DCPO stated confidence: parse the ``CONFIDENCE: <p>`` line and locate its tokens.

The DCPO prompt (``capojax.data.templates``, style ``"dcpo"``) asks the model to end its response with
a last line ``CONFIDENCE: <number between 0 and 1>``. DCPO gives the tokens of that line a calibration
advantage and the reasoning tokens the accuracy advantage, so the trainer needs

- the value: :func:`parse_confidence` (``float`` in [0, 1] or None), batched as :func:`parse_confidences`
  (``f32[N]`` with NaN for unparsed, the convention of ``AdvantageInputs.confidence``);
- the tokens: :func:`confidence_token_mask` turns a completion's token ids into ``bool[T]`` over exactly
  the tokens that overlap the confidence segment (from the keyword to the end of the number or ``%``).

Accepted line (case-insensitive, optional markdown bold): ``CONFIDENCE: 0.85``, ``Confidence = .9``,
``**Confidence:** 85%`` (-> 0.85). Values outside [0, 1] are clipped (``1.5`` -> 1.0, ``-0.1`` -> 0.0);
a number with ``%`` is divided by 100 first. Anything after the number on that line other than
whitespace, ``.`` or a closing ``**`` makes it malformed (None): ``CONFIDENCE: high``, ``CONFIDENCE: 0.8 or 0.9``.
The line must be the last non-empty line (trailing end-of-turn markers such as ``<|im_end|>`` and
``<|endoftext|>`` are ignored), because a confidence stated mid-response is not the DCPO format.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "parse_confidence",
    "parse_confidences",
    "confidence_char_span",
    "confidence_token_span",
    "token_char_offsets",
    "confidence_token_mask",
    "strip_confidence",
]

# Keyword, separator, number (with optional exponent), optional percent sign. Group "seg" spans the
# segment whose tokens get DCPO's calibration advantage.
_LINE = re.compile(
    r"(?P<seg>(?:\*\*)?confidence(?:\*\*)?[ \t]*(?:[:=]|\*\*:|:\*\*)[ \t]*(?:\*\*)?[ \t]*"
    r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?P<pct>[ \t]*%)?)"
    r"(?P<tail>[^\n]*)$",
    re.IGNORECASE,
)
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>")
_TAIL_OK = re.compile(r"[ \t.]*(?:\*\*)?[ \t.]*")
# Only the end of a response can hold the last line; bounding the scanned region keeps parsing O(1)
# in the response length (a confidence line longer than this is malformed anyway).
_MAX_LINE = 512


def _last_line(text: str) -> tuple[int, int] | None:
    """[start, end) of the last non-empty line, ignoring trailing whitespace and end-of-turn markers."""
    end = len(text)
    while True:
        stripped = text[:end].rstrip()
        end = len(stripped)
        for marker in _END_MARKERS:
            if stripped.endswith(marker):
                end -= len(marker)
                break
        else:
            break
    if end == 0:
        return None
    start = text.rfind("\n", max(0, end - _MAX_LINE), end) + 1
    if start == 0 and end > _MAX_LINE:
        return None
    return start, end


def _match(text: str) -> re.Match | None:
    if not isinstance(text, str):
        raise TypeError(f"parse_confidence expects a str response, got {type(text).__name__}")
    line = _last_line(text)
    if line is None:
        return None
    m = _LINE.search(text, line[0], line[1])
    if m is None or not _TAIL_OK.fullmatch(m.group("tail")):
        return None
    return m


def parse_confidence(text: str) -> float | None:
    """The stated confidence on the last line, in [0, 1], or None when missing or malformed."""
    m = _match(text)
    if m is None:
        return None
    try:
        value = float(m.group("num"))
    except ValueError:
        return None
    if m.group("pct"):
        value /= 100.0
    if not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def parse_confidences(texts: Sequence[str]) -> np.ndarray:
    """``f32[N]`` stated confidences, NaN where unparsed (the ``AdvantageInputs.confidence`` convention)."""
    out = np.full(len(texts), np.nan, dtype=np.float32)
    for i, t in enumerate(texts):
        c = parse_confidence(t)
        if c is not None:
            out[i] = c
    return out


def confidence_char_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the confidence segment (keyword through number/%), or None.

    None exactly when :func:`parse_confidence` returns None, so masks and values always agree.
    """
    if parse_confidence(text) is None:
        return None
    m = _match(text)
    return m.start("seg"), m.end("seg")


def strip_confidence(text: str) -> str:
    """The response without its DCPO confidence line (so answer extraction never reads the confidence)."""
    m = _match(text) if isinstance(text, str) else None
    if m is None:
        return text
    return text[: m.start("seg")]


def confidence_token_span(
    text: str, offsets: Sequence[tuple[int, int]]
) -> tuple[int, int] | None:
    """Token span ``[start_tok, end_tok)`` of the confidence segment, or None.

    Args:
      text: the decoded completion.
      offsets: per-token character offsets ``(char_start, char_end)`` into ``text`` (a fast tokenizer's
        ``return_offsets_mapping``, or :func:`token_char_offsets`).

    A token belongs to the span when its characters overlap the segment, so a token straddling the
    segment boundary is included (it carries part of the stated confidence). Zero-width tokens inside
    the segment's extent are included too, which keeps the span contiguous.
    """
    span = confidence_char_span(text)
    if span is None:
        return None
    c0, c1 = span
    hits = [i for i, (a, b) in enumerate(offsets) if a < c1 and b > c0]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


def _byte_decoder() -> dict[str, int]:
    # GPT-2 byte-level BPE maps every byte to a printable unicode char; this is the inverse table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and type(decoder).__name__ == "ByteLevel"


def token_char_offsets(token_ids: Sequence[int], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Decode completion ids to text with the exact character span of every token.

    Sampled ids need not be the canonical tokenization of their text, so re-encoding the text would not
    give back the same tokens; instead each token's bytes are read off the vocabulary. For byte-level BPE
    (Qwen, GPT-2 style, detected from the fast tokenizer's decoder) this is exact, including a multi-byte
    character split across tokens: bytes decode with ``surrogateescape`` so every byte keeps a position,
    and such a character is attributed to the token holding its first byte (the next tokens get empty
    spans at the same place). Other tokenizers fall back to decoding each token on its own.

    Returns ``(text, offsets)`` with ``len(offsets) == len(token_ids)``; special tokens are kept as their text.
    """
    ids = [int(t) for t in token_ids]
    if _is_byte_level(tokenizer):
        pieces = []
        for tok in tokenizer.convert_ids_to_tokens(ids):
            if tok is None:
                raise ValueError("token id out of the tokenizer's vocabulary; pass completion ids only")
            if all(ch in _BYTE_DECODER for ch in tok):
                pieces.append(bytes(_BYTE_DECODER[ch] for ch in tok))
            else:  # added/special tokens are stored as plain text
                pieces.append(tok.encode("utf-8"))
    else:
        pieces = [tokenizer.decode([t]).encode("utf-8") for t in ids]
    data = b"".join(pieces)
    text = data.decode("utf-8", errors="surrogateescape")
    # byte offset where each char starts (plus the end); a token boundary inside a multi-byte char is
    # rounded up to the next char start, which gives the char to the token holding its first byte.
    char_starts = np.zeros(len(text) + 1, dtype=np.int64)
    if text:
        char_starts[1:] = np.cumsum([len(ch.encode("utf-8", errors="surrogateescape")) for ch in text])
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    char_bounds = np.searchsorted(char_starts, bounds, side="left")
    offsets = [(int(char_bounds[i]), int(char_bounds[i + 1])) for i in range(len(pieces))]
    return text, offsets


def confidence_token_mask(
    token_ids: Sequence[int], tokenizer, *, length: int | None = None
) -> np.ndarray:
    """``bool[T]`` mask over completion tokens that belong to the DCPO confidence segment.

    Args:
      token_ids: the completion's token ids (no prompt, no padding).
      tokenizer: the policy's tokenizer (``transformers`` fast tokenizer).
      length: pad the mask with False to this length ``T`` (the trainer's padded completion length);
        defaults to ``len(token_ids)``.

    All False when the completion has no well-formed confidence line (then ``parse_confidence`` is None).
    """
    ids = list(token_ids)
    T = len(ids) if length is None else int(length)
    if T < len(ids):
        raise ValueError(f"length={T} is shorter than the completion ({len(ids)} tokens); pass T >= len(token_ids)")
    mask = np.zeros(T, dtype=bool)
    if not ids:
        return mask
    text, offsets = token_char_offsets(ids, tokenizer)
    span = confidence_token_span(text, offsets)
    if span is not None:
        mask[span[0] : span[1]] = True
    return mask
