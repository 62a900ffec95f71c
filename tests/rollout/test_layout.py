"""Trainer + vLLM server on one GPU node (`rollout.vllm_devices`): the trainer's devices, the server's command and
environment for both layouts, the plan's arithmetic, and clear refusals. CPU only: no GPU, no vLLM."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import jax
import pytest

from capojax.errors import ConfigError
from capojax.models import PRESETS, QwenConfig
from capojax.rollout import layout as L
from capojax.rollout.vllm_engine import launch_config
from capojax.sharding import make_mesh

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from configs import capo_7b, tiny_capo  # noqa: E402

GB = 1e9


def vllm_config(k: int, **rollout):
    c = capo_7b.get_config()
    c.rollout.engine, c.rollout.vllm_launch, c.rollout.vllm_devices = "vllm", True, k
    c.rollout.vllm_dtype = "bfloat16"
    c.mesh.fsdp, c.mesh.tp = -1, 2
    for key, value in rollout.items():
        c.rollout[key] = value
    return c


@pytest.fixture(autouse=True)
def no_layout_marker(monkeypatch):
    monkeypatch.delenv(L.APPLIED_MARKER, raising=False)


@pytest.fixture
def checkpoint_7b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["qwen2.5-math-7b"].to_hf()))
    return str(tmp_path)


# ------------------------------------------------------------------------------------------- the trainer's devices


def test_trainer_mesh_spans_the_devices_the_server_leaves():
    devices = jax.devices()
    assert len(devices) == 8
    picked = L.trainer_devices(vllm_config(2), devices)
    assert picked == devices[:6]  # the server has the last two
    mesh = make_mesh(-1, 2, picked)
    assert dict(mesh.shape) == {"fsdp": 3, "tp": 2}
    assert set(mesh.devices.flat) == set(devices[:6])
    assert L.trainer_devices(vllm_config(0), devices) == devices  # co-located: every device
    jax_engine = vllm_config(2)
    jax_engine.rollout.engine = "jax"
    assert L.trainer_devices(jax_engine, devices) == devices  # no server, no layout


def test_trainer_devices_are_not_cut_twice_once_the_environment_hid_them(monkeypatch):
    monkeypatch.setenv(L.APPLIED_MARKER, ",".join(map(str, range(8))))
    devices = jax.devices()[:6]  # what a process started with CUDA_VISIBLE_DEVICES=0..5 sees
    assert L.trainer_devices(vllm_config(2), devices) == devices


# ------------------------------------------------------------------------------------------- environments, commands


def test_dedicated_layout_environments_and_server_command(checkpoint_7b):
    config = vllm_config(4)
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    layout = L.apply_trainer_environment(config, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # the trainer process sees only its GPUs
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in environ
    assert L.server_layout(config, environ) == layout  # the launcher reads the node from the marker
    server = launch_config(config, checkpoint_7b, layout)
    cmd = server.command(8000)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4"
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--enable-sleep-mode" not in cmd
    assert server.environment()["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_layout_keeps_the_node_gpu_ids():
    environ = {"CUDA_VISIBLE_DEVICES": "2,3,5,7"}  # a node slice handed out by a scheduler
    config = vllm_config(1)
    config.mesh.tp = 1  # 3 trainer GPUs
    layout = L.apply_trainer_environment(config, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "2,3,5"
    assert layout.server_environment() == {"CUDA_VISIBLE_DEVICES": "7"}


def test_colocated_layout_environments_and_server_command(checkpoint_7b):
    config = vllm_config(0)
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    layout = L.apply_trainer_environment(config, environ)
    assert environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.55"
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # the trainer keeps every GPU
    server = launch_config(config, checkpoint_7b, layout)
    cmd = server.command(8000)
    share = float(cmd[cmd.index("--gpu-memory-utilization") + 1])
    assert share == pytest.approx(0.35) and share + 0.55 < L.SHARE_LIMIT
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    assert "--enable-sleep-mode" in cmd
    assert server.environment()["CUDA_VISIBLE_DEVICES"] == "0"
    no_sleep = L.node_layout(vllm_config(0, vllm_sleep=False), 8)
    assert "--enable-sleep-mode" not in launch_config(config, checkpoint_7b, no_sleep).command(8000)


def test_no_gpus_no_layout(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": ""}
    assert L.apply_trainer_environment(vllm_config(2), environ) is None
    assert environ == {"CUDA_VISIBLE_DEVICES": ""}
    cpu = tiny_capo.get_config()  # the CPU vLLM tests: the configured share, no GPU pinning, no sleep mode
    cpu.rollout.engine, cpu.rollout.vllm_launch = "vllm", True
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["tiny-bench"].to_hf()))
    server = launch_config(cpu, str(tmp_path), None)
    assert server.gpu_memory_utilization == 0.5 and server.tensor_parallel_size == 1 and not server.extra_args


def test_user_memory_fraction_is_kept_when_it_fits_and_refused_when_not():
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    L.apply_trainer_environment(vllm_config(0), environ)
    assert environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
    with pytest.raises(L.LayoutError, match=r"XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 .* 0.35"):
        L.apply_trainer_environment(vllm_config(0), {"CUDA_VISIBLE_DEVICES": "0,1",
                                                     "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.7"})


# ------------------------------------------------------------------------------------------- arithmetic


def _num_params(qcfg) -> int:
    from flax import nnx

    from capojax.models import Qwen

    state = nnx.state(nnx.eval_shape(lambda: Qwen(qcfg, rngs=nnx.Rngs(0))))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def test_server_plan_arithmetic():
    qcfg = PRESETS["qwen2.5-math-7b"]  # 28 layers, 4 kv heads of 128, untied
    layout = L.node_layout(vllm_config(4), 8)
    plan = L.plan_server(layout, qcfg, dtype_bytes=2, max_model_len=4097, step_rows=1024)
    assert plan.weights == _num_params(qcfg) * 2 // 4  # bf16 weights split over 4 GPUs
    assert plan.kv_per_sequence == 2 * 28 * 4097 * 1 * 128 * 2  # k and v, one kv head per GPU
    assert plan.share == int(0.9 * 80 * GB)
    assert plan.sequences == (plan.share - plan.weights) // plan.kv_per_sequence
    assert plan.fits and plan.sequences >= 1024  # a whole step's rows at once on 4 GPUs
    # Fewer kv heads than GPUs: each GPU keeps one (vLLM replicates them).
    tiny = PRESETS["qwen2.5-math-1.5b"]  # 2 kv heads, 12 query heads
    plan4 = L.plan_server(L.node_layout(vllm_config(4), 8), tiny, dtype_bytes=2, max_model_len=100, step_rows=8)
    assert plan4.kv_per_sequence == 2 * tiny.num_layers * 100 * 1 * tiny.head_dim * 2


def test_colocated_plan_shares():
    layout = L.node_layout(vllm_config(0, trainer_memory_fraction=0.6, vllm_gpu_memory_utilization=0.3), 8)
    assert layout.trainer_budget_gb == pytest.approx(48.0)  # 0.6 x 80 GB is the trainer's budget
    assert layout.server_utilization == 0.3
    assert L.node_layout(vllm_config(4), 8).trainer_budget_gb == 80.0  # dedicated GPUs: the whole device


def test_memory_plan_checks_both_sides(tmp_path):
    from capojax import memory_plan as mp

    small = PRESETS["tiny-bench"].replace(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                          num_kv_heads=2, head_dim=16, vocab_size=96)
    (tmp_path / "config.json").write_text(json.dumps(small.to_hf()))
    c = tiny_capo.get_config()
    c.model.path = str(tmp_path)
    c.mesh.fsdp, c.mesh.tp = -1, 2
    c.data.max_prompt_len, c.rollout.max_new_tokens, c.rollout.n = 8, 8, 4
    c.train.prompts_per_step, c.train.ppo_mini_batch, c.train.micro_batch = 8, 4, 8
    c.rollout.engine, c.rollout.vllm_launch, c.rollout.vllm_devices = "vllm", True, 4
    plan = mp.memory_plan(c)
    assert plan.mesh == {"fsdp": 2, "tp": 2}  # the 4 GPUs the server leaves
    assert plan.rollout_peak == 0 and plan.server is not None and plan.server.tensor_parallel_size == 4
    text = mp.format_plan(plan)
    assert "vLLM on GPUs 4,5,6,7" in text and "vLLM: KV cache space" in text


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("k, rollout, mesh, match", [
    (8, {}, (-1, 2), r"vllm_devices=8 leaves 0 of the node's 8 GPUs"),
    (2, {}, (4, 2), r"mesh.fsdp=4 x mesh.tp=2\) does not fit the 6 GPUs"),
    (3, {}, (-1, 2), r"does not fit the 5 GPUs"),
    (0, {"trainer_memory_fraction": 0.7, "vllm_gpu_memory_utilization": 0.3}, (-1, 2), r"= 1.00, which must be below"),
    (2, {"vllm_tensor_parallel_size": 1}, (-1, 2), r"must equal rollout.vllm_devices=2"),
])
def test_impossible_layouts_are_refused_with_the_numbers(k, rollout, mesh, match):
    c = vllm_config(k, **rollout)
    c.mesh.fsdp, c.mesh.tp = mesh
    with pytest.raises(L.LayoutError, match=match):
        L.node_layout(c, 8)


def test_tensor_parallel_size_must_split_the_heads():
    c = vllm_config(3)  # 28 query heads: 3 does not divide them
    c.mesh.fsdp, c.mesh.tp = -1, 1
    layout = L.node_layout(c, 8)
    with pytest.raises(L.LayoutError, match=r"28 query / 4 kv heads over tensor_parallel_size=3; .*\[1, 2, 4, 28\]"):
        L.plan_server(layout, PRESETS["qwen2.5-math-7b"], dtype_bytes=2, max_model_len=4097, step_rows=1024)


def test_launcher_refuses_a_server_that_cannot_fit(checkpoint_7b):
    config = vllm_config(0, vllm_gpu_memory_utilization=0.15)  # 12 GB of one GPU for 15 GB of bf16 weights
    layout = L.node_layout(config, 8)
    with pytest.raises(L.LayoutError, match=r"share 12.0 GB per GPU, weights 15.2 GB"):
        launch_config(config, checkpoint_7b, layout)


# ------------------------------------------------------------------------------------------- a server started by hand


def _serve_vllm():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_vllm", REPO / "scripts" / "serve_vllm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_loopback_server_gets_the_layout_a_launched_one_would():
    external = vllm_config(2, vllm_launch=False)
    assert L.layout_requested(external)  # default rollout.vllm_url is 127.0.0.1: the server is on this node
    assert L.trainer_devices(external, jax.devices()) == jax.devices()[:6]
    for url, on_node in [("http://localhost:8000", True), ("http://[::1]:8000", True), ("http://10.0.0.5:8000", False),
                         ("", True)]:  # no URL: the trainer launches one
        external.rollout.vllm_url = url
        assert L.layout_requested(external) is on_node, url
    external.rollout.engine = "jax"
    assert not L.layout_requested(external)


def test_serve_vllm_with_a_config_starts_the_server_the_trainer_would_launch(checkpoint_7b):
    serve = _serve_vllm()
    config_file = str(REPO / "configs" / "capo_7b.py")
    args, extra = serve.parse_args(["--model", checkpoint_7b, "--config", config_file, "--port", "8011",
                                    "--set", "rollout.engine=vllm", "--set", "rollout.vllm_devices=2",
                                    "--set", "rollout.vllm_dtype=bfloat16", "--set", "mesh.tp=2", "--set", "mesh.fsdp=-1",
                                    "--", "--max-num-seqs", "64"])
    node = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    server, layout = serve.server_config(args, extra, environ=node)
    expected = launch_config(vllm_config(2), checkpoint_7b, L.node_layout(vllm_config(2), 8))
    assert layout.server_gpus == ("6", "7") and layout.trainer_environment() == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5"}
    assert dict(server.env) == {"CUDA_VISIBLE_DEVICES": "6,7"} and server.tensor_parallel_size == 2
    assert server.gpu_memory_utilization == expected.gpu_memory_utilization and server.dtype == "bfloat16"
    assert server.max_model_len == expected.max_model_len and server.port == 8011
    assert server.extra_args == ("--max-num-seqs", "64")
    # co-located: the server's share, never sleep mode (only a launched server is put to sleep)
    args, extra = serve.parse_args(["--model", checkpoint_7b, "--config", config_file, "--set", "rollout.engine=vllm",
                                    "--set", "rollout.vllm_dtype=bfloat16"])
    server, layout = serve.server_config(args, extra, environ=node)
    assert layout.colocated and layout.sleep and "--enable-sleep-mode" not in server.extra_args
    assert server.gpu_memory_utilization == pytest.approx(0.9 - 0.55)
    # no GPUs: the config's settings, no layout
    server, layout = serve.server_config(args, extra, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert layout is None and server.env == () and server.dtype == "bfloat16"


def test_serve_vllm_refuses_bad_overrides_and_impossible_layouts(checkpoint_7b, capsys):
    serve = _serve_vllm()
    config_file = str(REPO / "configs" / "capo_7b.py")
    assert serve.main(["--model", checkpoint_7b, "--config", config_file, "--set", "rollout.nope=1"]) == 2
    assert "--set rollout.nope: the config has no such key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.parse_args(["--model", checkpoint_7b, "--set", "rollout.vllm_devices=2"])  # --set needs --config
    args, extra = serve.parse_args(["--model", checkpoint_7b, "--config", config_file, "--set", "rollout.engine=vllm",
                                    "--set", "rollout.vllm_devices=8"])
    with pytest.raises(L.LayoutError, match="leaves 0 of the node's 8 GPUs"):
        serve.server_config(args, extra, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})


def test_serve_vllm_set_parses_values_in_the_config_types(tmp_path):
    serve = _serve_vllm()
    config_file = str(REPO / "configs" / "capo_7b.py")
    config = serve.load_config(config_file, ["rollout.vllm_sleep=false", "rollout.vllm_devices=2",
                                             "rollout.trainer_memory_fraction=0.5", "rollout.vllm_dtype=bfloat16"])
    assert config.rollout.vllm_sleep is False and config.rollout.vllm_devices == 2
    assert config.rollout.trainer_memory_fraction == 0.5 and config.rollout.vllm_dtype == "bfloat16"
    for bad, match in [("rollout.vllm_sleep=maybe", "expected true or false"),
                       ("rollout.vllm_devices=two", "expected a int"),
                       ("nope.vllm_devices=2", "no such key"), ("rollout.vllm_devices", "expected KEY=VALUE")]:
        with pytest.raises(ConfigError, match=match):
            serve.load_config(config_file, [bad])
    with pytest.raises(SystemExit):  # a server flag beside --config would be ignored: refused instead
        serve.parse_args(["--model", str(tmp_path), "--config", config_file, "--dtype", "bfloat16"])
