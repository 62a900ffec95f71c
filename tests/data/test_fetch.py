"""Benchmark files by hash (capojax.data.sources + capojax.data.fetch), offline.

No test touches the network: `upstream` replaces the download's opener by one that serves the bytes of
../shared/data (byte-identical copies of the pinned upstream files) for exactly the registry's URLs, and hides
../shared/data from the lookup so that the cache and the download are exercised. The real download from
raw.githubusercontent.com is not exercised here.
"""

import io
import shutil
import subprocess
import urllib.error

import pytest

from capojax.data import fetch
from capojax.data.benchmarks import BENCHMARKS, DATA_DIR_ENV, load_benchmark
from capojax.data.sources import SOURCES


class Upstream:
    """Serves `files` (url -> bytes) like urlopen; `calls` lists the URLs asked for."""

    def __init__(self, files):
        self.files = dict(files)
        self.calls = []
        self.error = None  # raised instead of answering (offline, HTTP errors)

    def __call__(self, url, timeout):
        self.calls.append(url)
        if self.error is not None:
            raise self.error
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return io.BytesIO(self.files[url])


@pytest.fixture
def upstream(shared_data, tmp_path, monkeypatch):
    server = Upstream({s.url: (shared_data / s.path).read_bytes() for s in SOURCES.values()})
    monkeypatch.setattr(fetch, "_urlopen", server)
    monkeypatch.setattr(fetch, "shared_data_dir", lambda: tmp_path / "no-shared-data")  # a clone without ../shared
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    server.cache = tmp_path / "cache"
    return server


def cached_files(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# ------------------------------------------------------------------------------------------ the registry


def test_registry_is_the_benchmark_table_with_pinned_raw_urls():
    assert BENCHMARKS == {name: s.path for name, s in SOURCES.items()}
    assert sorted(SOURCES) == ["aime24", "aime25", "amc", "amc23", "math500", "minerva", "olympiadbench"]
    assert SOURCES["aime24"].url == ("https://raw.githubusercontent.com/agentica-project/deepscaler/"
                                     "95ef74ffee001cce89463f2d61dfdce1d03576c1/deepscaler/data/test/aime.json")
    for s in SOURCES.values():
        assert len(s.commit) == 40 and len(s.blob) == 40 and int(s.commit, 16) >= 0 and int(s.blob, 16) >= 0
        assert s.url == f"https://raw.githubusercontent.com/{s.repo}/{s.commit}/{s.repo_path}"


def test_git_blob_hash_is_git_hash_object():
    # git's own well-known blob ids: the empty file and "hello\n"
    assert fetch.git_blob_hash(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert fetch.git_blob_hash(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_registry_hashes_equal_git_hash_object_of_the_shared_files(shared_data):
    """The pinned blobs are those of ../shared/data (skipped without it), by `git hash-object` itself."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    for name, s in SOURCES.items():
        path = shared_data / s.path
        blob = subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
        assert blob.strip() == s.blob, name
        assert path.stat().st_size == s.size, name
        assert fetch.git_blob_hash(path.read_bytes()) == s.blob, name
        assert len(load_benchmark(name, data_dir=shared_data)) == s.records, name


# ------------------------------------------------------------------------------------------ lookup order


def test_shared_data_comes_first_without_any_download(shared_data, tmp_path, monkeypatch):
    server = Upstream({})
    monkeypatch.setattr(fetch, "_urlopen", server)
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(fetch, "shared_data_dir", lambda: shared_data)
    found = fetch.locate("aime24")
    assert found == fetch.Located(shared_data / SOURCES["aime24"].path, "../shared/data")
    assert server.calls == [] and cached_files(tmp_path / "cache") == []


def test_download_is_verified_cached_and_then_read_from_the_cache(upstream, shared_data):
    first = fetch.locate("aime25")
    assert first.origin == "download" and upstream.calls == [SOURCES["aime25"].url]
    assert first.path == upstream.cache / SOURCES["aime25"].path
    assert first.path.read_bytes() == (shared_data / SOURCES["aime25"].path).read_bytes()
    assert cached_files(upstream.cache) == [SOURCES["aime25"].path]  # no temporary file left beside it
    # the cache hit: no second download, and the problems are the shared copy's
    assert load_benchmark("aime25") == load_benchmark("aime25", data_dir=shared_data)
    assert fetch.locate("aime25").origin == "cache" and len(upstream.calls) == 1


def test_a_cached_file_that_no_longer_matches_is_downloaded_again(upstream):
    path = fetch.locate("amc23").path
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"0123456789")  # same size, other bytes
    again = fetch.locate("amc23")
    assert again.origin == "download" and len(upstream.calls) == 2 and again.path.read_bytes() == good


@pytest.mark.parametrize("corrupt", [lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], lambda b: b[:-1],
                                     lambda b: b + b"\n"], ids=["flipped-bit", "truncated", "one-byte-longer"])
def test_hash_mismatch_is_an_error_and_caches_nothing(upstream, corrupt):
    url = SOURCES["aime24"].url
    upstream.files[url] = corrupt(upstream.files[url])
    with pytest.raises(fetch.BenchmarkFileError) as err:
        fetch.locate("aime24")
    msg = str(err.value)
    assert "\n" not in msg
    for part in (SOURCES["aime24"].path, url, SOURCES["aime24"].blob, "nothing was cached", DATA_DIR_ENV):
        assert part in msg, part
    assert cached_files(upstream.cache) == []
    with pytest.raises(FileNotFoundError):  # evaluate's pre-check turns this into its one-line usage error
        load_benchmark("aime24")


def test_an_interrupted_download_leaves_nothing(upstream, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(fetch, "_urlopen", lambda url, timeout: Broken())
    with pytest.raises(fetch.BenchmarkFileError, match="Connection reset by peer"):
        fetch.locate("math500")
    assert cached_files(upstream.cache) == []


def test_a_failed_write_leaves_no_partial_file(upstream, monkeypatch):
    """The temporary file is removed when the write fails half-way (here: the disk is full at fsync)."""
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch.os, "fsync", full_disk)
    with pytest.raises(fetch.BenchmarkFileError, match=f"No space left on device.*{fetch.CACHE_ENV}"):
        fetch.locate("minerva")
    assert cached_files(upstream.cache) == []


@pytest.mark.parametrize("error", [urllib.error.URLError(OSError(-3, "Temporary failure in name resolution")),
                                   TimeoutError("timed out")], ids=["no-dns", "timeout"])
def test_offline_error_says_which_file_which_url_and_what_to_do(upstream, error):
    upstream.error = error
    with pytest.raises(fetch.BenchmarkFileError) as err:
        load_benchmark("olympiadbench")
    msg = str(err.value)
    assert "\n" not in msg
    s = SOURCES["olympiadbench"]
    for part in (s.path, s.url, f"set {DATA_DIR_ENV}", "allow network access", "python -m capojax.data.fetch"):
        assert part in msg, part
    assert cached_files(upstream.cache) == []


def test_an_explicit_data_dir_is_never_bypassed_by_a_download(upstream, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="from the data_dir argument"):
        load_benchmark("aime24", data_dir=tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\$CAPOJAX_DATA_DIR"):
        load_benchmark("aime24")
    assert upstream.calls == []


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(fetch.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == tmp_path / "xdg" / "capojax" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_dir() == tmp_path / "home" / ".cache" / "capojax" / "data"
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "mine"))
    assert fetch.cache_dir() == tmp_path / "mine"


# ------------------------------------------------------------------------------------------ the command line


def test_cli_prefetches_then_reports_the_cache(upstream, capsys):
    assert fetch.main(["aime24", "AMC"]) == 0
    out = capsys.readouterr().out
    assert "aime24" in out and "download" in out and len(upstream.calls) == 2
    assert cached_files(upstream.cache) == sorted([SOURCES["aime24"].path, SOURCES["amc"].path])
    assert fetch.main(["all"]) == 0
    out = capsys.readouterr().out
    assert len(upstream.calls) == len(SOURCES)  # only the 5 missing ones were downloaded
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert rows == {name: "cache" if name in ("aime24", "amc") else "download" for name in SOURCES}


def test_cli_errors_are_one_line(upstream):
    from capojax.errors import UserError

    with pytest.raises(UserError, match="unknown benchmark.*gsm8k.*aime24"):
        fetch.main(["gsm8k"])
    upstream.error = urllib.error.URLError("offline")
    with pytest.raises(fetch.BenchmarkFileError, match="allow network access"):
        fetch.main(["aime24"])
