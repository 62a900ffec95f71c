"""Tiny random Qwen checkpoints written by transformers itself (torch, CPU), shared by the model tests."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

VOCAB = 256


@dataclasses.dataclass
class HFCheckpoint:
    name: str
    path: pathlib.Path
    torch_model: object  # transformers *ForCausalLM in float32, eval mode

    def torch_logits(self, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
                     positions: np.ndarray | None = None) -> np.ndarray:
        import torch

        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.tensor(attention_mask.astype(np.int64))
        if positions is not None:
            kwargs["position_ids"] = torch.tensor(positions.astype(np.int64))
        with torch.no_grad():
            return self.torch_model(torch.tensor(tokens.astype(np.int64)), **kwargs).logits.float().numpy()


def _hf_configs():
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    return {
        "qwen2-tied": transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=10000.0),
        "qwen2-untied": transformers.Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1000.0),
        # head_dim 32 != hidden/heads (16): Qwen3 reads head_dim explicitly.
        "qwen3": transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=False,
                                          rope_theta=1000000.0),
    }


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, HFCheckpoint]:
    """name -> HFCheckpoint; every tensor is random (biases non-zero, norm weights != 1) so each one matters."""
    torch = pytest.importorskip("torch")
    import transformers

    out = {}
    for k, (name, config) in enumerate(_hf_configs().items()):
        torch.manual_seed(k)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.uniform_(0.5, 1.5)
                else:
                    p.normal_(0.0, 0.08)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = HFCheckpoint(name, path, model)
    return out


@pytest.fixture(params=["qwen2-tied", "qwen2-untied", "qwen3"])
def hf_checkpoint(request, hf_checkpoints) -> HFCheckpoint:
    return hf_checkpoints[request.param]
