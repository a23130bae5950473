"""LoRA adapters: a fresh adapter is a no-op, training touches only adapters, merged export keeps the logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers
from flax import nnx

from selfimprove.models import LoRAParam, add_adapters, merge_lora
from selfimprove.models.hf import load_hf, save_hf
from selfimprove.objectives import next_token_loss
from tests.models.hf_models import forward, hf_logits, padded_batch

ATTENTION_ONLY = ("q_proj", "v_proj")


def test_fresh_adapters_leave_the_output_unchanged(hf_case):
  config, graphdef, params = load_hf(hf_case("qwen2").folder)
  lora_config, lora_graphdef, lora_params = add_adapters(config, params, rank=4, alpha=8.0)
  adapters = nnx.state(nnx.merge(lora_graphdef, lora_params), LoRAParam)
  names = {path[-1] for path, _ in nnx.to_flat_state(adapters)}
  assert names == {f"{p}_lora_{m}" for p in lora_config.lora_targets for m in "ab"}
  assert sum(x.size for x in jax.tree.leaves(lora_params)) == lora_config.num_params
  for path, variable in nnx.to_flat_state(adapters):
    if path[-1].endswith("_b"):
      assert not np.any(variable[...])                    # B starts at zero ...
    else:
      assert np.std(np.asarray(variable[...])) > 0.01     # ... A does not
  tokens, mask = padded_batch()
  np.testing.assert_array_equal(forward(lora_graphdef, lora_params, tokens, mask),
                                forward(graphdef, params, tokens, mask))


def _train_step(graphdef, adapters, base, optimizer, opt_state, tokens, mask):
  def loss_fn(adapters):
    logits, _ = nnx.merge(graphdef, adapters, base)(tokens, mask)
    return next_token_loss(logits, tokens, mask)

  loss, grads = jax.value_and_grad(loss_fn)(adapters)
  updates, opt_state = optimizer.update(grads, opt_state, adapters)
  return optax.apply_updates(adapters, updates), opt_state, loss


def test_a_training_step_changes_only_the_adapters(hf_case):
  config, _, params = load_hf(hf_case("llama").folder)
  _, graphdef, params = add_adapters(config, params, rank=4, targets=ATTENTION_ONLY + ("down_proj",))
  graphdef, adapters, base = nnx.split(nnx.merge(graphdef, params), LoRAParam, ...)
  assert {path[-1] for path, _ in nnx.to_flat_state(adapters)} == {
      "q_proj_lora_a", "q_proj_lora_b", "v_proj_lora_a", "v_proj_lora_b",
      "down_proj_lora_a", "down_proj_lora_b"}
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(adapters)
  tokens, mask = padded_batch()
  step = jax.jit(lambda a, s: _train_step(graphdef, a, base, optimizer, s, tokens, mask))
  new_adapters, opt_state, loss = step(adapters, opt_state)
  new_adapters, _, second_loss = step(new_adapters, opt_state)
  assert second_loss < loss
  for old, new in zip(jax.tree.leaves(adapters), jax.tree.leaves(new_adapters)):
    assert not np.allclose(old, new)
  # The base is not an input of the gradient, so it cannot move; check the
  # merged model still holds it bit for bit.
  _, _, base_after = nnx.split(nnx.merge(graphdef, new_adapters, base), LoRAParam, ...)
  for before, after in zip(jax.tree.leaves(base), jax.tree.leaves(base_after)):
    np.testing.assert_array_equal(before, after)


def _nonzero_adapters(config, params, seed=0):
  """Adapters with random B (as after training), so the merge has something to fold in."""
  rng = np.random.default_rng(seed)
  flat = []
  for path, variable in nnx.to_flat_state(params):
    if isinstance(variable, LoRAParam) and path[-1].endswith("_b"):
      variable = variable.replace(jnp.asarray(0.05 * rng.standard_normal(variable.shape),
                                              variable.dtype))
    flat.append((path, variable))
  return nnx.from_flat_state(flat)


def test_merged_export_gives_the_adapted_models_logits(hf_case, tmp_path):
  case = hf_case("gemma2")
  config, graphdef, params = load_hf(case.folder)
  lora_config, lora_graphdef, lora_params = add_adapters(config, params, rank=4, alpha=8.0)
  lora_params = _nonzero_adapters(lora_config, lora_params)
  tokens, mask = padded_batch()
  adapted = np.asarray(forward(lora_graphdef, lora_params, tokens, mask))
  assert np.abs(adapted - np.asarray(forward(graphdef, params, tokens, mask))).max() > 1e-2

  merged_config, merged = merge_lora(lora_config, lora_params)
  assert merged_config == config
  np.testing.assert_allclose(np.asarray(forward(graphdef, merged, tokens, mask))[mask],
                             adapted[mask], atol=1e-5)

  save_hf(str(tmp_path), lora_config, lora_params, tokenizer_folder=case.folder)  # merges itself
  _, graphdef_again, params_again = load_hf(str(tmp_path))
  np.testing.assert_allclose(np.asarray(forward(graphdef_again, params_again, tokens, mask))[mask],
                             adapted[mask], atol=1e-5)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                            attn_implementation="eager")
  assert np.abs(hf_logits(model.eval(), tokens, mask)[mask] - adapted[mask]).max() <= 1e-4
