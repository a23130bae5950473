"""HF import/export against transformers itself: logits, greedy generation, round trips, sharding, errors."""

import io
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from selfimprove import sharding
from selfimprove.models.hf import load_hf, save_hf
from selfimprove.sampling import SamplingConfig, make_sampler
from tests.models.hf_models import (FAMILIES, forward, hf_greedy, hf_logits, make_hf_model,
                                    padded_batch)

FAMILY_NAMES = sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_logits_match_transformers_on_padded_batches(hf_case, family):
  case = hf_case(family)
  config, graphdef, params = load_hf(case.folder)
  tokens, mask = padded_batch()
  ours = np.asarray(forward(graphdef, params, tokens, mask))
  theirs = hf_logits(case.model, tokens, mask)
  assert np.abs(ours[mask] - theirs[mask]).max() <= 1e-4
  # The family's features really are on (the comparison would not see a missing one otherwise).
  expected = {
      "llama": dict(rope_type="llama3", attention_bias=True, attention_out_bias=True),
      "qwen2": dict(attention_bias=True, attention_out_bias=False, tie_embeddings=True,
                    sliding_window=4, local_layers=(False, True)),
      "mistral": dict(sliding_window=5, head_dim=8, local_layers=(True, True)),
      "gemma": dict(norm_offset=1.0, scale_embeddings=True, activation="gelu_tanh",
                    num_kv_heads=1, tie_embeddings=True),
      "gemma2": dict(post_norms=True, local_layers=(True, False), attn_logit_softcap=5.0,
                     final_logit_softcap=3.0, query_pre_attn_scalar=12.0),
  }[family]
  assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_greedy_generation_matches_transformers(hf_case, family):
  case = hf_case(family)
  _, graphdef, params = load_hf(case.folder)
  tokens, mask = padded_batch(seed=1, batch=3, seq=8)
  sampler = make_sampler(graphdef, SamplingConfig(max_new_tokens=16, greedy=True))
  ours = np.asarray(sampler(params, tokens, mask, jax.random.key(0)).tokens)
  theirs = hf_greedy(case.model, tokens, mask, 16)
  np.testing.assert_array_equal(ours, theirs)
  assert len(np.unique(ours)) >= 4   # not a degenerate one-token loop


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_loads_in_transformers_with_the_same_logits(hf_case, family, tmp_path):
  case = hf_case(family)
  config, _, params = load_hf(case.folder)
  save_hf(str(tmp_path), config, params, tokenizer_folder=case.folder)
  log = io.StringIO()
  handler = logging.StreamHandler(log)
  logging.getLogger("transformers").addHandler(handler)   # its loggers do not propagate
  try:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), output_loading_info=True, attn_implementation="eager")
  finally:
    logging.getLogger("transformers").removeHandler(handler)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  assert log.getvalue() == ""    # no load report, no config warnings
  assert type(model) is type(case.model)
  tokens, mask = padded_batch()
  np.testing.assert_array_equal(hf_logits(model.eval(), tokens, mask),
                                hf_logits(case.model, tokens, mask))
  # Our export writes exactly the tensors transformers saves.
  original, exported = load_file(os.path.join(case.folder, "model.safetensors")), load_file(
      str(tmp_path / "model.safetensors"))
  assert sorted(original) == sorted(exported)
  for name in original:
    np.testing.assert_array_equal(original[name], exported[name], err_msg=name)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_import_export_import_is_the_identity(hf_case, family, tmp_path):
  config, _, params = load_hf(hf_case(family).folder)
  save_hf(str(tmp_path), config, params)
  config_again, _, params_again = load_hf(str(tmp_path))
  assert config_again == config
  assert jax.tree.structure(params_again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again)):
    np.testing.assert_array_equal(a, b)


def test_sharded_import_on_8_devices_gives_the_same_logits(hf_case):
  folder = hf_case("gemma2").folder
  _, graphdef, params = load_hf(folder)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  _, sharded_graphdef, sharded = load_hf(folder, mesh=mesh)
  q_proj = sharded["blocks"]["attention"]["q_proj"][...]
  assert q_proj.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len(q_proj.addressable_shards) == 8
  assert q_proj.addressable_shards[0].data.shape == (2, 32, 2, 16)
  tokens, mask = padded_batch()
  expected = forward(graphdef, params, tokens, mask)
  with jax.set_mesh(mesh):
    batch = sharding.shard_batch((tokens, mask), mesh, sharding.DEFAULT_RULES)
    logits = forward(sharded_graphdef, sharded, *batch)
  np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(expected)[mask], atol=1e-5)


def test_bfloat16_stays_bfloat16_and_sharded_files_are_read_and_written(tmp_path):
  case = make_hf_model("llama", str(tmp_path / "f32"))
  bf16 = case.model.to(torch.bfloat16)
  bf16.save_pretrained(str(tmp_path / "bf16"), max_shard_size="40KB")
  assert os.path.exists(tmp_path / "bf16" / "model.safetensors.index.json")
  config, graphdef, params = load_hf(str(tmp_path / "bf16"))
  assert config.param_dtype == config.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  # Bit-exact: layer 1's k_proj is the torch tensor, transposed and split into heads.
  torch_k = bf16.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()
  ours_k = np.asarray(params["blocks"]["attention"]["k_proj"][...][1], np.float32)
  np.testing.assert_array_equal(ours_k.reshape(64, -1).T, torch_k)
  # Export in several files; transformers reads them back unchanged, still bf16.
  save_hf(str(tmp_path / "out"), config, params, max_shard_bytes=30_000)
  index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "out"), output_loading_info=True, attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert model.dtype == torch.bfloat16
  for (name, a), (_, b) in zip(bf16.state_dict().items(), model.state_dict().items()):
    assert torch.equal(a, b), name
  # The float32 option upcasts at load time.
  config32, _, params32 = load_hf(str(tmp_path / "bf16"), dtype="float32")
  assert config32.dtype == "float32" and params32["embedding"][...].dtype == jnp.float32


def _copy(folder, tmp_path):
  target = str(tmp_path / "broken")
  shutil.copytree(folder, target)
  return target


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  hf = json.load(open(path))
  for key, value in changes.items():
    if value is None:
      hf.pop(key)
    else:
      hf[key] = value
  json.dump(hf, open(path, "w"))


def _edit_tensors(folder, edit):
  path = os.path.join(folder, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("breakage, message", [
    ("missing_tensor", r"tensor 'model.layers.1.mlp.up_proj.weight' \(for blocks/mlp/up_proj, "
                       r"layer 1\) is missing"),
    ("wrong_shape", r"tensor 'model.layers.0.self_attn.k_proj.weight' has shape \(24, 64\), "
                    r"but config.json implies \(32, 64\)"),
    ("unknown_architecture", r"field 'architectures' is \['FooForCausalLM'\]"),
    ("missing_field", r"field 'hidden_size' is missing"),
    ("unsupported_rope", r"field 'rope_parameters' has rope_type 'yarn'"),
    ("unused_tensor", r"not used .*'model.layers.0.mlp.gate_proj.bias'"),
    ("no_weights", r"no model.safetensors"),
])
def test_malformed_folder_fails_naming_the_tensor_or_field(hf_case, tmp_path, breakage, message):
  folder = _copy(hf_case("llama").folder, tmp_path)
  if breakage == "missing_tensor":
    _edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  elif breakage == "wrong_shape":
    def shrink(t):
      t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:24]
    _edit_tensors(folder, shrink)
  elif breakage == "unknown_architecture":
    _edit_config(folder, architectures=["FooForCausalLM"], model_type="foo")
  elif breakage == "missing_field":
    _edit_config(folder, hidden_size=None)
  elif breakage == "unsupported_rope":
    _edit_config(folder, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  elif breakage == "unused_tensor":
    def add(t):
      t["model.layers.0.mlp.gate_proj.bias"] = np.zeros(96, np.float32)
    _edit_tensors(folder, add)
  elif breakage == "no_weights":
    os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(ValueError, match=message):
    load_hf(folder)


def test_export_refuses_a_family_that_cannot_express_the_model(hf_case, tmp_path):
  config, _, params = load_hf(hf_case("gemma2").folder)
  with pytest.raises(ValueError, match=r"cannot be exported as a llama model: the fields \[.*post_norms"):
    save_hf(str(tmp_path), config, params, family="llama")
