"""Which checkpoint folder `config.model` names: `resolve_model_path(model_cfg) -> str`.

`path == "tiny"` builds (once, then cached) the SFT'd tiny base of `capojax.sft`; any other `path` must be an HF
checkpoint folder. An unset or wrong path is a `ModelNotFoundError` that says where to download the model and
which key to set.

Not exported by `capojax.models`: it reaches up to the SFT stage (`capojax.sft`), which itself builds on the models.
"""

from __future__ import annotations

import os

from capojax.errors import ConfigError, UserError

__all__ = ["ModelNotFoundError", "resolve_model_path"]


class ModelNotFoundError(UserError, FileNotFoundError):
    """config.model.path is unset or not an HF checkpoint folder."""


def resolve_model_path(model_cfg) -> str:
    """The HF checkpoint folder for ``config.model``.

    ``path == "tiny"``: the SFT'd tiny base, built on first use and cached under ``cache_dir`` (see capojax.sft).
    Otherwise ``path`` must be a folder with config.json; if it is unset or missing, the error says where to
    download the model and which key to set."""
    path = str(model_cfg.path or "")
    if path == "tiny":
        from capojax import sft  # the SFT stage (and its JAX training step) only when the tiny base is asked for

        try:
            settings = sft.SFTSettings.from_config(model_cfg.tiny_base)
        except ValueError as e:  # SFTSettings' own checks, made the CLI's one-line config error
            raise ConfigError(f"config.model.tiny_base: {e}") from e
        return sft.ensure_tiny_base(os.path.expanduser(str(model_cfg.cache_dir)), settings)
    name = str(getattr(model_cfg, "hf_name", "") or "")
    how = (
        f"Download it with `huggingface-cli download {name} --local-dir /models/{name.split('/')[-1]}` "
        f"(https://huggingface.co/{name}) and pass --config.model.path=/models/{name.split('/')[-1]}."
        if name else "Pass --config.model.path=<an HF checkpoint folder>, or tiny for the built-in tiny base."
    )
    if not path:
        raise ModelNotFoundError(f"config.model.path is not set: this config trains {name or 'an HF model'}. {how}")
    path = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFoundError(f"config.model.path={path!r} has no config.json (not an HF checkpoint folder). {how}")
    return path
