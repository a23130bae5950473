"""FLOPs the benchmarked work needs (not what an implementation happens to spend).

Counted: every matmul of a Llama block (q/k/v/o projections, gate/up/down) at 2 FLOPs per
multiply-add, the LM head where logits are needed, and causal attention (q.k and
weights.v: 4 * heads * head_dim * (keys attended) per query token per layer). Not counted:
the embedding lookup (a gather), norms, rotary, softmax, sampling, the optimizer update
(all O(params) or O(tokens * width), small next to the matmuls). A backward pass is twice
its forward, so a training step is 3x the forward (the "6 * params * tokens" rule).
"""

from __future__ import annotations

from selfimprove.models import TransformerConfig


def block_matmul_params(config: TransformerConfig) -> int:
  """Weights multiplied once per token in each block, summed over the blocks."""
  e, h, k, d, m = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.mlp_dim)
  return config.num_layers * (2 * e * h * d + 2 * e * k * d + 3 * e * m)


def head_params(config: TransformerConfig) -> int:
  return config.embed_dim * config.vocab_size


def forward_flops(config: TransformerConfig, rows: int, start: int, length: int,
                  logit_tokens: int) -> float:
  """FLOPs of running `length` new tokens per row at positions start..start+length-1 (keys
  0..p attended from position p), with logits for `logit_tokens` tokens in all."""
  body = 2 * block_matmul_params(config) * rows * length
  head = 2 * head_params(config) * logit_tokens
  keys = length * start + length * (length + 1) // 2          # sum over p of (p + 1)
  attention = 4 * config.num_heads * config.head_dim * config.num_layers * rows * keys
  return float(body + head + attention)


def sampling_flops(config: TransformerConfig, num_prompts: int, samples_per_prompt: int,
                   prompt_len: int, new_tokens: int) -> float:
  """Prefill each prompt once (logits at its last position), then decode new_tokens - 1
  steps for every sample (the last sampled token is never fed back)."""
  rows = num_prompts * samples_per_prompt
  prefill = forward_flops(config, num_prompts, 0, prompt_len, logit_tokens=num_prompts)
  decode = forward_flops(config, rows, prompt_len, new_tokens - 1,
                         logit_tokens=rows * (new_tokens - 1))
  return prefill + decode


def train_step_flops(config: TransformerConfig, batch: int, seq_len: int) -> float:
  """Forward + backward of next-token loss on batch x seq_len tokens (logits everywhere)."""
  return 3 * forward_flops(config, batch, 0, seq_len, logit_tokens=batch * seq_len)
