"""Extract the final ``\\boxed{...}`` answer from a model response.

One forward pass with a brace stack, so the cost is linear in the text length even for adversarial
inputs such as ``"\\boxed{" * 10**5`` (a naive "find each \\boxed, then scan to its closing brace" is
quadratic there). Escaped braces (``\\{``, ``\\}``) do not count for nesting, so
``\\boxed{\\{1, 2\\}}`` yields ``\\{1, 2\\}``.
"""

from __future__ import annotations

import re

__all__ = ["extract_boxed", "boxed_span"]

_COMMANDS = ("\\boxed", "\\fbox")
# `\boxed 5` (no braces): TeX would box one token, but models mean the whole answer, so take the run up to
# whitespace, `$` or the end; trailing sentence punctuation is not part of the answer.
_BARE_ARG = re.compile(r"[ \t]+([^\s${}]+)")
_TRAILING_PUNCT = ".,;:"


def _command_at(text: str, i: int) -> str | None:
    """The boxing command starting at text[i] (a backslash), when it is a whole control word."""
    for cmd in _COMMANDS:
        if text.startswith(cmd, i):
            j = i + len(cmd)
            if j >= len(text) or not text[j].isalpha():  # `\boxedx` is another macro
                return cmd
    return None


def boxed_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the content of the last complete ``\\boxed``/``\\fbox``.

    "Last" is the boxing command that starts last among those whose argument is complete; an unclosed
    ``\\boxed{`` (a truncated response) is skipped. Returns None when there is none.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects a str response, got {type(text).__name__}")
    best: tuple[int, int, int] | None = None  # (command start, content start, content end)
    # Stack entries: command start index for a brace opened by `\boxed{`, or -1 for a plain `{`.
    stack: list[int] = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == "\\":
            cmd = _command_at(text, i)
            if cmd is None:
                i += 2  # an escaped char (`\{`, `\}`, `\\`) or a control word's backslash
                continue
            j = i + len(cmd)
            k = j
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == "{":
                stack.append(i)
                i = k + 1
                continue
            m = _BARE_ARG.match(text, j)
            if m is not None:
                end = m.end(1)
                while end > m.start(1) and text[end - 1] in _TRAILING_PUNCT:
                    end -= 1
                if end > m.start(1) and (best is None or i > best[0]):
                    best = (i, m.start(1), end)
                i = m.end(1)
                continue
            i = j
            continue
        if c == "{":
            stack.append(-1)
        elif c == "}" and stack:
            opener = stack.pop()
            if opener >= 0 and (best is None or opener > best[0]):
                # content starts after the `{` that follows the command (and optional spaces)
                start = text.index("{", opener) + 1
                best = (opener, start, i)
        i += 1
    return None if best is None else (best[1], best[2])


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces), ``\\boxed 5`` or ``\\fbox{...}``.

    >>> extract_boxed(r"so $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_boxed("no answer") is None
    True

    Returns the content stripped of surrounding whitespace ("" for ``\\boxed{}``), or None when the
    text has no complete boxed answer.
    """
    span = boxed_span(text)
    if span is None:
        return None
    return text[span[0] : span[1]].strip()
