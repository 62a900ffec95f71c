"""Hugging Face checkpoints <-> `Qwen` parameters, through one explicit table (`weight_table`).

Each row of the table names a parameter path of `nnx.state(Qwen)`, the HF tensor name (`{i}` = layer index for
per-layer tensors, stacked on our leading layer axis) and a layout that says how the two shapes relate:

    layout      HF tensor                ours (per layer)   conversion
    ----------  -----------------------  -----------------  --------------------------------------------
    same        [...]                    [...]              identity (embeddings, norm weights)
    linear      [out, in]                [in, out]          transpose (torch Linear stores out x in)
    heads_out   [n * D, H]               [H, n, D]          transpose, split the output dim into heads
    bias_heads  [n * D]                  [n, D]             split into heads
    heads_in    [H, n * D]               [n, D, H]          transpose, split the input dim into heads

Loading checks the file set against the table before reading any data: a tensor the table does not know, a
tensor it expects but the checkpoint lacks, or a shape that differs from the config's, is a ValueError naming the
tensor and both shapes. With a mesh, each device reads only its own shard of each tensor straight from the
memory-mapped safetensors (`jax.make_array_from_callback`), so a 7B model never sits whole in host memory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import shutil
from contextlib import ExitStack
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from capojax.models.config import QwenConfig
from capojax.models.qwen import Qwen
from capojax.sharding import param_shardings

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# Tensors some checkpoints carry that hold nothing the model needs (RoPE buffers are recomputed).
IGNORED_TENSORS = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # key path in nnx.state(model)
    hf_name: str  # HF tensor name; "{i}" marks a per-layer tensor stacked on our leading layer axis
    layout: str  # see the module docstring

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def weight_table(config: QwenConfig) -> list[Entry]:
    """The one table of (param path, HF tensor name, layout) for a config, in HF file order."""
    layer = "model.layers.{i}."
    table = [Entry(("embed",), "model.embed_tokens.weight", "same")]
    table += [
        Entry(("layers", "attn_norm"), layer + "input_layernorm.weight", "same"),
        Entry(("layers", "q_proj"), layer + "self_attn.q_proj.weight", "heads_out"),
        Entry(("layers", "k_proj"), layer + "self_attn.k_proj.weight", "heads_out"),
        Entry(("layers", "v_proj"), layer + "self_attn.v_proj.weight", "heads_out"),
    ]
    if config.qkv_bias:
        table += [
            Entry(("layers", "q_bias"), layer + "self_attn.q_proj.bias", "bias_heads"),
            Entry(("layers", "k_bias"), layer + "self_attn.k_proj.bias", "bias_heads"),
            Entry(("layers", "v_bias"), layer + "self_attn.v_proj.bias", "bias_heads"),
        ]
    if config.qk_norm:
        table += [
            Entry(("layers", "q_norm"), layer + "self_attn.q_norm.weight", "same"),
            Entry(("layers", "k_norm"), layer + "self_attn.k_norm.weight", "same"),
        ]
    table += [
        Entry(("layers", "o_proj"), layer + "self_attn.o_proj.weight", "heads_in"),
        Entry(("layers", "mlp_norm"), layer + "post_attention_layernorm.weight", "same"),
        Entry(("layers", "gate_proj"), layer + "mlp.gate_proj.weight", "linear"),
        Entry(("layers", "up_proj"), layer + "mlp.up_proj.weight", "linear"),
        Entry(("layers", "down_proj"), layer + "mlp.down_proj.weight", "linear"),
        Entry(("norm",), "model.norm.weight", "same"),
    ]
    if not config.tie_word_embeddings:
        table.append(Entry(("lm_head",), "lm_head.weight", "linear"))
    return table


# ---------------------------------------------------------------------------------------- layouts


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape that corresponds to our per-layer shape."""
    if layout == "same":
        return ours
    if layout == "linear":
        return (ours[1], ours[0])
    if layout == "heads_out":
        h, n, d = ours
        return (n * d, h)
    if layout == "bias_heads":
        n, d = ours
        return (n * d,)
    if layout == "heads_in":
        n, d, h = ours
        return (h, n * d)
    raise ValueError(f"unknown layout {layout!r}")


def to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    """Our per-layer array -> the HF tensor."""
    if layout == "same":
        return x
    if layout == "linear":
        return x.T
    if layout == "heads_out":
        h, n, d = x.shape
        return x.reshape(h, n * d).T
    if layout == "bias_heads":
        return x.reshape(-1)
    if layout == "heads_in":
        n, d, h = x.shape
        return x.reshape(n * d, h).T
    raise ValueError(f"unknown layout {layout!r}")


def _block_reader(layout: str, ours: tuple[int, ...], index: tuple[slice, ...]) -> tuple[tuple[slice, ...], Callable]:
    """For a block `index` of our per-layer array: the HF slice to read and how to turn it into our block.

    The heads dims are split as whole heads (head_dim is never sharded), so every block is one rectangular HF
    slice and a device reads only the bytes of its own shard.
    """
    idx = tuple(slice(*s.indices(n)) for s, n in zip(index, ours))
    if layout == "same":
        return idx, lambda t: t
    if layout == "linear":
        return (idx[1], idx[0]), lambda t: t.T
    if layout == "heads_out":
        (hs, ns, ds), (_, _, d) = idx, ours
        if (ds.start, ds.stop) == (0, d):
            rows = slice(ns.start * d, ns.stop * d)
            return (rows, hs), lambda t: t.T.reshape(hs.stop - hs.start, ns.stop - ns.start, d)
    if layout == "bias_heads":
        (ns, ds), (_, d) = idx, ours
        if (ds.start, ds.stop) == (0, d):
            return (slice(ns.start * d, ns.stop * d),), lambda t: t.reshape(ns.stop - ns.start, d)
    if layout == "heads_in":
        (ns, ds, hs), (_, d, _) = idx, ours
        if (ds.start, ds.stop) == (0, d):
            cols = slice(ns.start * d, ns.stop * d)
            return (hs, cols), lambda t: t.T.reshape(ns.stop - ns.start, d, hs.stop - hs.start)
    # head_dim split (no rule does this): read the whole tensor, convert, then cut the block.
    full = tuple(slice(0, n) for n in hf_shape(layout, ours))
    return full, lambda t: _from_hf(layout, t, ours)[idx]


def _from_hf(layout: str, t: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if layout in ("same", "bias_heads"):
        return t.reshape(ours)
    if layout == "linear":
        return t.T
    if layout == "heads_out":
        return t.T.reshape(ours)
    if layout == "heads_in":
        return t.T.reshape(ours)
    raise ValueError(f"unknown layout {layout!r}")


# ---------------------------------------------------------------------------------------- loading


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """HF tensor name -> the safetensors file that holds it (single file or sharded via the index json)."""
    index = path / SAFETENSORS_INDEX
    single = path / SAFETENSORS
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {name: path / fname for name, fname in weight_map.items()}
        for fpath in set(files.values()):
            if not fpath.is_file():
                raise FileNotFoundError(f"{index} lists {fpath.name} but the file is missing")
        return files
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(
        f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {path}; point at an HF checkpoint folder "
        "(PyTorch .bin checkpoints are not supported: convert them to safetensors first)"
    )


def _state_path(key_path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def check_checkpoint(config: QwenConfig, files: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                     ours: dict[tuple[str, ...], tuple[int, ...]]) -> None:
    """Raise a ValueError naming every unknown / missing tensor or wrong shape (before any data is read).

    shapes: HF tensor name -> its shape in the files; ours: param path -> our (stacked) shape.
    """
    expected: dict[str, tuple[int, ...]] = {}
    for entry in weight_table(config):
        shape = ours[entry.path]
        if entry.per_layer:
            for i in range(config.num_layers):
                expected[entry.hf_name.format(i=i)] = hf_shape(entry.layout, shape[1:])
        else:
            expected[entry.hf_name] = hf_shape(entry.layout, shape)
    ignorable = [n for n in files if any(p.fullmatch(n) for p in IGNORED_TENSORS)]
    if config.tie_word_embeddings and "lm_head.weight" in files:
        ignorable.append("lm_head.weight")  # some tied checkpoints store the (identical) copy; logits use embed
    unknown = sorted(set(files) - set(expected) - set(ignorable))
    missing = sorted(set(expected) - set(files))
    errors = []
    if unknown:
        errors.append(f"{len(unknown)} tensor(s) the {config.model_type} weight table does not know: "
                      + ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else ""))
    if missing:
        errors.append(f"{len(missing)} tensor(s) missing from the checkpoint: "
                      + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    for name, shape in expected.items():
        if name in shapes and tuple(shapes[name]) != tuple(shape):
            errors.append(f"tensor {name} has shape {tuple(shapes[name])} in the checkpoint but config.json "
                          f"implies {tuple(shape)}")
    if errors:
        raise ValueError("checkpoint does not match its config.json:\n  " + "\n  ".join(errors))


def load_pretrained(path: str | pathlib.Path, *, dtype=jnp.float32, mesh: Mesh | None = None,
                    compute_dtype=None, remat: bool = False) -> tuple[Qwen, QwenConfig]:
    """Read an HF Qwen2/Qwen2.5/Qwen3 checkpoint folder -> (model, config).

    dtype: parameter dtype (and the compute dtype unless `compute_dtype` is given). With `mesh`, every parameter
    is created directly with its `capojax.sharding` layout; without, on the default device.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    config = QwenConfig.from_json(path)
    compute_dtype = dtype if compute_dtype is None else compute_dtype
    abstract = nnx.eval_shape(
        lambda: Qwen(config, rngs=nnx.Rngs(0), dtype=compute_dtype, param_dtype=dtype, remat=remat))
    graphdef, abs_state = nnx.split(abstract)
    ours = {_state_path(kp): tuple(v.shape) for kp, v in
            jax.tree_util.tree_leaves_with_path(abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    table = {entry.path: entry for entry in weight_table(config)}
    if set(table) != set(ours):  # a programming error, not a user one
        raise AssertionError(f"weight table {sorted(table)} does not cover the model params {sorted(ours)}")
    files = _tensor_files(path)
    if mesh is not None:
        shardings = param_shardings(abs_state, mesh)
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda v: v.replace(device), abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    with ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(f, framework="numpy")) for f in set(files.values())}
        shapes = {name: tuple(handles[f].get_slice(name).get_shape()) for name, f in files.items()}
        check_checkpoint(config, files, shapes, ours)

        def load(key_path, var, sharding):
            entry = table[_state_path(key_path)]
            shape = tuple(var.shape)
            np_dtype = jnp.dtype(dtype)

            def read(name, per_layer_shape, index):
                hf_index, convert = _block_reader(entry.layout, per_layer_shape, index)
                block = handles[files[name]].get_slice(name)[hf_index]
                return np.ascontiguousarray(convert(block)).astype(np_dtype)

            def callback(index):
                if not entry.per_layer:
                    return read(entry.hf_name, shape, index)
                layers = range(*index[0].indices(shape[0]))
                return np.stack([read(entry.hf_name.format(i=i), shape[1:], index[1:]) for i in layers])

            value = jax.make_array_from_callback(shape, sharding.get_value(), callback)
            return var.replace(value)

        state = jax.tree_util.tree_map_with_path(load, abs_state, shardings,
                                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state), config


# ---------------------------------------------------------------------------------------- saving


def save_pretrained(model: Qwen, config: QwenConfig, path: str | pathlib.Path, *, dtype=None,
                    max_shard_bytes: int = 5 * 2**30, tokenizer_path: str | pathlib.Path | None = None) -> None:
    """Write an HF checkpoint folder: config.json, generation_config.json, model.safetensors (or shards of at
    most `max_shard_bytes` plus model.safetensors.index.json), and the tokenizer files of `tokenizer_path`.

    dtype: dtype of the written tensors (default: the model's parameter dtype), e.g. jnp.bfloat16 for vLLM.
    Parameters are fetched to host one layer slice at a time, so a sharded model is never gathered whole.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = nnx.state(model, nnx.Param)
    params = {_state_path(kp): v.get_value() for kp, v in
              jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    dtype = jnp.dtype(dtype if dtype is not None else params[("embed",)].dtype)

    # (hf name, zero-arg function producing the numpy tensor, its byte size), in HF order: embed, layers, norm, head
    tensors: list[tuple[str, Callable[[], np.ndarray], int]] = []
    table = weight_table(config)
    if set(e.path for e in table) != set(params):
        raise ValueError(f"model params {sorted(params)} do not match the weight table of this config; "
                         "was the model built from a different QwenConfig?")

    def add(name, array, index, layout):
        shape = hf_shape(layout, tuple(array.shape[1:] if index is not None else array.shape))
        fetch = lambda: np.ascontiguousarray(to_hf(layout, np.asarray(  # noqa: E731
            jax.device_get(_take_layer(array, index) if index is not None else array)).astype(dtype)))
        tensors.append((name, fetch, int(np.prod(shape)) * dtype.itemsize))

    for entry in table:
        if not entry.per_layer and entry.path != ("norm",) and entry.path != ("lm_head",):
            add(entry.hf_name, params[entry.path], None, entry.layout)
    for i in range(config.num_layers):
        for entry in table:
            if entry.per_layer:
                add(entry.hf_name.format(i=i), params[entry.path], i, entry.layout)
    for entry in table:
        if entry.path in (("norm",), ("lm_head",)):
            add(entry.hf_name, params[entry.path], None, entry.layout)

    shards: list[list[int]] = [[]]
    size = 0
    for k, (_, _, nbytes) in enumerate(tensors):
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    for stale in list(path.glob("model*.safetensors")) + [path / SAFETENSORS_INDEX]:
        stale.unlink(missing_ok=True)  # an old export with a different sharding must not linger
    metadata = {"format": "pt"}  # transformers refuses safetensors without the "pt" format tag
    if len(shards) == 1:
        save_file({name: fetch() for name, fetch, _ in tensors}, str(path / SAFETENSORS), metadata=metadata)
    else:
        weight_map = {}
        for s, members in enumerate(shards):
            fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({tensors[k][0]: tensors[k][1]() for k in members}, str(path / fname), metadata=metadata)
            weight_map.update({tensors[k][0]: fname for k in members})
        index = {"metadata": {"total_size": sum(t[2] for t in tensors)}, "weight_map": weight_map}
        (path / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))

    (path / "config.json").write_text(json.dumps(config.to_hf(dtype=_dtype_name(dtype)), indent=2))
    eos = list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": eos}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_path is not None:
        for fname in TOKENIZER_FILES:
            src = pathlib.Path(tokenizer_path) / fname
            if src.is_file():
                shutil.copyfile(src, path / fname)


@jax.jit
def _take_layer(stacked: jax.Array, i) -> jax.Array:
    """stacked[i] with a traced index: one compile per parameter shape, not one per layer (eager x[i] is static)."""
    return jax.lax.dynamic_index_in_dim(stacked, i, keepdims=False)


# ---------------------------------------------------------------------------------------- random init


def init_model(config: QwenConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=None, mesh: Mesh | None = None,
               remat: bool = False) -> Qwen:
    """A randomly initialised model (normal(0.02) weights, unit norms, zero biases), for tests and tiny configs.

    dtype: compute dtype, and the parameter dtype unless `param_dtype` is given. The parameters are created
    inside one jit (much faster than eager op-by-op init; compiled once per config / dtype / mesh, then reused
    for every seed); with `mesh` its outputs carry the parameters' shardings, so they are born sharded and never
    exist whole on one device.
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    graphdef, init_fn = _init_fn(config, jnp.dtype(dtype), jnp.dtype(param_dtype), remat, mesh)
    # "rbg" keys: XLA compiles RngBitGenerator much faster than threefry on CPU.
    return nnx.merge(graphdef, init_fn(jax.random.key(seed, impl="rbg")))


@functools.lru_cache(maxsize=8)
def _init_fn(config: QwenConfig, dtype, param_dtype, remat: bool, mesh: Mesh | None):
    def build(key):
        return Qwen(config, rngs=nnx.Rngs(key), dtype=dtype, param_dtype=param_dtype, remat=remat)

    graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0, impl="rbg"))))
    shardings = param_shardings(abs_state, mesh) if mesh is not None else None
    return graphdef, jax.jit(lambda key: nnx.state(build(key)), out_shardings=shardings)
