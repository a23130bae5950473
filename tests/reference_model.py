"""A plain-numpy Llama forward pass (float64), the reference the JAX model is tested against."""

import numpy as np


def _rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, theta):
  # x: [seq, heads, head_dim]; positions 0..seq-1; HF "rotate_half" convention.
  seq, _, dim = x.shape
  inv_freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
  angles = np.arange(seq)[:, None] * inv_freq[None, :]
  cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
  sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
  rotated = np.concatenate([-x[..., dim // 2:], x[..., :dim // 2]], axis=-1)
  return x * cos + rotated * sin


def reference_logits(params: dict, config, tokens: np.ndarray) -> np.ndarray:
  """Logits [seq, vocab] for one unpadded sequence `tokens` [seq].

  `params` is the model's pure dict (nnx.to_pure_dict) converted to float64 numpy.
  """
  x = params["embedding"][tokens]
  seq = len(tokens)
  groups = config.num_heads // config.num_kv_heads
  causal = np.tril(np.ones((seq, seq), bool))
  blocks = params["blocks"]
  for layer in range(config.num_layers):
    p = {name: {k: v[layer] for k, v in sub.items()} for name, sub in blocks.items()}
    h = _rms_norm(x, p["attention_norm"]["scale"], config.norm_eps)
    q = _rope(np.einsum("te,ehd->thd", h, p["attention"]["q_proj"]), config.rope_theta)
    k = _rope(np.einsum("te,ekd->tkd", h, p["attention"]["k_proj"]), config.rope_theta)
    v = np.einsum("te,ekd->tkd", h, p["attention"]["v_proj"])
    k = np.repeat(k, groups, axis=1)  # HF repeat_kv: head i uses kv head i // groups
    v = np.repeat(v, groups, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(config.head_dim)
    scores = np.where(causal[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("hts,shd->thd", probs, v)
    x = x + np.einsum("thd,hde->te", attended, p["attention"]["o_proj"])
    h = _rms_norm(x, p["mlp_norm"]["scale"], config.norm_eps)
    gate = h @ p["mlp"]["gate_proj"]
    up = h @ p["mlp"]["up_proj"]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ p["mlp"]["down_proj"]
  x = _rms_norm(x, params["final_norm"]["scale"], config.norm_eps)
  head = params["embedding"].T if config.tie_embeddings else params["lm_head"]
  return x @ head
