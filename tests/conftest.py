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
def benchmark_data() -> pathlib.Path:
    """A folder holding the primary benchmark files in ../shared/data's layout: ../shared/data when present, else the
    hash-checked cache that `capojax.data.fetch` fills (downloading on a bare clone with network); skip when neither
    is possible, with the fetch error as the reason."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    from capojax.data import fetch

    try:
        for name in fetch.SOURCES:
            fetch.locate(name)
    except fetch.BenchmarkFileError as e:
        pytest.skip(f"no ../shared/data beside the checkout and the benchmark files cannot be fetched: {e}")
    return fetch.cache_dir()


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


# The generation-prompt part of Qwen3's chat template (its tool-calling and reasoning-history branches are not
# used for a system + user turn): the empty think block is written only when enable_thinking is explicitly false.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


@pytest.fixture(scope="session")
def qwen3_style_tokenizer_dir(qwen_tokenizer_dir, tmp_path_factory) -> pathlib.Path:
    """A tokenizer folder (tokenizer.json + tokenizer_config.json) of the real Qwen2.5 vocabulary with Qwen3's
    `enable_thinking` chat-template branch, as a Qwen3 checkpoint ships it."""
    from capojax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(qwen_tokenizer_dir)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("qwen3_style_tokenizer")
    tokenizer.save_pretrained(str(folder))
    return folder
