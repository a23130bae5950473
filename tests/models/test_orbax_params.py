"""Orbax params checkpoints (what init_from reads) and launch/convert.py in both directions."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import transformers

from selfimprove import sharding
from selfimprove.models import add_adapters, load_orbax_params, save_orbax_params
from selfimprove.models.hf import load_hf
from tests.models.hf_models import convert_module, forward, hf_logits, padded_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_save_and_load_round_trip_with_sharded_restore(hf_case, tmp_path):
  config, graphdef, params = load_hf(hf_case("gemma2").folder)
  save_orbax_params(str(tmp_path / "ckpt"), config, params, metadata={"note": "hi"})
  stored = json.load(open(tmp_path / "ckpt" / "model_config.json"))
  assert stored["note"] == "hi" and stored["transformer_config"]["post_norms"] is True
  config_again, graphdef_again, params_again = load_orbax_params(str(tmp_path / "ckpt"))
  assert config_again == config and graphdef_again == graphdef
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again)):
    np.testing.assert_array_equal(a, b)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  _, _, sharded = load_orbax_params(str(tmp_path / "ckpt"), mesh=mesh)
  embedding = sharded["embedding"][...]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  np.testing.assert_array_equal(embedding, params["embedding"][...])


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(ValueError, match="model_config.json does not exist"):
    load_orbax_params(str(tmp_path))
  (tmp_path / "model_config.json").write_text(json.dumps(
      {"transformer_config": {"vocab_size": 8, "embed_size": 4}}))
  with pytest.raises(ValueError, match=r"model_config.json: unknown TransformerConfig fields \['embed_size'\]"):
    load_orbax_params(str(tmp_path))


def test_convert_hf_to_orbax_and_back_with_lora_merged(hf_case, tmp_path):
  case = hf_case("qwen2")
  orbax_dir, hf_dir = str(tmp_path / "orbax"), str(tmp_path / "hf")
  # HF -> Orbax through the launcher itself.
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "convert.py"), f"--hf_dir={case.folder}",
       f"--orbax_dir={orbax_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  config, _, params = load_orbax_params(orbax_dir)
  assert config == load_hf(case.folder)[0]
  # Train-like change: adapters with non-zero B, saved as a LoRA checkpoint.
  lora_config, lora_graphdef, lora_params = add_adapters(config, params, rank=2)
  lora_params = jax.tree.map(lambda x: x + 0.01, lora_params)
  metadata = json.load(open(os.path.join(orbax_dir, "model_config.json")))
  save_orbax_params(orbax_dir, lora_config, lora_params,
                    metadata={k: v for k, v in metadata.items() if k != "transformer_config"})
  # Orbax -> HF (the launcher's function; the subprocess path is covered above).
  convert_module().orbax_to_hf(orbax_dir, hf_dir, tokenizer_dir=case.folder)
  hf_config = json.load(open(os.path.join(hf_dir, "config.json")))
  original = json.load(open(os.path.join(case.folder, "config.json")))
  for key in ("architectures", "bos_token_id", "eos_token_id", "layer_types", "sliding_window"):
    assert hf_config[key] == original[key], key
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
  tokens, mask = padded_batch()
  adapted = np.asarray(forward(lora_graphdef, lora_params, tokens, mask))
  assert np.abs(hf_logits(model.eval(), tokens, mask)[mask] - adapted[mask]).max() <= 1e-4
