"""capojax.host_memory: the update's temporaries come from resident heap pages, not page-faulted afresh per call.

The behavioural test runs in fresh processes (the dispatch mode is fixed when JAX's CPU client starts): a jitted
function with a 64 MB temporary, which glibc would otherwise mmap anew at every call, called with small heap
allocations in between (as the rollout makes between two updates).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from capojax import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PROBE = textwrap.dedent("""
    import json, resource
    import numpy as np
    from capojax import host_memory
    configured = host_memory.configure_host()
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):
        y = x @ x.T  # a 4096 x 4096 f32 temporary (64 MB), and as much for the element-wise pass
        return jnp.tanh(y).sum(axis=0) + jnp.sin(y).sum(axis=1)

    resident = host_memory.ResidentTemporaries()
    x = jnp.ones((4096, 8), jnp.float32)
    faults, between = [], []
    for i in range(13):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(resident.call(f, x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        between += [np.ones(50_000 + 1_000 * i) for _ in range(20)]  # 400 KB heap blocks that outlive the call
    print(json.dumps({"configured": configured, "async": jax.config.values["jax_cpu_enable_async_dispatch"],
                      "faults": faults}))
""")


def _probe(keep: bool) -> dict:
    env = {"JAX_PLATFORMS": "cpu", host_memory.OPT_OUT_ENV: "1" if keep else "0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator settings")
def test_temporaries_stay_resident_between_calls():
    kept, default = _probe(keep=True), _probe(keep=False)
    assert kept["configured"] and not kept["async"]
    assert not default["configured"] and default["async"]
    # 128 MB of fresh pages = 32,768 faults, at every call with glibc's defaults; none for most calls once the block
    # is held (the first two compile and grow the heap; now and then a later one grows it again, see the class: 4 of
    # 40 calls in 8 runs of 5, clustered, so 5 calls per run failed the median 1 run in 8; 11 calls per run now).
    after_warmup, default_after = kept["faults"][2:], default["faults"][2:]
    assert min(default_after) > 16_000, default
    assert sorted(after_warmup)[len(after_warmup) // 2] < 1_000, kept  # the median call
    assert sum(after_warmup) < 0.5 * sum(default_after), (kept, default)


def test_opt_out_values():
    assert host_memory.opted_out({host_memory.OPT_OUT_ENV: "0"})
    assert host_memory.opted_out({host_memory.OPT_OUT_ENV: "off"})
    assert not host_memory.opted_out({host_memory.OPT_OUT_ENV: "1"})
    assert not host_memory.opted_out({})


def test_inactive_without_configure_host(monkeypatch):
    monkeypatch.setattr(host_memory, "_configured", False)
    resident = host_memory.ResidentTemporaries()
    assert not resident._active()  # this process never asked for the settings: glibc's are left alone
    assert resident.call(lambda a, b: a + b, 2, 3) == 5


def test_the_trainer_runs_its_update_through_the_resident_temporaries(tiny_base, tmp_path, monkeypatch):
    """Trainer._update calls the update program through `ResidentTemporaries.call`, which (active here) reads the
    program's temporary size once per shape. In this multi-device test process the update is a parallel computation
    that JAX still dispatches asynchronously, so only the wiring is checked; the page faults are the probe's."""
    import pathlib

    from capojax.trainer import loop

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import tiny_grpo

    libc = host_memory._libc()
    if libc is None:
        pytest.skip("glibc's allocator settings")
    calls = []
    real_call = host_memory.ResidentTemporaries.call

    def spy(self, fn, *args):
        calls.append(fn)
        return real_call(self, fn, *args)

    monkeypatch.setattr(host_memory, "_configured", True)
    monkeypatch.setattr(host_memory.ResidentTemporaries, "call", spy)
    config = tiny_grpo.get_config()
    config.model.path = str(tiny_base)
    config.data.max_prompt_len, config.rollout.max_new_tokens, config.rollout.n = 64, 8, 4  # 8 rows per update
    config.train.prompts_per_step, config.train.ppo_mini_batch, config.train.ppo_epochs = 4, 2, 1
    config.log.val_every = 0
    try:
        trainer = loop.Trainer(config, str(tmp_path / "run"))
        trainer.train_step()
        assert calls == [trainer.programs.update] * 2  # two mini-batches of 2 prompts
        (size,) = trainer._resident_update._sizes.values()  # one shape: read once
        assert size > 0
        trainer.close()
    finally:
        libc.mallopt(host_memory._M_TRIM_THRESHOLD, 128 * 1024)  # glibc's default back for the rest of the session
