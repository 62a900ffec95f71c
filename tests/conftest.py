"""Test-wide setup: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The benchmark/tokenizer data beside the checkout; skip with a reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (place ../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(shared_data) -> pathlib.Path:
    path = shared_data / "tokenizers" / "qwen2.5"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"real Qwen2.5 tokenizer not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A quickly SFT'd tiny base (few steps: it only has to be a real checkpoint, not a good model)."""
    from capojax import sft

    settings = sft.SFTSettings(hidden_size=64, num_layers=2, num_heads=1, num_kv_heads=1, intermediate_size=128,
                               steps=30, batch_size=16, eval_problems=16)
    return sft.ensure_tiny_base(tmp_path_factory.mktemp("cache"), settings)
