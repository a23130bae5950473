"""Hugging Face config.json <-> TransformerConfig, for the Llama, Qwen2, Mistral and Gemma families.

Only plain JSON is read and written here (no `transformers` import), so
importing a checkpoint needs neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any, Mapping

from selfimprove.models.config import TransformerConfig

# HF architecture name -> family (HF's model_type).
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
}
_FAMILY_ARCHITECTURE = {family: arch for arch, family in ARCHITECTURES.items()}
_TIED_BY_DEFAULT = {"llama": False, "qwen2": False, "mistral": False, "gemma": True,
                    "gemma2": True}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
_DTYPES = ("float32", "bfloat16", "float16")
# Fields that say how to run the model rather than what it computes: they
# have no HF counterpart and are carried over unchanged on export checks.
_RUN_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "sharding_rules", "lora_rank",
               "lora_alpha", "lora_targets")


class _Fields:
  """Reads config.json fields, with errors that name the file and the field."""

  def __init__(self, hf: Mapping[str, Any], source: str, architecture: str):
    self.hf, self.source, self.architecture = hf, source, architecture

  def error(self, field: str, message: str) -> ValueError:
    return ValueError(f"{self.source}: field {field!r} {message} ({self.architecture}).")

  def get(self, field: str, default: Any = None, required: bool = False) -> Any:
    value = self.hf.get(field)
    if value is None:
      if required:
        raise self.error(field, "is missing; it is needed to build the model")
      return default
    return value

  def int(self, field: str, default: int | None = None) -> int:
    value = self.get(field, default, required=default is None)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise self.error(field, f"must be a positive integer, got {value!r}")
    return value


def family_of(hf: Mapping[str, Any], source: str) -> tuple[str, str]:
  """(architecture, family) named by config.json's `architectures` (or `model_type`)."""
  architectures = hf.get("architectures") or []
  if isinstance(architectures, str):
    architectures = [architectures]
  known = [a for a in architectures if isinstance(a, str) and a in ARCHITECTURES]
  if known:
    return known[0], ARCHITECTURES[known[0]]
  if not architectures and hf.get("model_type") in _FAMILY_ARCHITECTURE:
    family = hf["model_type"]
    return _FAMILY_ARCHITECTURE[family], family
  raise ValueError(
      f"{source}: field 'architectures' is {architectures!r} (model_type "
      f"{hf.get('model_type')!r}), which this library cannot load; supported architectures "
      f"are {sorted(ARCHITECTURES)} (model_type {sorted(_FAMILY_ARCHITECTURE)}).")


def _rope(f: _Fields) -> dict[str, Any]:
  """TransformerConfig rope fields from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling` (4.x)."""
  params = dict(f.get("rope_parameters") or {})
  if not params:
    params = dict(f.get("rope_scaling") or {})
    params.setdefault("rope_theta", f.get("rope_theta", 10_000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  field = "rope_parameters" if f.get("rope_parameters") else "rope_scaling"
  partial = params.get("partial_rotary_factor", f.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise f.error(field, f"has partial_rotary_factor {partial}; only full rotary embeddings are supported")
  out: dict[str, Any] = {"rope_theta": float(params.get("rope_theta") or f.get("rope_theta", 10_000.0))}
  if rope_type == "default":
    return out
  if rope_type not in ("linear", "llama3"):
    raise f.error(field, f"has rope_type {rope_type!r}; supported: 'default', 'linear', 'llama3'")
  if "factor" not in params:
    raise f.error(field, f"has rope_type {rope_type!r} but no 'factor'")
  out.update(rope_type=rope_type, rope_factor=float(params["factor"]))
  if rope_type == "llama3":
    for ours, theirs in [("rope_low_freq_factor", "low_freq_factor"),
                         ("rope_high_freq_factor", "high_freq_factor")]:
      if theirs not in params:
        raise f.error(field, f"has rope_type 'llama3' but no {theirs!r}")
      out[ours] = float(params[theirs])
    original = params.get("original_max_position_embeddings", f.get("max_position_embeddings"))
    if original is None:
      raise f.error(field, "has rope_type 'llama3' but no 'original_max_position_embeddings'")
    out["rope_original_max_len"] = int(original)
  return out


def _activation(f: _Fields, family: str) -> str:
  if family == "gemma2":
    field, name = "hidden_activation", f.get("hidden_activation", "gelu_pytorch_tanh")
  elif family == "gemma":
    field = "hidden_activation" if f.get("hidden_activation") else "hidden_act"
    name = f.get(field, "gelu_pytorch_tanh")
    # Gemma's released configs say "gelu" but mean the tanh approximation
    # (transformers rewrites it the same way).
    name = "gelu_pytorch_tanh" if name == "gelu" else name
  else:
    field, name = "hidden_act", f.get("hidden_act", "silu")
  if name not in _ACTIVATIONS:
    raise f.error(field, f"is {name!r}; supported activations: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _sliding_window(f: _Fields, family: str, num_layers: int) -> dict[str, Any]:
  """sliding_window / sliding_window_layers from the family's conventions."""
  if family in ("llama", "gemma"):
    return {}
  if family == "mistral":
    window = f.get("sliding_window")
    return {} if window is None else {"sliding_window": int(window)}
  layer_types = f.get("layer_types")
  if layer_types is None:
    if family == "gemma2":    # even layers are local (transformers' default)
      layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                     for i in range(num_layers)]
    elif f.get("use_sliding_window", False) and f.get("sliding_window") is not None:
      first = f.get("max_window_layers", 28)
      layer_types = ["sliding_attention" if i >= first else "full_attention"
                     for i in range(num_layers)]
    else:
      layer_types = ["full_attention"] * num_layers
  if len(layer_types) != num_layers:
    raise f.error("layer_types", f"has {len(layer_types)} entries for {num_layers} layers")
  unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
  if unknown:
    raise f.error("layer_types", f"has unsupported layer types {unknown}")
  flags = tuple(t == "sliding_attention" for t in layer_types)
  if not any(flags):
    return {}
  window = f.get("sliding_window", 4096 if family == "gemma2" else None)
  if window is None:
    raise f.error("sliding_window", "is missing but layer_types has sliding layers")
  layers = None if all(flags) else flags
  return {"sliding_window": int(window), "sliding_window_layers": layers}


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json"
                   ) -> tuple[TransformerConfig, str]:
  """TransformerConfig (float32 unless config.json says otherwise) and family from a config.json dict.

  Raises a ValueError naming `source` and the field for unsupported or
  missing settings.
  """
  architecture, family = family_of(hf, source)
  f = _Fields(hf, source, architecture)
  heads = f.int("num_attention_heads")
  embed = f.int("hidden_size")
  num_layers = f.int("num_hidden_layers")
  if f.get("mlp_bias", False):
    raise f.error("mlp_bias", "is true; MLP biases are not supported")
  if f.get("use_bidirectional_attention", False):
    raise f.error("use_bidirectional_attention", "is true; only causal attention is supported")
  dtype = f.get("dtype", f.get("torch_dtype", "float32"))
  if dtype not in _DTYPES:
    raise f.error("dtype", f"is {dtype!r}; supported: {_DTYPES}")
  # Llama and Gemma put attention_bias on q/k/v/o; Qwen2 always has q/k/v
  # biases and no o bias; Mistral has none.
  bias = family in ("llama", "gemma", "gemma2") and bool(f.get("attention_bias", False))
  fields: dict[str, Any] = dict(
      vocab_size=f.int("vocab_size"),
      embed_dim=embed,
      mlp_dim=f.int("intermediate_size"),
      num_layers=num_layers,
      num_heads=heads,
      num_kv_heads=f.int("num_key_value_heads", heads),
      head_dim=f.int("head_dim", embed // heads),
      norm_eps=float(f.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(f.get("tie_word_embeddings", _TIED_BY_DEFAULT[family])),
      dtype=dtype, param_dtype=dtype,
      activation=_activation(f, family),
      attention_bias=bias or family == "qwen2",
      attention_out_bias=bias and family != "qwen2",
      **_rope(f),
      **_sliding_window(f, family, num_layers),
  )
  if family in ("gemma", "gemma2"):
    fields.update(norm_offset=1.0, scale_embeddings=True)
  if family == "gemma2":
    fields.update(
        post_norms=True,
        query_pre_attn_scalar=float(f.get("query_pre_attn_scalar", 256)),
        attn_logit_softcap=_optional_float(f.get("attn_logit_softcapping")),
        final_logit_softcap=_optional_float(f.get("final_logit_softcapping")))
  try:
    return TransformerConfig(**fields), family
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None


def _optional_float(value: Any) -> float | None:
  return None if value is None else float(value)


def _int_if_whole(value: float | None) -> float | int | None:
  # transformers validates some fields (query_pre_attn_scalar) as int.
  return int(value) if value is not None and float(value).is_integer() else value


def infer_family(config: TransformerConfig) -> str:
  """The HF family whose architecture computes what `config` describes."""
  if config.post_norms:
    return "gemma2"
  if config.norm_offset:
    return "gemma"
  if config.attention_bias and not config.attention_out_bias:
    return "qwen2"
  if config.sliding_window is not None and config.sliding_window_layers is None:
    return "mistral"
  if config.sliding_window is not None:
    return "qwen2"
  return "llama"


def config_to_hf(config: TransformerConfig, family: str | None = None,
                 template: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """A config.json dict for `config` as a `family` model (default: inferred).

  `template` (e.g. the config.json the weights were imported from) supplies
  the fields we do not model (token ids, max_position_embeddings, ...); ours
  overwrite its. Raises if the family cannot express the config.
  """
  if family is None:
    family = template.get("model_type") if template else None
    family = family if family in _FAMILY_ARCHITECTURE else infer_family(config)
  if family not in _FAMILY_ARCHITECTURE:
    raise ValueError(f"Unknown HF family {family!r}; supported: {sorted(_FAMILY_ARCHITECTURE)}.")
  hf = {k: v for k, v in (template or {}).items()
        if k not in ("rope_scaling", "rope_theta", "rope_parameters", "torch_dtype", "layer_types",
                     "sliding_window", "use_sliding_window", "max_window_layers", "head_dim")}
  hf.update(
      architectures=[_FAMILY_ARCHITECTURE[family]],
      model_type=family,
      vocab_size=config.vocab_size,
      hidden_size=config.embed_dim,
      intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim,
      rms_norm_eps=config.norm_eps,
      tie_word_embeddings=config.tie_embeddings,
      dtype=config.param_dtype,
  )
  activation = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[config.activation]
  hf["hidden_activation" if family == "gemma2" else "hidden_act"] = activation
  if family != "qwen2":
    hf["attention_bias"] = config.attention_bias
  rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
  if config.rope_type != "default":
    rope["factor"] = config.rope_factor
  if config.rope_type == "llama3":
    rope.update(low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_len)
    hf.setdefault("max_position_embeddings",
                  int(config.rope_original_max_len * config.rope_factor))
  # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling.
  hf["rope_parameters"] = rope
  hf["rope_theta"] = config.rope_theta
  if config.rope_type != "default":
    hf["rope_scaling"] = dict(rope)
  layer_types = ["sliding_attention" if local else "full_attention"
                 for local in config.local_layers]
  if family == "mistral":
    hf["sliding_window"] = config.sliding_window
  elif family == "qwen2":
    sliding = config.sliding_window is not None
    hf.update(use_sliding_window=sliding, sliding_window=config.sliding_window,
              layer_types=layer_types,
              max_window_layers=config.local_layers.index(True) if sliding else config.num_layers)
  elif family == "gemma2":
    hf.update(sliding_window=config.sliding_window, layer_types=layer_types,
              query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar),
              attn_logit_softcapping=config.attn_logit_softcap,
              final_logit_softcapping=config.final_logit_softcap)
  _check_round_trip(config, hf, family)
  return hf


def _check_round_trip(config: TransformerConfig, hf: Mapping[str, Any], family: str) -> None:
  """Refuses an export the family cannot express (e.g. Gemma2 norms as Llama)."""
  back, _ = config_from_hf(hf, f"the exported {family} config.json")
  keep = {name: getattr(config, name) for name in _RUN_FIELDS}
  back = back.replace(**keep)
  if back != config:
    differ = [name for name in config.to_dict() if getattr(back, name) != getattr(config, name)]
    raise ValueError(
        f"TransformerConfig cannot be exported as a {family} model: the fields {differ} "
        f"have no {family} equivalent (values {[getattr(config, n) for n in differ]}). "
        f"Export as the family it was imported from.")
