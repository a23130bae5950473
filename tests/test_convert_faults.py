"""launch/convert.py under bad input and faults: nothing overwritten or lost, one-line errors.

Each test runs the real launcher in a subprocess (one CPU device, as a user's laptop) and
checks its exit code (2: a mistake in the flags or inputs, 1: a fault such as a corrupt
file), that the last line of stderr names the offending file or directory, that no
traceback is printed, and that existing directories are left byte-identical.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.models.hf_models import make_hf_model
from tests.train_helpers import ROOT

CONVERT = os.path.join(ROOT, "launch", "convert.py")


def _convert(*flags):
  """Runs launch/convert.py with `flags`; returns the CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)   # one CPU device
  return subprocess.run([sys.executable, CONVERT, *flags], env=env, capture_output=True,
                        text=True, timeout=300, cwd=ROOT)


def _fails(result, code, *names):
  """Asserts exit `code`, no traceback, and a last stderr line 'Error: ...' naming `names`."""
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: "), last
  for name in names:
    assert name in last, (name, last)
  return last


def _snapshot(folder):
  """{relative path: bytes} of every file under `folder`."""
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, folder)] = f.read()
  return files


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A tiny HF Llama folder and its Orbax conversion (made by the launcher itself)."""
  root = tmp_path_factory.mktemp("convert_faults")
  hf_dir, orbax_dir = str(root / "hf"), str(root / "orbax")
  make_hf_model("llama", hf_dir)
  result = _convert(f"--hf_dir={hf_dir}", f"--orbax_dir={orbax_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(hf=hf_dir, orbax=orbax_dir)


def test_non_empty_orbax_dir_is_refused_untouched_and_replaced_with_overwrite(models, tmp_path):
  # A run's DIR/params: a saved model plus the run's own (char) tokenizer.
  params_dir = str(tmp_path / "run" / "params")
  shutil.copytree(models["orbax"], params_dir)
  os.makedirs(os.path.join(params_dir, "tokenizer"))
  with open(os.path.join(params_dir, "tokenizer", "selfimprove_tokenizer.json"), "w") as f:
    json.dump({"kind": "char", "alphabet": "0123456789+="}, f)
  before = _snapshot(params_dir)
  result = _convert(f"--hf_dir={models['hf']}", f"--orbax_dir={params_dir}")
  last = _fails(result, 2, params_dir, "--overwrite")
  assert "not empty" in last
  assert _snapshot(params_dir) == before

  result = _convert(f"--hf_dir={models['hf']}", f"--orbax_dir={params_dir}", "--overwrite")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Wrote {params_dir}" in result.stdout
  # The replaced model's tokenizer does not outlive it (this HF model has none).
  assert not os.path.exists(os.path.join(params_dir, "tokenizer"))
  with open(os.path.join(params_dir, "model_config.json")) as f:
    assert json.load(f)["hf_family"] == "llama"


def test_non_empty_hf_dir_is_refused_for_export(models, tmp_path):
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(models["hf"], hf_dir)
  before = _snapshot(hf_dir)
  result = _convert("--to=hf", f"--orbax_dir={models['orbax']}", f"--hf_dir={hf_dir}")
  _fails(result, 2, hf_dir, "--overwrite")
  assert _snapshot(hf_dir) == before


def test_hf_dir_without_config_json(models, tmp_path):
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(models["hf"], hf_dir)
  os.remove(os.path.join(hf_dir, "config.json"))
  out = str(tmp_path / "orbax")
  result = _convert(f"--hf_dir={hf_dir}", f"--orbax_dir={out}")
  _fails(result, 2, os.path.join(hf_dir, "config.json"))
  assert not os.path.exists(out)


def test_unsupported_model_type_is_named_with_the_supported_ones(models, tmp_path):
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(models["hf"], hf_dir)
  path = os.path.join(hf_dir, "config.json")
  with open(path) as f:
    hf = json.load(f)
  hf.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
  with open(path, "w") as f:
    json.dump(hf, f)
  result = _convert(f"--hf_dir={hf_dir}", f"--orbax_dir={tmp_path / 'orbax'}")
  _fails(result, 2, path, "GPT2LMHeadModel", "gpt2", "LlamaForCausalLM", "Qwen2ForCausalLM")
  assert not os.path.exists(tmp_path / "orbax")


def test_truncated_safetensors_is_a_fault_naming_the_file(models, tmp_path):
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(models["hf"], hf_dir)
  weights = os.path.join(hf_dir, "model.safetensors")
  os.truncate(weights, os.path.getsize(weights) // 2)
  out = tmp_path / "orbax"
  out.mkdir()   # an existing empty output directory is accepted, and left empty on failure
  result = _convert(f"--hf_dir={hf_dir}", f"--orbax_dir={out}")
  _fails(result, 1, weights, "safetensors")
  assert os.listdir(out) == []


@pytest.mark.parametrize("case", ["hf_folder", "missing", "run_dir", "no_params"])
def test_orbax_dir_that_is_not_a_saved_model(models, tmp_path, case):
  if case == "hf_folder":   # an HF folder where a saved model belongs
    orbax_dir, names = models["hf"], [os.path.join(models["hf"], "model_config.json")]
  elif case == "missing":
    orbax_dir = str(tmp_path / "nowhere")
    names = [orbax_dir, "does not exist"]
  elif case == "run_dir":   # DIR instead of DIR/params: the message says which to pass
    orbax_dir = str(tmp_path / "run")
    shutil.copytree(models["orbax"], os.path.join(orbax_dir, "params"))
    names = [f"--orbax_dir={os.path.join(orbax_dir, 'params')}"]
  else:   # model_config.json without the arrays
    orbax_dir = str(tmp_path / "orbax")
    os.makedirs(orbax_dir)
    shutil.copy(os.path.join(models["orbax"], "model_config.json"), orbax_dir)
    names = [os.path.join(orbax_dir, "params")]
  out = str(tmp_path / "exported")
  result = _convert("--to=hf", f"--orbax_dir={orbax_dir}", f"--hf_dir={out}")
  _fails(result, 2, *names)
  assert not os.path.exists(out)


def test_damaged_orbax_arrays_are_a_fault_naming_the_params(models, tmp_path):
  orbax_dir = str(tmp_path / "orbax")
  shutil.copytree(models["orbax"], orbax_dir)
  data = os.path.join(orbax_dir, "params", "d")
  for name in os.listdir(data):
    os.truncate(os.path.join(data, name), 100)
  out = str(tmp_path / "exported")
  result = _convert("--to=hf", f"--orbax_dir={orbax_dir}", f"--hf_dir={out}")
  _fails(result, 1, os.path.join(orbax_dir, "params"), "cannot be restored")
  assert not os.path.exists(out)
