"""Evaluation protocols: the sampling and grading settings a paper evaluated with, by name.

    python -m capojax.evaluate --checkpoint DIR --protocol capo --benchmarks aime24,math500 --out OUT

`--protocol` fills every setting it names (an explicit flag still wins, and is recorded as an override); each
benchmark's summary.json carries the protocol's name, its resolved settings, where the numbers come from and what
capojax does not reproduce. The sources are quoted in configs/README.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["Protocol", "PROTOCOLS", "DEFAULT_SETTINGS", "resolve_settings"]

# `capojax.evaluate` without --protocol: a quick look, not a paper number (512 tokens cut AIME solutions short).
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "n": 4, "temperature": 0.6, "top_p": 0.95, "top_k": 0, "max_new_tokens": 512, "template": "qwen-math",
    "require_boxed": False, "chat_template_kwargs": {}, "presence_penalty": 0.0,
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """settings: values for the keys of DEFAULT_SETTINGS; source: where they come from; deviations: what the
    paper's evaluation does that capojax does not."""

    name: str
    settings: Mapping[str, Any]
    source: str
    deviations: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.settings) - set(DEFAULT_SETTINGS)
        if unknown:
            raise ValueError(f"protocol {self.name!r}: unknown settings {sorted(unknown)}; "
                             f"known: {list(DEFAULT_SETTINGS)}")


PROTOCOLS: dict[str, Protocol] = {
    # The CAPO paper reports mean@16 and PC@16; it samples as in training and grades boxed answers (verl).
    "capo": Protocol(
        name="capo",
        settings={"n": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                  "max_new_tokens": 3072,  # = configs/capo_1p5b.py rollout.max_new_tokens (the response limit)
                  "template": "qwen-math", "require_boxed": True, "chat_template_kwargs": {}, "presence_penalty": 0.0},
        source="CAPO paper (arXiv 2604.12632): mean@16 / PC@16 at the training sampling settings; verl boxed grading",
    ),
    # DCPO's released evaluation (mazhengzhao/DCPO calibration_main.py + examples/eval.sh).
    "dcpo": Protocol(
        name="dcpo",
        settings={"n": 4, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_new_tokens": 3000, "template": "dcpo",
                  "require_boxed": False, "chat_template_kwargs": {"enable_thinking": False},
                  "presence_penalty": 1.5},
        source="DCPO release: calibration_main.py (repeat=4, temperature 0.7, top_p 0.8, top_k 20, presence_penalty "
               "1.5, enable_thinking False, opencompass MATHVerifyEvaluator) and examples/eval.sh "
               "(--max_new_tokens 3000)",
        deviations=(
            "prompt: capojax's dcpo template (system instruction + user problem) instead of DCPO's single user "
            "message with its directive appended",
        ),
    ),
}


def resolve_settings(protocol: str | None, explicit: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, summary fields): DEFAULT_SETTINGS, then the protocol's, then the explicit (non-None) values.

    The summary fields name the protocol, its source and deviations, and the explicit values that overrode it."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    unknown = set(explicit) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {list(DEFAULT_SETTINGS)}")
    given = {k: v for k, v in explicit.items() if v is not None}
    base = dict(PROTOCOLS[protocol].settings) if protocol else {}
    settings = {**DEFAULT_SETTINGS, **base, **given}
    settings["chat_template_kwargs"] = dict(settings["chat_template_kwargs"])
    fields: dict[str, Any] = {"protocol": protocol or "none"}
    if protocol:
        p = PROTOCOLS[protocol]
        fields["protocol_source"] = p.source
        fields["protocol_deviations"] = list(p.deviations)
        fields["protocol_overrides"] = {k: v for k, v in given.items() if base.get(k) != v}
    fields["protocol_settings"] = dict(settings)
    return settings, fields
