"""Models: the Llama-family transformer, its config presets and KV cache."""

from selfimprove.models.config import PRESETS, TransformerConfig, get_preset
from selfimprove.models.kv_cache import KVCache, init_cache
from selfimprove.models.transformer import Transformer, count_params, init_model

__all__ = ["PRESETS", "TransformerConfig", "get_preset", "KVCache", "init_cache",
           "Transformer", "count_params", "init_model"]
