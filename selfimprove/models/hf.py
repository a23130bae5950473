"""Hugging Face checkpoints in and out: safetensors folders <-> the library's transformer.

    config, graphdef, params = load_hf("/ckpt/Llama-3.2-1B", mesh=mesh)
    ...
    save_hf("/out/improved", config, params, tokenizer_folder="/ckpt/Llama-3.2-1B")

Import reads one tensor at a time (`safe_open` maps the files; nothing else
is read) and builds each of our parameters - stacked over the `layers` axis -
from its per-layer HF tensors, then places it straight into its final
sharding, so host memory peaks at about one stacked parameter. Dtypes are kept
(bf16 stays bf16) unless `dtype` asks otherwise.

Layouts. HF Linear weights are [out, in]; ours put input axes first:
q_proj [embed, heads, head_dim], k/v_proj [embed, kv_heads, head_dim],
o_proj [heads, head_dim, embed], gate/up [embed, mlp], down [mlp, embed],
lm_head [embed, vocab]. Our rotary embedding uses HF's rotate_half
convention, so q/k need no permutation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from selfimprove import sharding
from selfimprove.models.config import TransformerConfig
from selfimprove.models.hf_config import config_from_hf, config_to_hf
from selfimprove.models.lora import merge_lora
from selfimprove.models.transformer import Transformer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json", "vocab.json", "merges.txt")
# Non-persistent buffers some older checkpoints still carry.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class UnreadableFileError(ValueError):
  """A checkpoint file that exists but cannot be read (truncated, corrupt, no permission).

  A fault in the file rather than a setting to fix; its message starts with the file's path.
  """


def _open_safetensors(safe_open, path: str):
  """safe_open(path), with a failure (truncated header or data, not safetensors) naming the file."""
  try:
    return safe_open(path, framework="numpy")
  except Exception as error:   # safetensors' SafetensorError (not public in every version), OSError
    message = " ".join(str(error).split())
    raise UnreadableFileError(f"{path}: not a readable safetensors file ({message}).") from None


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """How one of our parameters maps to HF tensors.

  hf_name: the HF name, with "{i}" for the layer index when `stacked`.
  num_in: for a Linear weight, how many of our leading axes are its input
    axes (HF stores [prod(out), prod(in)]); 0 for vectors and the embedding,
    which only reshape.
  """

  hf_name: str
  stacked: bool
  num_in: int = 0


def _tensor_map(family: str) -> dict[tuple[str, ...], _Tensor]:
  """Our parameter path -> HF tensor, for one family."""
  layer = "model.layers.{i}."
  gemma2 = family == "gemma2"
  per_layer = {
      ("attention_norm", "scale"): ("input_layernorm.weight", 0),
      ("attention", "q_proj"): ("self_attn.q_proj.weight", 1),
      ("attention", "k_proj"): ("self_attn.k_proj.weight", 1),
      ("attention", "v_proj"): ("self_attn.v_proj.weight", 1),
      ("attention", "o_proj"): ("self_attn.o_proj.weight", 2),
      ("attention", "q_bias"): ("self_attn.q_proj.bias", 0),
      ("attention", "k_bias"): ("self_attn.k_proj.bias", 0),
      ("attention", "v_bias"): ("self_attn.v_proj.bias", 0),
      ("attention", "o_bias"): ("self_attn.o_proj.bias", 0),
      # Gemma2's "post_attention_layernorm" normalises the attention output;
      # everyone else's is the pre-MLP norm.
      ("mlp_norm", "scale"): ("pre_feedforward_layernorm.weight" if gemma2
                              else "post_attention_layernorm.weight", 0),
      ("post_attention_norm", "scale"): ("post_attention_layernorm.weight", 0),
      ("post_mlp_norm", "scale"): ("post_feedforward_layernorm.weight", 0),
      ("mlp", "gate_proj"): ("mlp.gate_proj.weight", 1),
      ("mlp", "up_proj"): ("mlp.up_proj.weight", 1),
      ("mlp", "down_proj"): ("mlp.down_proj.weight", 1),
  }
  table = {("blocks",) + path: _Tensor(layer + name, True, num_in)
           for path, (name, num_in) in per_layer.items()}
  table[("embedding",)] = _Tensor("model.embed_tokens.weight", False)
  table[("final_norm", "scale")] = _Tensor("model.norm.weight", False)
  table[("lm_head",)] = _Tensor("lm_head.weight", False, 1)
  return table


def _hf_shape(ours: tuple[int, ...], num_in: int, is_embedding: bool) -> tuple[int, ...]:
  """The HF shape of one layer's tensor whose (per-layer) shape is `ours` in our layout."""
  if num_in:
    return (math.prod(ours[num_in:]), math.prod(ours[:num_in]))
  return ours if is_embedding else (math.prod(ours),)


def to_ours(tensor: np.ndarray, shape: tuple[int, ...], num_in: int) -> np.ndarray:
  """One HF tensor -> our per-layer layout `shape`."""
  return tensor.T.reshape(shape) if num_in else tensor.reshape(shape)


def to_hf(array: np.ndarray, num_in: int, is_embedding: bool) -> np.ndarray:
  """One per-layer array in our layout -> the HF tensor (contiguous)."""
  shape = _hf_shape(array.shape, num_in, is_embedding)
  if num_in:
    return np.ascontiguousarray(array.reshape(shape[::-1]).T)
  return np.ascontiguousarray(array.reshape(shape))


class _TensorReader:
  """Name -> tensor over a folder's safetensors files, reading one tensor per call."""

  def __init__(self, folder: str):
    from safetensors import safe_open  # the [hf] extra; imported only when used
    self.folder = folder
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
      weight_map = _read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object mapping tensor names to files.")
      self.files = {name: os.path.join(folder, file) for name, file in weight_map.items()}
    else:
      paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                     if n.endswith(".safetensors"))
      if not paths:
        raise ValueError(
            f"{folder}: no model.safetensors (or sharded model-*.safetensors with "
            f"model.safetensors.index.json) found.")
      self.files = {}
      for path in paths:
        with _open_safetensors(safe_open, path) as f:
          self.files.update({name: path for name in f.keys()})
    self._open = {}
    self._safe_open = safe_open
    self.used: set[str] = set()

  def _handle(self, path: str):
    if path not in self._open:
      if not os.path.exists(path):
        raise ValueError(f"{path}: file listed in model.safetensors.index.json does not exist.")
      self._open[path] = _open_safetensors(self._safe_open, path)
    return self._open[path]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

  def read(self, name: str, expected_shape: tuple[int, ...], what: str) -> np.ndarray:
    """The tensor `name`, checked against `expected_shape`; errors name it and the file."""
    if name not in self.files:
      raise ValueError(
          f"{self.folder}: tensor {name!r} (for {what}) is missing from the checkpoint "
          f"({len(self.files)} tensors, e.g. {sorted(self.files)[:3]}). Check config.json "
          f"(num_hidden_layers, tie_word_embeddings, architecture) against the weights.")
    shape = self.shape(name)
    if shape != tuple(expected_shape):
      raise ValueError(
          f"{self.files[name]}: tensor {name!r} has shape {shape}, but config.json implies "
          f"{tuple(expected_shape)} (for {what}); check hidden_size, intermediate_size, "
          f"num_attention_heads, num_key_value_heads, head_dim and vocab_size.")
    self.used.add(name)
    return self._handle(self.files[name]).get_tensor(name)

  def unused(self) -> list[str]:
    return sorted(n for n in self.files if n not in self.used and not n.endswith(_IGNORED_SUFFIXES))


def _path_name(path: tuple[str, ...]) -> str:
  return "/".join(str(p) for p in path)


def _read_json(path: str) -> dict[str, Any]:
  """A JSON object from `path`; errors (missing, not JSON, not an object) name the file."""
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist; is {os.path.dirname(path)} a Hugging Face model folder?")
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}.") from None
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: not a JSON text file (byte {e.start} is not UTF-8).") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}.")
  return data


def read_hf_config(folder: str) -> tuple[TransformerConfig, str, dict[str, Any]]:
  """(TransformerConfig, family, raw config.json dict) for an HF model folder.

  Raises a ValueError naming the folder or config.json (and the field) when
  the folder does not exist, has no config.json, or describes a model this
  library does not support.
  """
  if not os.path.isdir(folder):
    what = "is not a directory" if os.path.exists(folder) else "does not exist"
    raise ValueError(f"{folder} {what}; expected a Hugging Face model folder "
                     f"(config.json and *.safetensors).")
  path = os.path.join(folder, "config.json")
  hf = _read_json(path)
  config, family = config_from_hf(hf, path)
  return config, family, hf


def _place(value: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
  if sharding is None:
    return jax.device_put(value)
  # Each device (of every process) copies only its own shard out of `value`.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_hf(folder: str, mesh: Mesh | None = None, rules: sharding.Rules | None = None,
            dtype: str | None = None) -> tuple[TransformerConfig, nnx.GraphDef, nnx.State]:
  """Reads an HF Llama / Qwen2 / Mistral / Gemma / Gemma2 folder into our transformer.

  Args:
    folder: holds config.json and model.safetensors (or sharded
      model-0000x-of-0000y.safetensors with model.safetensors.index.json).
    mesh: place each parameter in its sharding on this mesh (None: the
      default device, unsharded).
    rules: logical-axis rules (default: the config's, i.e. DEFAULT_RULES).
    dtype: parameter and compute dtype, e.g. "float32" (None: the dtype the
      weights are stored in).

  Returns:
    (config, graphdef, params), as `nnx.split(Transformer(config, ...))` gives.

  Raises:
    ValueError naming the file and field or tensor when config.json is
    unsupported, a tensor is missing or has the wrong shape, or the files
    hold tensors the model would silently drop.
  """
  config, family, _ = read_hf_config(folder)
  reader = _TensorReader(folder)
  if dtype is None and "model.embed_tokens.weight" in reader.files:
    stored = reader._handle(reader.files["model.embed_tokens.weight"]).get_slice(
        "model.embed_tokens.weight").get_dtype()
    dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(stored, config.dtype)
  config = config.replace(dtype=dtype or config.dtype, param_dtype=dtype or config.param_dtype)
  if rules is not None:
    config = config.replace(sharding_rules=rules)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = None
  if mesh is not None:
    shardings = dict(nnx.to_flat_state(
        sharding.state_shardings(abstract_state, mesh, config.sharding_rules)))
  table = _tensor_map(family)
  loaded = []
  for path, variable in nnx.to_flat_state(abstract_state):
    spec = table.get(path)
    if spec is None:
      raise ValueError(f"Parameter {_path_name(path)} has no Hugging Face counterpart "
                       f"(LoRA adapters are added after import, see adapters.add_adapters).")
    value = _read_parameter(reader, spec, path, variable.shape, config.params_dtype)
    target = None if shardings is None else shardings[path].get_value()
    loaded.append((path, variable.replace(_place(value, target))))
    del value
  if config.tie_embeddings:
    reader.used.add("lm_head.weight")   # some tied checkpoints still store a copy
  unused = reader.unused()
  if unused:
    raise ValueError(
        f"{folder}: {len(unused)} tensors are not used by the {family} model described by "
        f"config.json (their weights would be dropped), e.g. {unused[:5]}.")
  return config, graphdef, nnx.from_flat_state(loaded)


def _read_parameter(reader: _TensorReader, spec: _Tensor, path: tuple[str, ...],
                    shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  """Our (stacked) parameter `path` of `shape`, built tensor by tensor."""
  is_embedding = path == ("embedding",)
  if not spec.stacked:
    tensor = reader.read(spec.hf_name, _hf_shape(shape, spec.num_in, is_embedding),
                         _path_name(path))
    return to_ours(tensor, shape, spec.num_in).astype(dtype, copy=False)
  value = np.empty(shape, dtype)
  for i in range(shape[0]):
    name = spec.hf_name.format(i=i)
    tensor = reader.read(name, _hf_shape(shape[1:], spec.num_in, False),
                         f"{_path_name(path)}, layer {i}")
    value[i] = to_ours(tensor, shape[1:], spec.num_in)
  return value


def _to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process sharded) array on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def hf_tensors(config: TransformerConfig, params: nnx.State, family: str
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, numpy tensor) pairs for `params`, one stacked parameter on the host at a time."""
  table = _tensor_map(family)
  for path, variable in nnx.to_flat_state(params):
    if path not in table:
      raise ValueError(f"Parameter {_path_name(path)} has no Hugging Face counterpart; "
                       f"merge LoRA adapters first (lora.merge_lora).")
    spec = table[path]
    value = _to_host(variable[...])
    is_embedding = path == ("embedding",)
    if spec.stacked:
      for i in range(value.shape[0]):
        yield spec.hf_name.format(i=i), to_hf(value[i], spec.num_in, False)
    else:
      yield spec.hf_name, to_hf(value, spec.num_in, is_embedding)
    del value


def save_hf(folder: str, config: TransformerConfig, params: nnx.State,
            tokenizer_folder: str | None = None, *, hf_config: Mapping[str, Any] | None = None,
            family: str | None = None, max_shard_bytes: int = 4 << 30) -> None:
  """Writes params as an HF folder that `transformers` loads with no missing or unexpected keys.

  Args:
    folder: output folder (created; existing files of the same names are replaced).
    config, params: the model. LoRA adapters, if any, are merged in first.
    tokenizer_folder: copy the tokenizer files (and generation_config.json)
      from here, typically the folder the model was imported from; its
      config.json, if any, is the template for ours (token ids, ...).
    hf_config: a config.json dict to use as the template instead.
    family: "llama", "qwen2", "mistral", "gemma" or "gemma2" (default: the
      template's model_type, else inferred from the config).
    max_shard_bytes: safetensors files are split at about this size.

  Every process must call this (sharded parameters are gathered
  collectively); only process 0 writes.
  """
  from safetensors.numpy import save_file  # the [hf] extra; imported only when used
  if config.lora_rank:
    config, params = merge_lora(config, params)
  if hf_config is None and tokenizer_folder is not None:
    template_path = os.path.join(tokenizer_folder, "config.json")
    hf_config = _read_json(template_path) if os.path.exists(template_path) else None
  hf = config_to_hf(config, family, hf_config)
  is_writer = jax.process_index() == 0
  if is_writer:
    os.makedirs(folder, exist_ok=True)
  shard: dict[str, np.ndarray] = {}
  shard_bytes = 0
  written: list[tuple[str, list[str], int]] = []   # (temporary file, tensor names, bytes)

  def flush():
    if shard and is_writer:
      path = os.path.join(folder, f"shard-{len(written):05d}.tmp")
      save_file(shard, path, metadata={"format": "pt"})
      written.append((path, list(shard), shard_bytes))
    shard.clear()

  for name, tensor in hf_tensors(config, params, hf["model_type"]):
    if shard_bytes and shard_bytes + tensor.nbytes > max_shard_bytes:
      flush()
      shard_bytes = 0
    if is_writer:
      shard[name] = tensor
    shard_bytes += tensor.nbytes
  flush()
  if not is_writer:
    return
  _finish_shards(folder, written, hf)
  if tokenizer_folder is not None:
    for name in TOKENIZER_FILES:
      source = os.path.join(tokenizer_folder, name)
      if os.path.exists(source) and os.path.abspath(source) != os.path.abspath(
          os.path.join(folder, name)):
        shutil.copyfile(source, os.path.join(folder, name))


def _finish_shards(folder: str, written: list[tuple[str, list[str], int]],
                   hf: Mapping[str, Any]) -> None:
  """Names the shard files as HF does and writes the index and config.json."""
  for stale in os.listdir(folder):
    if stale.startswith("model") and (stale.endswith(".safetensors")
                                      or stale == "model.safetensors.index.json"):
      os.remove(os.path.join(folder, stale))
  if len(written) == 1:
    os.replace(written[0][0], os.path.join(folder, "model.safetensors"))
  else:
    weight_map, total = {}, 0
    for k, (path, names, nbytes) in enumerate(written):
      final = f"model-{k + 1:05d}-of-{len(written):05d}.safetensors"
      weight_map.update({name: final for name in names})
      total += nbytes
      os.replace(path, os.path.join(folder, final))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
