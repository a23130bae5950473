"""Metrics: JSONL contents, resume truncation, TensorBoard events read back, progress bar, plot, summary."""

import io
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from selfimprove import metrics as metrics_lib
from selfimprove.metrics import MetricsWriter, ProgressBar, plot_metrics, read_metrics, summarize


def _read_events(directory):
  """Every Event in the TFRecord files of a directory (length, crc, payload, crc per record)."""
  events = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    position = 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position:position + 8])
      payload = data[position + 12:position + 12 + length]
      events.append(event_pb2.Event.FromString(payload))
      position += 12 + length + 4
  return events


def _scalars(directory):
  """{tag: [(step, value), ...]} from TensorBoard event files."""
  out = {}
  for event in _read_events(directory):
    for value in event.summary.value:
      if value.HasField("simple_value"):
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_write_records_keys_and_values(tmp_path):
  workdir = str(tmp_path / "run")
  writer = MetricsWriter(workdir)
  writer.write(1, {"train/loss": np.float32(0.5), "train/learning_rate": jnp.asarray(1e-3),
                   "perf/tokens_per_sec": 1200, "perf/steps_per_sec": np.float64(3.5)})
  writer.write(2, {"train/loss": float("nan"), "eval/accuracy": jnp.float32(0.25),
                   "eval/sample": "37+85=122"})
  # Flushed on every write: readable before close.
  assert _lines(workdir) == [
      {"step": 1, "train/loss": 0.5, "train/learning_rate": pytest.approx(1e-3),
       "perf/tokens_per_sec": 1200.0, "perf/steps_per_sec": 3.5},
      {"step": 2, "train/loss": None, "eval/accuracy": 0.25, "eval/sample": "37+85=122"}]
  writer.close()
  writer.close()   # idempotent


def test_tensorboard_events_hold_the_scalars(tmp_path):
  workdir = str(tmp_path)
  with MetricsWriter(workdir) as writer:
    for step in (10, 20, 30):
      writer.write(step, {"train/loss": 1.0 / step, "eval/accuracy": step / 100})
  tb_dir = os.path.join(workdir, "tb")
  files = os.listdir(tb_dir)
  assert files and all(name.startswith("events.out.tfevents") for name in files)
  assert os.path.getsize(os.path.join(tb_dir, files[0])) > 0
  scalars = _scalars(tb_dir)
  assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [0.1, 0.05, 1 / 30], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars["eval/accuracy"]], [0.1, 0.2, 0.3], rtol=1e-6)


def test_tensorboard_can_be_turned_off(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(1, {"train/loss": 1.0})
  assert not os.path.exists(tmp_path / "tb")
  assert _lines(str(tmp_path)) == [{"step": 1, "train/loss": 1.0}]


def test_resume_drops_later_lines_and_purges_tensorboard(tmp_path):
  workdir = str(tmp_path)
  with MetricsWriter(workdir) as writer:
    for step in range(1, 11):
      writer.write(step, {"train/loss": float(step)})
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 11, "train/lo')           # a line cut short by SIGKILL
  with MetricsWriter(workdir, resume_step=6) as writer:
    assert [r["step"] for r in _lines(workdir)] == [1, 2, 3, 4, 5, 6]
    writer.write(7, {"train/loss": 70.0})
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
  assert records[-1]["train/loss"] == 70.0
  # The resumed writer tells TensorBoard to hide events from step 7 on of the earlier run.
  purges = [e.step for e in _read_events(os.path.join(workdir, "tb"))
            if e.HasField("session_log") and e.session_log.status == e.session_log.START]
  assert purges == [7]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics_lib.jax, "process_index", lambda: 1)
  with MetricsWriter(str(tmp_path / "run")) as writer:
    writer.write(1, {"train/loss": 1.0})
  assert not os.path.exists(tmp_path / "run")
  stream = io.StringIO()
  bar = ProgressBar(10, stream=stream)
  bar.update(10, {"train/loss": 1.0})
  bar.close()
  assert stream.getvalue() == ""


def test_write_errors_name_the_metric(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    with pytest.raises(ValueError, match="'step' is reserved"):
      writer.write(1, {"step": 3})
    with pytest.raises(ValueError, match=r"'train/loss' must be a scalar, got an array of shape \(2,\)"):
      writer.write(1, {"train/loss": np.zeros(2)})
    with pytest.raises(TypeError, match="'eval/x' has value"):
      writer.write(1, {"eval/x": object()})


def test_read_metrics_rejects_a_malformed_interior_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
    read_metrics(str(tmp_path))


def _write_run(workdir):
  with MetricsWriter(workdir, tensorboard=False) as writer:
    for step in range(1, 31):
      writer.write(step, {"train/loss": 2.0 / step, "perf/steps_per_sec": 5.0})
      if step % 10 == 0:
        writer.write(step, {"eval/accuracy": {10: 0.5, 20: 0.9, 30: 0.8}[step],
                            "eval/loss": {10: 1.0, 20: 0.4, 30: 0.6}[step]})


def test_plot_writes_a_png(tmp_path):
  workdir = str(tmp_path)
  _write_run(workdir)
  path = plot_metrics(workdir)
  assert path == os.path.join(workdir, "curves.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  chosen = plot_metrics(workdir, keys=["eval/accuracy"], filename="accuracy.png")
  assert os.path.getsize(chosen) > 1000
  with pytest.raises(ValueError, match=r"no numeric metric 'eval/bleu'.*eval/accuracy"):
    plot_metrics(workdir, keys=["eval/bleu"])


def test_summarize_reports_final_and_best_eval_values(tmp_path):
  workdir = str(tmp_path)
  _write_run(workdir)
  text = summarize(workdir)
  assert "30 steps" in text
  assert "train/loss: last 0.06667 (step 30)" in text
  assert "eval/accuracy: final 0.8 (step 30), best 0.9 (step 20)" in text
  assert "eval/loss: final 0.6 (step 30), best 0.4 (step 20)" in text     # lower is better
  assert "perf/" not in text


def test_summarize_prints_a_before_after_table_when_step_0_was_evaluated(tmp_path):
  workdir = str(tmp_path)
  _write_run(workdir)
  assert "(step 0 ->" not in summarize(workdir)      # no step-0 eval: no table
  with MetricsWriter(str(tmp_path / "with_start"), tensorboard=False) as writer:
    writer.write(0, {"eval/acc_t1": 0.5, "eval/delta": -0.25})
    writer.write(10, {"train/loss": 1.0})
    writer.write(20, {"eval/acc_t1": 0.625, "eval/delta": 0.125})
  lines = summarize(str(tmp_path / "with_start")).splitlines()
  assert lines[-3].split() == ["before", "after", "change", "(step", "0", "->", "20)"]
  assert lines[-2].split() == ["eval/acc_t1", "0.5000", "0.6250", "+0.1250"]
  assert lines[-1].split() == ["eval/delta", "-0.2500", "0.1250", "+0.3750"]


class _FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_plain_lines_rate_and_eta(monkeypatch):
  clock = _FakeClock()
  monkeypatch.setattr(metrics_lib.time, "monotonic", clock)
  stream = io.StringIO()
  bar = ProgressBar(100, initial_step=0, keys=("train/loss", "eval/accuracy"), stream=stream)
  bar.update(10, {"train/loss": np.float32(1.5), "perf/steps_per_sec": 3.0})
  clock.now = 105.0
  bar.update(15, {"train/loss": 1.25})           # within 10 s of the last line: not printed
  clock.now = 110.0
  bar.update(20, {"train/loss": 1.0, "eval/accuracy": 0.5})
  clock.now = 190.0
  bar.update(100, {"train/loss": 0.5})           # the last step is always printed
  bar.close()
  lines = stream.getvalue().splitlines()
  assert lines[0] == "step 10/100 | - steps/s | ETA - | train/loss 1.5"
  # 10 steps in 10 s since the first update: 1 step/s, 80 steps left.
  assert lines[1] == "step 20/100 | 1.00 steps/s | ETA 0:01:20 | train/loss 1 | eval/accuracy 0.5"
  assert lines[2].startswith("step 100/100 | 1.00 steps/s | ETA 0:00:00 | train/loss 0.5")
  assert len(lines) == 3     # close() does not repeat a final state already printed


def test_progress_bar_redraws_in_place_on_a_terminal(monkeypatch):
  clock = _FakeClock()
  monkeypatch.setattr(metrics_lib.time, "monotonic", clock)
  stream = _Terminal()
  bar = ProgressBar(1000, initial_step=500, stream=stream)
  for step in range(501, 511):
    clock.now += 0.125                              # 0.5 s between redraws -> every 4th step
    bar.update(step, {"train/loss": 1.0 / step})
  output = stream.getvalue()
  assert "\n" not in output and output.count("\r") == 3          # steps 501, 505, 509
  assert "step 505/1000 | 8.00 steps/s" in output and "step 504/1000" not in output
  bar.close()
  assert stream.getvalue().endswith("\n") and "step 510/1000" in stream.getvalue()

