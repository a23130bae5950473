"""Tiny random Hugging Face models, one per supported family, built locally (no downloads).

Each family's config switches on that family's features so the tests
exercise them: Llama with llama3 rope scaling and attention biases, Qwen2
with q/k/v biases, a sliding-window layer and tied embeddings, Mistral with
a sliding window and an explicit head_dim, Gemma with multi-query attention,
Gemma2 with alternating local/global layers and both soft-caps. Norm weights
and biases are randomised (HF initialises them to constants), and weights are
drawn wider than HF's default (Gemma embeddings narrower) so that greedy
generations are not one repeated token.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import torch
import transformers
from flax import nnx

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        attention_bias=True, max_position_embeddings=64, rope_theta=10_000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
        use_sliding_window=True, sliding_window=4, max_window_layers=1,
        tie_word_embeddings=True, rope_theta=1000.0)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(
        sliding_window=5, head_dim=8)),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(
        head_dim=16, num_key_value_heads=1)),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, dict(
        head_dim=16, sliding_window=4, query_pre_attn_scalar=12,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
}


@dataclasses.dataclass
class HFCase:
  family: str
  folder: str
  model: torch.nn.Module   # the transformers model, float32, eval mode


def perturb_norms_and_biases(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Adds noise to norm weights and biases (HF initialises them to constants), in place."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        param.add_(0.3 * torch.randn(param.shape, generator=generator))
  return model


def make_hf_model(family: str, folder: str, seed: int = 0, **overrides) -> HFCase:
  """Builds, randomises and saves a tiny `family` model (float32) to `folder`."""
  config_class, model_class, extra = FAMILIES[family]
  config = config_class(**{**COMMON, **extra, **overrides})
  config._attn_implementation = "eager"   # exact soft-capping; the reference math
  torch.manual_seed(seed)
  model = perturb_norms_and_biases(model_class(config).eval(), seed + 1)
  with torch.no_grad():
    if family.startswith("gemma"):
      # Undo Gemma's sqrt(hidden) embedding scale at init: otherwise the tied
      # embedding dominates and greedy decoding repeats the last token.
      model.model.embed_tokens.weight.mul_(COMMON["hidden_size"] ** -0.5)
  model.save_pretrained(folder)
  return HFCase(family, folder, model)


def padded_batch(seed: int = 0, batch: int = 4, seq: int = 12) -> tuple[np.ndarray, np.ndarray]:
  """Random tokens with left padding on some rows (the layout HF generation uses)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, (batch, seq)).astype(np.int32)
  mask = np.ones((batch, seq), bool)
  for row, pad in enumerate([0, 3, 7, 1][:batch]):
    mask[row, :pad] = False
  tokens[~mask] = 0
  return tokens, mask


def hf_logits(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """transformers' float32 logits, with positions counted over real tokens as in generate."""
  attention_mask = torch.tensor(mask.astype(np.int64))
  position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens.astype(np.int64)), attention_mask=attention_mask,
                position_ids=position_ids)
  return out.logits.float().numpy()


def hf_greedy(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray,
              max_new_tokens: int) -> np.ndarray:
  """transformers' greedy continuation [batch, max_new_tokens] (no early stop)."""
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(tokens.astype(np.int64)),
                         attention_mask=torch.tensor(mask.astype(np.int64)),
                         max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
  return out[:, tokens.shape[1]:].numpy()


def _forward(graphdef, params, tokens, mask):
  return nnx.merge(graphdef, params)(tokens, mask)[0]


# One compiled forward per (graphdef, shapes), shared by every test module.
forward = jax.jit(_forward, static_argnums=0)


@functools.lru_cache(maxsize=None)
def convert_module():
  """launch/convert.py imported as a module (launch/ is scripts, not a package).

  Imported once per process: it defines absl flags, which may be defined only once.
  """
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  spec = importlib.util.spec_from_file_location("convert", os.path.join(root, "launch", "convert.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
