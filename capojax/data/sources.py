"""Where each named benchmark file comes from: a public GitHub repository, a commit, a path and a git blob hash.

capojax does not ship benchmark files (the data's own terms apply; see ../shared/data/README.md). It pins them
instead: each primary pick of that README is a byte-identical copy of a file in a public repository, named here
by commit and path, and identified by its git blob hash (`git hash-object FILE`, the sha1 of
b"blob <size>\\0" + bytes). `capojax.data.fetch` downloads a missing file from `Source.url` and keeps it only
when the hash matches, so a file found by name is always exactly the one the README describes.

`Source.path` is where the file lives under a data dir (the layout of ../shared/data), also inside the cache.
"""

from __future__ import annotations

import dataclasses

__all__ = ["RAW_BASE_URL", "Source", "SOURCES"]

RAW_BASE_URL = "https://raw.githubusercontent.com"


@dataclasses.dataclass(frozen=True)
class Source:
    """One benchmark file: `path` under a data dir; `repo_path` in `repo` at `commit`; `blob` its git blob hash
    (40 hex), `size` its length in bytes; `license` of the source repository at that commit; `records` problems."""

    name: str
    path: str
    repo: str
    commit: str
    repo_path: str
    blob: str
    size: int
    license: str
    records: int

    @property
    def url(self) -> str:
        """The raw file at the pinned commit (GitHub serves the bytes of the blob)."""
        return f"{RAW_BASE_URL}/{self.repo}/{self.commit}/{self.repo_path}"


_DEEPSCALER = ("agentica-project/deepscaler", "95ef74ffee001cce89463f2d61dfdce1d03576c1")
_AREAL = ("inclusionAI/AReaL", "f55fe685c661b0117d888fcae47d6f46e9a85087")
_QWEN_MATH = ("QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465")


def _source(name, path, upstream, repo_path, blob, size, license, records) -> Source:
    repo, commit = upstream
    return Source(name=name, path=path, repo=repo, commit=commit, repo_path=repo_path, blob=blob, size=size,
                  license=license, records=records)


# The primary picks of ../shared/data/README.md ("Which file to use"), with its file table's sources and blobs.
SOURCES: dict[str, Source] = {s.name: s for s in (
    _source("aime24", "eval/aime24/deepscaler_aime.json", _DEEPSCALER, "deepscaler/data/test/aime.json",
            "e1a705f2a03b9f8a0c4a2d334fc71eddc30bad7d", 38011, "MIT", 30),
    # deleted at AReaL's HEAD; present at the pinned commit
    _source("aime25", "eval/aime25/areal_test.jsonl", _AREAL, "evaluation/data/aime25/test.jsonl",
            "236626dd7679a0671562f76a0b6e21314529a348", 15813, "Apache-2.0", 30),
    _source("math500", "eval/math500/deepscaler_math.json", _DEEPSCALER, "deepscaler/data/test/math.json",
            "0e3f122e6be5c99a0123adfdf4b4fe1bc8e861cc", 172073, "MIT", 500),
    _source("amc23", "eval/amc23/qwen25math_test.jsonl", _QWEN_MATH, "evaluation/data/amc23/test.jsonl",
            "6894ad7c49a0b3a64210af32954f4d049d934ea0", 27631, "none at root; evaluation/LICENSE is MIT", 40),
    _source("amc", "eval/amc/deepscaler_amc.json", _DEEPSCALER, "deepscaler/data/test/amc.json",
            "ac11f74f22c4b79e9bf4aca53c885fcd35413749", 38170, "MIT", 83),
    _source("minerva", "eval/minerva/deepscaler_minerva.json", _DEEPSCALER, "deepscaler/data/test/minerva.json",
            "01569be85b1df9007fa0bb4068a022da7606586b", 269352, "MIT", 272),
    _source("olympiadbench", "eval/olympiadbench/deepscaler_olympiad_bench.json", _DEEPSCALER,
            "deepscaler/data/test/olympiad_bench.json", "efcd0ebe99a97294b9e1f0496ef2e6557c6eb924", 1582347, "MIT",
            675),
)}
