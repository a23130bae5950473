"""launch/sample.py end to end on a freshly initialised tiny model."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_launcher_prints_one_line_per_sample():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "sample.py"),
       f"--config={os.path.join(ROOT, 'configs', 'sample.py')}:tiny",
       "--config.sampling.max_new_tokens=4", "--config.sampling.num_samples_per_prompt=2",
       "--prompts=12+34=,hello"],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
  assert len(lines) == 4
  assert lines[0].startswith("[0] '12+34=' -> ") and lines[3].startswith("[3] 'hello' -> ")
