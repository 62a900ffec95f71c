"""QwenConfig: the architecture hyper-parameters of a Qwen2 / Qwen2.5 / Qwen3 causal LM.

Read from (and written back to) a Hugging Face `config.json`. Only what the Flax model implements is accepted:
full causal attention with plain RoPE (rope_type "default"), SiLU-gated MLP, q/k/v bias for Qwen2 and q/k RMSNorm
for Qwen3. Anything else (yarn / linear / dynamic rope scaling, sliding-window attention, another activation, another
architecture) is rejected with a `ValueError` that says what is unsupported, instead of silently computing a
different function than the checkpoint was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class QwenConfig:
    """Hyper-parameters of a Qwen causal LM (hashable: it is static metadata of the nnx graph)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True  # Qwen2/2.5: q, k, v projections have a bias (o_proj never does)
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "qwen2"  # "qwen2" | "qwen3"

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; capojax implements {sorted(ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"QwenConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention shares each kv head between num_heads/num_kv_heads query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if isinstance(self.eos_token_id, list):  # keep the dataclass hashable
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (empty when the config has none)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **changes) -> "QwenConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json <-> QwenConfig

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "QwenConfig":
        """Build from the dict of an HF `config.json` (Qwen2ForCausalLM / Qwen3ForCausalLM)."""
        hf = dict(hf)
        model_type = hf.get("model_type")
        archs = hf.get("architectures") or []
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture: model_type={model_type!r}, architectures={archs}; capojax loads "
                f"{sorted(ARCHITECTURES.values())} checkpoints only"
            )
        expected_arch = ARCHITECTURES[model_type]
        if archs and expected_arch not in archs:
            raise ValueError(
                f"unsupported architecture {archs} for model_type={model_type!r}; expected {expected_arch!r} "
                "(a causal-LM checkpoint, not a classification / reward head)"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported (Qwen MLPs use 'silu')")
        if hf.get("use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=true is not supported: capojax implements full causal attention only; "
                "set use_sliding_window=false in config.json if the checkpoint was trained without it"
            )
        layer_types = hf.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise ValueError(
                f"layer_types {sorted(set(layer_types))} are not supported: only 'full_attention' layers are "
                "implemented (no sliding-window layers)"
            )
        rope_theta = _rope_theta(hf)
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        if model_type == "qwen2":
            qkv_bias, qk_norm = True, False
        else:
            if hf.get("attention_bias", False):
                raise ValueError(
                    "Qwen3 with attention_bias=true is not supported (released Qwen3 checkpoints have no biases)"
                )
            qkv_bias, qk_norm = False, True
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(eos) if len(eos) != 1 else eos[0]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            model_type=model_type,
        )

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> "QwenConfig":
        """Read an HF `config.json` (or a checkpoint folder that contains one)."""
        path = pathlib.Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}; pass an HF checkpoint folder or its config.json")
        with open(path) as f:
            return cls.from_hf(json.load(f))

    def to_hf(self, *, dtype: str = "bfloat16") -> dict[str, Any]:
        """The dict of an HF `config.json` that transformers (and vLLM) load as this architecture.

        dtype: the `torch_dtype` / `dtype` recorded in the file (the dtype the safetensors are written in).
        """
        if self.model_type == "qwen2" and not self.qkv_bias:
            raise ValueError("a qwen2 config must have qkv_bias=True (HF Qwen2 always has q/k/v biases)")
        if self.model_type == "qwen3" and (self.qkv_bias or not self.qk_norm):
            raise ValueError("a qwen3 config must have qkv_bias=False and qk_norm=True")
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        hf: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": 0.02,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": True,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": dtype,
            "dtype": dtype,
        }
        if self.model_type == "qwen3":
            hf["attention_bias"] = False
        return hf

    def num_params(self) -> int:
        """Closed-form parameter count (the tests check it against jax.eval_shape of the module)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * layer + h


def _rope_theta(hf: dict[str, Any]) -> float:
    """rope_theta from a top-level key (real Qwen checkpoints) or transformers-5 `rope_parameters`; reject scaling."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    for name, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{name} must be a dict or null, got {spec!r}")
        rope_type = spec.get("rope_type", spec.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"{name} with rope_type={rope_type!r} is not supported: capojax implements plain RoPE only "
                "(no yarn / linear / dynamic / longrope scaling); remove the scaling or use a checkpoint without it"
            )
    if params is not None and "rope_theta" in params:
        theta = params["rope_theta"]
        if "rope_theta" in hf and float(hf["rope_theta"]) != float(theta):
            raise ValueError(
                f"config.json has rope_theta={hf['rope_theta']} but rope_parameters.rope_theta={theta}; they must agree"
            )
        return float(theta)
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    raise ValueError("config.json has neither rope_theta nor rope_parameters.rope_theta")


# The released configs (from the HF config.json files) and a tiny one for CPU benchmarks / tests.
PRESETS: dict[str, QwenConfig] = {
    "qwen2.5-math-1.5b": QwenConfig(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        qkv_bias=True, qk_norm=False, max_position_embeddings=4096, bos_token_id=151643,
        eos_token_id=151643, model_type="qwen2",
    ),
    "qwen2.5-math-7b": QwenConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        qkv_bias=True, qk_norm=False, max_position_embeddings=4096, bos_token_id=151643,
        eos_token_id=151643, model_type="qwen2",
    ),
    "qwen3-8b": QwenConfig(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        qkv_bias=False, qk_norm=True, max_position_embeddings=40960, bos_token_id=151643,
        eos_token_id=151645, model_type="qwen3",
    ),
    "tiny-bench": QwenConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        qkv_bias=True, qk_norm=False, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
        model_type="qwen2",
    ),
}
