"""Verifiers inside the compiled step: in-graph and host agree on arithmetic; host ones on a mesh,
under scan, and a raising one stops the run naming the function and the example."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from selfimprove import sharding, train as train_lib
from selfimprove.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, leading_integer_match
from selfimprove.tokenizers import ByteTokenizer, CharTokenizer
from selfimprove.verifiers import HostVerifier, HostVerifierError, InGraphVerifier
from tests.train_helpers import ROOT

def raising_verifier(completion: str, example: dict) -> float:
  if "13" in example["prompt"]:
    raise KeyError("no reference for this one")
  return 0.0


def _completions(tokenizer, rng, rows=512, length=6):
  """Random completions over digits, '-', '=', '+' and eos; masked after the first eos."""
  symbols = [tokenizer.encode(c)[0] for c in "0123456789-=+"] + [tokenizer.eos_id]
  weights = np.array([1.0] * 10 + [2.0, 0.5, 0.5, 1.0])
  tokens = rng.choice(symbols, size=(rows, length), p=weights / weights.sum()).astype(np.int32)
  is_eos = tokens == tokenizer.eos_id
  after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
  mask = ~after_eos
  tokens[after_eos] = tokenizer.pad_id
  return tokens, mask


@pytest.mark.parametrize("tokenizer", [CharTokenizer("0123456789+-*="), ByteTokenizer()],
                         ids=["char", "byte"])
def test_in_graph_and_host_verifiers_agree_on_arithmetic(tokenizer):
  task = ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=2, operations="+-"))
  rng = np.random.default_rng(0)
  tokens, mask = _completions(tokenizer, rng)
  records = [{"prompt": "x", "answer": str(t), "target": int(t)}
             for t in rng.integers(-20, 100, len(tokens))]
  # Make a good share of rows right, so agreement is tested on both outcomes.
  for row in range(0, len(tokens), 3):
    text = records[row]["answer"] + "="
    ids = tokenizer.encode(text)[:tokens.shape[1]]
    tokens[row], mask[row] = tokenizer.pad_id, False
    tokens[row, :len(ids)], mask[row, :len(ids)] = ids, True
  batch = {"record_id": jnp.arange(len(tokens), dtype=jnp.int32),
           "target": jnp.asarray([r["target"] for r in records], jnp.int32)}
  in_graph = InGraphVerifier(task.in_graph_verifier(tokenizer))
  host = HostVerifier(leading_integer_match, tokenizer, records, (tokenizer.eos_id,))
  graph_rewards = np.asarray(jax.jit(in_graph)(tokens, mask, batch))
  host_rewards = np.asarray(jax.jit(host)(tokens, mask, batch))
  np.testing.assert_array_equal(graph_rewards, host_rewards)
  assert 0.2 < graph_rewards.mean() < 0.8 and host.failure() is None


def test_host_verifier_on_an_8_device_mesh_and_under_scan():
  tokenizer = CharTokenizer("0123456789")
  records = [{"prompt": str(i), "answer": str(i % 10)} for i in range(64)]
  seen = []

  def first_digit_matches(completion, example):
    seen.append(example["prompt"])
    return float(completion[:1] == example["answer"])

  host = HostVerifier(first_digit_matches, tokenizer, records, (tokenizer.eos_id,))
  mesh = sharding.make_mesh(data=-1)
  tokens = np.asarray([tokenizer.encode(str(i % 7)) for i in range(64)], np.int32)
  tokens = jax.device_put(tokens.reshape(2, 32, 1), NamedSharding(mesh, PartitionSpec(None, "data")))
  record_ids = jax.device_put(np.arange(64, dtype=np.int32).reshape(2, 32),
                              NamedSharding(mesh, PartitionSpec(None, "data")))

  def scanned(tokens, record_ids):
    step = lambda carry, x: (carry, host(x[0], jnp.ones_like(x[0], bool), {"record_id": x[1]}))
    return jax.lax.scan(step, 0, (tokens, record_ids))[1]

  with jax.set_mesh(mesh):
    rewards = np.asarray(jax.jit(scanned)(tokens, record_ids)).reshape(-1)
  expected = [float(i % 7 == i % 10) for i in range(64)]
  np.testing.assert_array_equal(rewards, expected)
  assert sorted(seen) == sorted(r["prompt"] for r in records)   # each row once, none twice


def _raising_config(tmp_path):
  from configs.sft_jsonl import get_config
  train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train_file.write_text("".join(json.dumps({"prompt": f"{a} plus 1", "answer": str(a + 1)}) + "\n"
                                for a in range(20, 40)))
  eval_file.write_text(json.dumps({"prompt": "5 plus 1", "answer": "6"}) + "\n" +
                       json.dumps({"prompt": "12 plus 1", "answer": "13"}) + "\n" +
                       json.dumps({"prompt": "13 plus 1", "answer": "14"}) + "\n")
  config = get_config("test").unlock()
  config.task.update(dict(train_path=str(train_file), eval_path=str(eval_file),
                          verifier="tests.test_verifiers:raising_verifier"))
  return config, eval_file


def test_a_raising_host_verifier_stops_the_run_naming_function_and_example(tmp_path):
  config, eval_file = _raising_config(tmp_path)
  with pytest.raises(HostVerifierError) as error:
    train_lib.train(config, str(tmp_path / "run"))
  message = str(error.value)
  assert "tests.test_verifiers:raising_verifier raised KeyError" in message
  assert f"{eval_file}:3" in message and "'13 plus 1'" in message


def test_a_raising_host_verifier_ends_the_process_with_one_line(tmp_path):
  config, eval_file = _raising_config(tmp_path)
  flags = [f"--config.task.{k}={config.task[k]}" for k in ("train_path", "eval_path", "verifier")]
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "launch/train.py", "--config=configs/sft_jsonl.py:test",
                           f"--workdir={tmp_path / 'run'}", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("Host verifier error: host verifier tests.test_verifiers:raising_verifier")
  assert f"{eval_file}:3" in last and "Traceback" not in result.stderr
