"""A named benchmark's file: found on disk, else downloaded once by hash into a cache.

    python -m capojax.data.fetch [NAME ... | all]      # prefetch (default: all), then print where each file is

`locate(name)` looks for `SOURCES[name].path` (capojax.data.sources) in this order:

1. an explicit data dir: the `data_dir` argument (`capojax.evaluate --data_dir`), else `$CAPOJAX_DATA_DIR`.
   When one is given it is the only place looked at: a missing file there is an error, never a silent download
   (the user chose that copy).
2. `../shared/data` beside the checkout (the project's shared copy).
3. the cache, `$CAPOJAX_DATA_CACHE`, else `$XDG_CACHE_HOME/capojax/data`, else `~/.cache/capojax/data`
   (the same `eval/...` layout, so the cache is itself a valid data dir). A cached file is used only while its
   git blob hash still matches; otherwise it is downloaded again.
4. a download of `Source.url` (raw.githubusercontent.com at the pinned commit) with urllib. The bytes are kept
   only when their git blob hash (sha1 of b"blob <size>\\0" + bytes) equals the registry's; they are written
   to a temporary file beside the target and renamed over it, so an interrupted or corrupted download never
   leaves a file behind.

Every failure is one line (`BenchmarkFileError`, a `UserError` and a `FileNotFoundError`): which file, which URL,
and what to do (set CAPOJAX_DATA_DIR to a folder holding it, or allow network access and retry).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from typing import Sequence

from capojax.data.sources import SOURCES, Source
from capojax.errors import UserError

__all__ = ["BenchmarkFileError", "CACHE_ENV", "DATA_DIR_ENV", "Located", "cache_dir", "default_data_dir",
           "download", "git_blob_hash", "locate", "main", "shared_data_dir"]

DATA_DIR_ENV = "CAPOJAX_DATA_DIR"
CACHE_ENV = "CAPOJAX_DATA_CACHE"
DOWNLOAD_TIMEOUT = 60.0  # seconds per socket operation


class BenchmarkFileError(UserError, FileNotFoundError):
    """A named benchmark's file is neither on disk nor downloadable with the right hash."""


@dataclasses.dataclass(frozen=True)
class Located:
    """path: the file; origin: where it was found ("data_dir", "$CAPOJAX_DATA_DIR", "../shared/data", "cache",
    "download")."""

    path: pathlib.Path
    origin: str


def shared_data_dir() -> pathlib.Path:
    """`../shared/data` beside the checkout (this file is capojax/data/fetch.py inside it)."""
    return pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def default_data_dir() -> pathlib.Path:
    """``$CAPOJAX_DATA_DIR`` if set, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    return pathlib.Path(env).expanduser() if env else shared_data_dir()


def cache_dir() -> pathlib.Path:
    """``$CAPOJAX_DATA_CACHE``, else ``$XDG_CACHE_HOME/capojax/data``, else ``~/.cache/capojax/data``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "capojax" / "data"


def git_blob_hash(data: bytes) -> str:
    """`git hash-object` of a file with these bytes: sha1(b"blob <len>\\0" + data), 40 hex digits."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _urlopen(url: str, timeout: float):
    """The download's opener (a module attribute, so tests serve files without a network)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - the URL is built from the pinned registry


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path` (readers see the whole file or
    none); the temporary file is removed on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download(source: Source, target: pathlib.Path, *, timeout: float = DOWNLOAD_TIMEOUT) -> pathlib.Path:
    """Downloads `source.url`, checks its git blob hash and writes it to `target` atomically -> target.

    Raises BenchmarkFileError (nothing written) when the download fails or its hash is not `source.blob`."""
    fix = (f"set {DATA_DIR_ENV} to a folder holding {source.path} (the layout of ../shared/data, see "
           "capojax/data/sources.py for the file's source)")
    try:
        with _urlopen(source.url, timeout) as response:
            data = response.read(source.size + 1)  # one byte more than expected reveals a longer file
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise BenchmarkFileError(
            f"benchmark {source.name!r}: {source.path} is not on disk and its download from {source.url} failed "
            f"({type(e).__name__}: {_one_line(e)}); {fix}, or allow network access to raw.githubusercontent.com "
            f"and retry (`python -m capojax.data.fetch {source.name}` prefetches it)"
        ) from None
    blob = git_blob_hash(data)
    if blob != source.blob:
        raise BenchmarkFileError(
            f"benchmark {source.name!r}: the download of {source.path} from {source.url} has git blob {blob} "
            f"({len(data)} bytes), expected {source.blob} ({source.size} bytes); nothing was cached. The download "
            f"was corrupted or altered on the way (a proxy or captive portal?): retry, or {fix}"
        )
    try:
        _write_atomically(target, data)
    except OSError as e:
        raise BenchmarkFileError(
            f"benchmark {source.name!r}: cannot write {target} ({_one_line(e)}); set {CACHE_ENV} to a writable "
            f"folder, or {fix}"
        ) from None
    return target


def _matches(path: pathlib.Path, source: Source) -> bool:
    return path.stat().st_size == source.size and git_blob_hash(path.read_bytes()) == source.blob


def locate(name: str, data_dir: str | os.PathLike | None = None, *,
           timeout: float = DOWNLOAD_TIMEOUT) -> Located:
    """The file of benchmark `name` (a key of SOURCES), found or fetched in the order of the module docstring."""
    key = name.lower()
    if key not in SOURCES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[key]
    env = os.environ.get(DATA_DIR_ENV)
    if data_dir is not None or env:
        root = pathlib.Path(data_dir if data_dir is not None else env).expanduser()
        path = root / source.path
        if path.is_file():
            return Located(path, "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}")
        origin = "the data_dir argument (--data_dir)" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise BenchmarkFileError(
            f"benchmark {key!r}: its file {source.path} is missing from the data dir {root} (taken from {origin}); "
            f"{path} does not exist. capojax does not ship benchmark files. Set {DATA_DIR_ENV} (or data_dir= / "
            f"capojax.evaluate --data_dir) to a folder holding eval/ in the layout of ../shared/data (see its "
            f"README), or pass the benchmark file's path instead of its name (e.g. --benchmarks /data/aime24.json), "
            f"or give no data dir at all: capojax then fetches {source.path} by hash from {source.url}"
        )
    shared = shared_data_dir() / source.path
    if shared.is_file():
        return Located(shared, "../shared/data")
    cached = cache_dir() / source.path
    if cached.is_file() and _matches(cached, source):
        return Located(cached, "cache")
    return Located(download(source, cached, timeout=timeout), "download")


def main(argv: Sequence[str] | None = None) -> int:
    from capojax import cli

    parser = cli.one_line_errors(argparse.ArgumentParser(
        prog="python -m capojax.data.fetch",
        description="Download the named benchmark files (verified by git blob hash) into the cache, unless they are "
                    f"on disk already; print where each one is. Cache: ${CACHE_ENV} (now {cache_dir()})."))
    parser.add_argument("names", nargs="*", default=["all"], help=f"benchmark names ({', '.join(SOURCES)}) or all")
    parser.add_argument("--timeout", type=float, default=DOWNLOAD_TIMEOUT, help="seconds per socket operation")
    args = parser.parse_args(argv)
    names = list(SOURCES) if "all" in [n.lower() for n in args.names] else [n.lower() for n in args.names]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)} or all")
    print(f"{'benchmark':<14}{'problems':>9}  {'from':<16}path")
    for name in names:
        found = locate(name, timeout=args.timeout)
        print(f"{name:<14}{SOURCES[name].records:>9}  {found.origin:<16}{found.path}")
    return 0


if __name__ == "__main__":
    from capojax import cli

    cli.run_argparse(main)
