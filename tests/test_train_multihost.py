"""launch/train.py as two jax.distributed processes (gloo, one CPU device each) on one workdir."""

import os
import sys

import jax
import numpy as np

from flax import nnx

from selfimprove.models.orbax_params import load_orbax_params
from tests.processes import free_port, run_all
from tests.train_helpers import CONFIG, ROOT, TRAIN, final_params, launch, read_metrics


def test_two_process_training_matches_one_process_on_the_same_mesh(tmp_path):
  workdir = str(tmp_path / "two")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  port = free_port()
  procs = run_all([[sys.executable, TRAIN, f"--config={CONFIG}:test", f"--workdir={workdir}",
                    "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"] for i in range(2)], env)
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i} failed:\n{proc.output[-4000:]}"

  # The same global batches on a 2-device mesh in one process.
  single = str(tmp_path / "one")
  env_two_devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = launch(single, env=env_two_devices, single_device=False)
  assert result.returncode == 0, result.stderr[-3000:]

  # The exported DIR/params (restored onto this process's device, whatever wrote it).
  params = nnx.to_pure_dict(load_orbax_params(os.path.join(workdir, "params"))[2])
  single_params = nnx.to_pure_dict(load_orbax_params(os.path.join(single, "params"))[2])
  assert final_params(single)[0] == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, single_params)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [2, 4, 6, 8]           # written once, by process 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  assert [r["eval/accuracy"] for r in rows if "eval/accuracy" in r] == \
      [r["eval/accuracy"] for r in read_metrics(single) if "eval/accuracy" in r]


def odd_length_reward(completion: str, example: dict) -> float:
  """Varies by row and by example, so a misrouted row or record would change the figures."""
  return float((len(completion) + len(example["prompt"])) % 2)


def raise_on_eval(completion: str, example: dict) -> float:
  if example["source"].endswith("eval.jsonl:2"):
    raise ValueError("broken reference")
  return 0.0


def test_host_verifier_on_two_processes_matches_one_process_and_failures_stop_both(tmp_path):
  import json
  train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train_file.write_text("".join(json.dumps({"prompt": f"What is {a} plus 3?", "answer": a + 3}) + "\n"
                                for a in range(40)))
  eval_file.write_text("".join(json.dumps({"prompt": f"What is {a} plus {a}?", "answer": 2 * a}) + "\n"
                               for a in range(24)))
  config = os.path.join(ROOT, "configs", "sft_jsonl.py")
  flags = [f"--config.task.train_path={train_file}", f"--config.task.eval_path={eval_file}"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")

  def two_processes(workdir, verifier):
    port = free_port()
    return run_all([[sys.executable, TRAIN, f"--config={config}:test", f"--workdir={workdir}",
                     *flags, f"--config.task.verifier=tests.test_train_multihost:{verifier}",
                     "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}"] for i in range(2)], env, timeout=300)

  workdir = str(tmp_path / "two")
  for i, proc in enumerate(two_processes(workdir, "odd_length_reward")):
    assert proc.returncode == 0, f"process {i} failed:\n{proc.output[-4000:]}"
  single = str(tmp_path / "one")
  result = launch(single, *flags,
                  "--config.task.verifier=tests.test_train_multihost:odd_length_reward",
                  env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                  single_device=False, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  two_rows = [r["eval/accuracy"] for r in read_metrics(workdir) if "eval/accuracy" in r]
  one_rows = [r["eval/accuracy"] for r in read_metrics(single) if "eval/accuracy" in r]
  assert len(two_rows) == 2 and two_rows == one_rows and any(0 < v < 1 for v in two_rows)

  failed = two_processes(str(tmp_path / "failing"), "raise_on_eval")   # bounded by the timeout
  assert [proc.returncode for proc in failed] == [1, 1], [p.output[-2000:] for p in failed]
  assert f"{eval_file}:2" in failed[0].output and "raise_on_eval raised ValueError" in failed[0].output
