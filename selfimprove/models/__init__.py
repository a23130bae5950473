"""Models: the Llama-family transformer, its config presets and KV cache, LoRA, HF and Orbax I/O.

The HF import/export (`selfimprove.models.hf`, `hf_tokenizer`) needs the
[hf] extra (safetensors, tokenizers, sentencepiece) and is imported from its
own module, not from here.
"""

from selfimprove.models.config import PRESETS, TransformerConfig, get_preset
from selfimprove.models.kv_cache import KVCache, init_cache
from selfimprove.models.adapters import add_adapters
from selfimprove.models.lora import LoRAParam, merge_lora
from selfimprove.models.orbax_params import load_orbax_params, save_orbax_params
from selfimprove.models.transformer import Transformer, count_params, init_model

__all__ = ["PRESETS", "TransformerConfig", "get_preset", "KVCache", "init_cache",
           "LoRAParam", "add_adapters", "merge_lora", "load_orbax_params", "save_orbax_params",
           "Transformer", "count_params", "init_model"]
