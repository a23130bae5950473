"""A Hugging Face model, converted by launch/convert.py, is a valid `init_from` for the trainer."""


import jax
import numpy as np
from flax import nnx

from selfimprove import train as train_lib
from selfimprove.models.hf import load_hf
from tests.models.hf_models import convert_module
from tests.train_helpers import final_params, make_test_config


def test_sft_starts_from_a_converted_hf_model(hf_case, tmp_path):
  case = hf_case("qwen2")
  orbax_dir = str(tmp_path / "qwen2_orbax")
  convert_module().hf_to_orbax(case.folder, orbax_dir)
  workdir = str(tmp_path / "run")
  # lr 1e-30: the parameters move by ~1e-30 at most (non-zero float32 values not at all), so
  # the run ends where it started: the imported HF weights.
  train_lib.train(make_test_config(**{"init_from": orbax_dir, "optimizer.learning_rate": 1e-30,
                                      "train.num_steps": 2, "train.eval_every": 2,
                                      "train.checkpoint_every": 2}), workdir)
  _, trained = final_params(workdir)
  _, _, imported = load_hf(case.folder)
  expected = nnx.to_pure_dict(imported)
  assert jax.tree.structure(trained) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-25), trained, expected)
