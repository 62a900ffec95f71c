"""Methods mixed into vLLM's worker class (`--worker-extension-cls`), called over HTTP by the trainer.

vLLM inherits the worker class from this one, so `self` is the worker (`self.model_runner`, `self.rank`,
`self.reload_weights`). The trainer reaches these methods through the dev-mode endpoint
`POST /collective_rpc {"method": "capojax_load_weights", "args": ["<json manifest>"]}` (needs
`VLLM_SERVER_DEV_MODE=1`); that endpoint only forwards strings, so the manifest is a JSON string and the
return value a JSON-able dict (one per worker).

The file transport (capojax/rollout/weight_sync.py) writes the trainer's weights as Hugging Face named
safetensors files to a fast local path (e.g. /dev/shm) and calls `capojax_load_weights` with
`{"files": [...], "version": N, "num_tensors": K}`. The tensors go through the model's own `load_weights`
(which fuses q/k/v and gate/up into vLLM's packed layers and shards them for tensor parallelism), via
vLLM's in-place reload when this vLLM has it, so layers whose weights are repacked after loading (e.g.
CPU GEMM layouts) are repacked again. The caller resets the prefix cache afterwards: cached KV blocks were
computed with the old weights.

Keep this file free of capojax imports: it runs in vLLM's venv, where capojax is not installed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator


class CapojaxWorkerExtension:
    """Weight reload from safetensors files written by the trainer."""

    _capojax_weight_version: int = -1

    def capojax_load_weights(self, manifest: str) -> dict[str, Any]:
        """Loads every tensor of the manifest's files into the running model.

        manifest: JSON `{"files": [path, ...], "version": int, "num_tensors": int}`; tensors carry HF
        names (model.layers.0.self_attn.q_proj.weight, ...). Returns
        `{"rank", "version", "num_tensors", "bytes", "seconds"}` for this worker.
        """
        import torch
        from safetensors import safe_open

        spec = json.loads(manifest)
        files = list(spec["files"])
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(
                f"capojax_load_weights: files {missing} do not exist in the server's filesystem; the "
                "file transport needs the trainer and the vLLM server on the same host (or a shared path)"
            )
        stats = {"num_tensors": 0, "bytes": 0}

        def tensors() -> Iterator[tuple[str, "torch.Tensor"]]:
            for path in files:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        t = f.get_tensor(name)
                        stats["num_tensors"] += 1
                        stats["bytes"] += t.numel() * t.element_size()
                        yield name, t

        t0 = time.perf_counter()
        with torch.inference_mode():
            if hasattr(self, "reload_weights"):
                # vLLM's in-place reload: re-runs the post-load weight processing of each layer.
                self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
            else:  # older vLLM: the classic RLHF recipe
                self.model_runner.model.load_weights(weights=tensors())
            retied = _refresh_tied_lm_head(self.model_runner.get_model())
        seconds = time.perf_counter() - t0
        expected = spec.get("num_tensors")
        if expected is not None and stats["num_tensors"] != int(expected):
            raise RuntimeError(
                f"capojax_load_weights read {stats['num_tensors']} tensors but the manifest announced "
                f"{expected}; a weight file was truncated or overwritten during the load"
            )
        self._capojax_weight_version = int(spec.get("version", -1))
        return {"rank": int(getattr(self, "rank", 0)), "version": self._capojax_weight_version,
                "num_tensors": stats["num_tensors"], "bytes": stats["bytes"], "seconds": seconds,
                "refreshed_tied_lm_head": retied}

    def capojax_weight_version(self) -> dict[str, Any]:
        """The version of the last `capojax_load_weights` on this worker (-1 = the checkpoint's weights)."""
        return {"rank": int(getattr(self, "rank", 0)), "version": self._capojax_weight_version}


def _refresh_tied_lm_head(model: Any) -> bool:
    """Re-derives a tied lm_head from the freshly loaded embedding; True when the model has one.

    With tie_word_embeddings the checkpoint has no lm_head tensor, so a reload never touches the lm_head
    layer, but some backends keep a derived copy of its weight (vLLM's CPU build packs it for its GEMM kernels
    in `process_weights_after_loading`): without this the server keeps computing logits with the old
    embedding (the probe check sees ~1 nat of gap on a tiny model).
    """
    config = getattr(model, "config", None)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or lm_head is None or embed is None:
        return False
    if getattr(lm_head, "weight", None) is not embed.weight:
        lm_head.weight = embed.weight  # the reload replaced the shared parameter: tie it again
    method = getattr(lm_head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(lm_head)
    return True
