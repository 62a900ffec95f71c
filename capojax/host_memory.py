"""Keep the update pass's host temporaries resident: XLA:CPU's per-call buffers stop page-faulting on the CPU backend.

XLA:CPU mallocs an executable's temporaries at every call and frees them at its end: 201 MB for the update pass of
the standard benchmark model. glibc serves a block that large by a fresh `mmap` and unmaps it on free, so every
update faulted in ~50,000 new zeroed pages, a fifth of its time on the 2-core box (`scripts/bench_update_faults.py`).

What it takes, each step needed:
- `configure_host`, first thing in every command (`capojax.cli`), before JAX starts its backend: synchronous CPU
  dispatch (`jax_cpu_enable_async_dispatch=False`), so a jitted call runs and allocates on the calling Python thread,
  i.e. from glibc's main heap (an XLA thread's arena is capped at 64 MB and maps larger blocks whatever the
  settings). At the first update on the CPU backend, glibc stops trimming its heap (`M_TRIM_THRESHOLD = -1`), so
  freed pages stay resident.
- `ResidentTemporaries.call` for each update (`Trainer._update`): during the call glibc serves large blocks from the
  heap (`M_MMAP_MAX = 0`); after it, a block of the executable's temporary size is malloced (the one the call just
  freed) and held until the next update, which frees it just before the call. Without the hold, the rollout's small
  allocations between updates can take part of the freed block, and the next update grows the heap again (a 128 MB
  probe refaulted at every call in 1 process of 8; with the hold, 2 later calls of 40 refaulted it all, 5 about 2,000
  pages). mmap stays on outside the updates: with it off for the whole step, the rollout got slower.

Not taken: one glibc arena for every thread (no dispatch change needed) made the rollout's allocations contend for
its lock (rollout 0.16 -> 0.24-0.29 s); transparent huge pages cut the faults 3x with no reliable change of the step.

The price: on the CPU backend the process keeps the host memory it freed (its peak anyway) until it exits. On GPU /
TPU only the CPU client's dispatch mode changes, which computes nothing there; without glibc (musl, macOS) only the
dispatch; with `CAPOJAX_KEEP_HOST_MEMORY=0`, nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT_ENV = "CAPOJAX_KEEP_HOST_MEMORY"

# glibc's mallopt parameters and defaults (malloc.h, malloc.c); a trim threshold of -1 = never trim.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_WORTH_HOLDING = 32 << 20  # temporaries below glibc's largest mmap threshold come from the heap anyway

_configured = False


def opted_out(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _libc():
    """glibc with mallopt / malloc / free typed, or None without glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc", "free")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc.argtypes, libc.malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None
    return libc


def configure_host(environ=None) -> bool:
    """Synchronous CPU dispatch (module docstring), unless opted out; it also lets `ResidentTemporaries` act. Call it
    before JAX starts its backend: the dispatch mode is fixed when the CPU client is created. Returns whether
    applied. glibc's settings wait for the first update on the CPU backend: on GPU / TPU they never change."""
    global _configured
    if opted_out(environ):
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _configured = True
    return True


class ResidentTemporaries:
    """Runs a jitted function with its temporaries served from resident heap pages (module docstring):
    `resident.call(fn, *args)` = `fn(*args)`. Between calls it holds a block of the executable's temporary size
    (`memory_analysis().temp_size_in_bytes`) so the rollout cannot take part of it. Most calls then fault nothing;
    now and then one grows the heap again (XLA's aligned request needs a few bytes more than the temporary size, and
    a small allocation made during the call can take the bytes beside the held block). Inactive (a plain call) unless
    `configure_host` ran in this process and JAX computes on the CPU. One per call site; not
    thread-safe (the trainer's update loop is one thread)."""

    def __init__(self):
        self._libc = None
        self._held = None  # the block held between calls (a pointer), or None
        self._sizes: dict = {}  # argument shapes -> the executable's temporary bytes

    def _active(self) -> bool:
        if self._libc is None:
            import jax

            if not _configured or jax.default_backend() != "cpu":
                return False
            libc = _libc()
            if libc is None or libc.mallopt(_M_TRIM_THRESHOLD, -1) != 1:  # freed pages stay resident
                return False
            self._libc = libc
        return True

    def call(self, fn, *args):
        if not self._active():
            return fn(*args)
        import jax

        key = str(jax.tree.map(lambda x: (x.shape, str(x.dtype)), args))
        # New shapes: their abstract values before the call, which may donate (delete) the arguments.
        abstract = None if key in self._sizes else jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)
        self._libc.mallopt(_M_MMAP_MAX, 0)
        try:
            self.release()  # to the heap's free blocks, where fn's temporaries find it
            out = fn(*args)  # synchronous dispatch: the temporaries were allocated and freed in here
            if abstract is not None:  # lowering and compiling hit the caches fn just filled
                analysis = fn.lower(*abstract).compile().memory_analysis()
                self._sizes[key] = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
            size = max(self._sizes.values())
            if size >= _WORTH_HOLDING:
                self._held = self._libc.malloc(size) or None  # mmap is still off: the block fn just freed
            return out
        finally:
            self._libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)

    def release(self) -> None:
        """Gives the held block back to the heap (its pages stay resident)."""
        if self._held is not None:
            self._libc.free(self._held)
            self._held = None
