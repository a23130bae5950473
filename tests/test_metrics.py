"""Metrics: JSONL contents, resume truncation, TensorBoard events read back, progress bar, plot,
summary, and faults (file deleted or rotated mid-run, cut-short lines, stale temporaries, plot
failures)."""

import errno
import io
import json
import logging
import os
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from selfimprove import metrics as metrics_lib
from selfimprove import progress as progress_lib
from selfimprove.metrics import MetricsWriter, plot_metrics, read_metrics, summarize
from selfimprove.progress import ProgressBar


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


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_read_metrics_skips_malformed_lines_with_a_warning_naming_file_and_line(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3, "tr')
  with caplog.at_level(logging.WARNING):
    assert read_metrics(str(tmp_path)) == [{"step": 1}, {"step": 2}]
  warnings = _warnings(caplog)
  assert len(warnings) == 2
  assert f"{tmp_path / 'metrics.jsonl'}:2: skipping a line that is not valid JSON" in warnings[0]
  assert f"{tmp_path / 'metrics.jsonl'}:4: skipping" in warnings[1]


def test_read_metrics_rejects_a_record_without_a_step(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"train/loss": 1.0}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with a 'step'"):
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


def test_plot_leaves_out_keys_without_numbers_with_a_warning(tmp_path, caplog):
  workdir = str(tmp_path)
  _write_run(workdir)
  with caplog.at_level(logging.WARNING):
    assert plot_metrics(workdir, keys=["eval/bleu", "eval/accuracy"], filename="a.png") == \
        os.path.join(workdir, "a.png")
    assert plot_metrics(workdir, keys=["eval/bleu"], filename="b.png") is None
  assert not os.path.exists(os.path.join(workdir, "b.png"))
  warnings = _warnings(caplog)
  assert "no numeric values of ['eval/bleu']" in warnings[0] and "eval/accuracy" in warnings[0]
  assert "has no numeric metrics to plot" in warnings[-1] and "metrics.jsonl" in warnings[-1]


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


def _metrics_path(tmp_path):
  return str(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("contents", [None, "", "\n", '{"step": 1, "train/lo'],
                         ids=["missing", "empty", "blank", "only-a-cut-short-line"])
def test_plot_and_summarize_warn_instead_of_raising_without_metrics(tmp_path, caplog, contents):
  if contents is not None:
    (tmp_path / "metrics.jsonl").write_text(contents)
  with caplog.at_level(logging.WARNING):
    assert plot_metrics(str(tmp_path)) is None
    text = summarize(str(tmp_path))
  assert text.startswith("No ") and _metrics_path(tmp_path) in text and "\n" not in text
  assert not os.path.exists(tmp_path / "curves.png")
  warnings = _warnings(caplog)
  assert any(w.startswith("plot_metrics:") and _metrics_path(tmp_path) in w for w in warnings)
  assert any(w.startswith("summarize:") and _metrics_path(tmp_path) in w for w in warnings)


def test_plot_and_summarize_skip_a_corrupt_line(tmp_path, caplog):
  workdir = str(tmp_path)
  _write_run(workdir)
  good_lines = len(_lines(workdir))
  with open(_metrics_path(tmp_path), "a") as f:
    f.write("\x00" * 20 + "\n" + '{"step": 31, "train/loss": 0.01}\n' + '{"step": 32, "tr')
  with caplog.at_level(logging.WARNING):
    assert plot_metrics(workdir) == os.path.join(workdir, "curves.png")
    text = summarize(workdir)
  assert "31 steps" in text and "train/loss: last 0.01 (step 31)" in text
  for bad_line in (good_lines + 1, good_lines + 3):     # the NUL bytes and the cut-short record
    assert any(f"{_metrics_path(tmp_path)}:{bad_line}: skipping" in w for w in _warnings(caplog))


def test_summarize_reports_an_unreadable_record_instead_of_raising(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
  with caplog.at_level(logging.WARNING):
    text = summarize(str(tmp_path))
    assert plot_metrics(str(tmp_path)) is None
  assert text.startswith("No summary: could not read") and "metrics.jsonl:2" in text
  assert any("metrics.jsonl:2: expected a JSON object" in w for w in _warnings(caplog))


def test_plot_returns_none_when_matplotlib_fails(tmp_path, caplog, monkeypatch):
  from matplotlib.figure import Figure
  workdir = str(tmp_path)
  _write_run(workdir)

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Figure, "savefig", disk_full)
  with caplog.at_level(logging.WARNING):
    assert plot_metrics(workdir) is None
  assert "curves.png" in _warnings(caplog)[-1] and "No space left" in _warnings(caplog)[-1]
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import fails: not installed
  with caplog.at_level(logging.WARNING):
    assert plot_metrics(workdir) is None
  assert "ModuleNotFoundError" in _warnings(caplog)[-1]


def test_writer_recreates_a_deleted_file(tmp_path, caplog):
  workdir = str(tmp_path)
  with MetricsWriter(workdir, tensorboard=False) as writer:
    writer.write(1, {"train/loss": 1.0})
    os.remove(_metrics_path(tmp_path))               # rm metrics.jsonl while training
    with caplog.at_level(logging.WARNING):
      writer.write(2, {"train/loss": 2.0})
    writer.write(3, {"train/loss": 3.0})
    assert _lines(workdir) == [{"step": 2, "train/loss": 2.0}, {"step": 3, "train/loss": 3.0}]
  assert any(_metrics_path(tmp_path) in w and "deleted or renamed" in w for w in _warnings(caplog))


@pytest.mark.parametrize("create_new", [False, True], ids=["mv", "mv-and-create"])
def test_writer_recreates_a_rotated_file(tmp_path, create_new):
  workdir = str(tmp_path)
  with MetricsWriter(workdir, tensorboard=False) as writer:
    writer.write(1, {"train/loss": 1.0})
    writer.write(2, {"train/loss": 2.0})
    os.rename(_metrics_path(tmp_path), _metrics_path(tmp_path) + ".1")   # log rotation
    if create_new:
      open(_metrics_path(tmp_path), "w").close()      # logrotate's `create`: a new empty file
    writer.write(3, {"train/loss": 3.0})
    writer.write(4, {"train/loss": 4.0})
  assert [r["step"] for r in _lines(workdir)] == [3, 4]
  with open(_metrics_path(tmp_path) + ".1") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]


def test_writer_starts_a_fresh_line_after_a_cut_short_record(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "tr')
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(3, {"train/loss": 3.0})
  with caplog.at_level(logging.WARNING):
    assert read_metrics(str(tmp_path)) == [{"step": 1}, {"step": 3, "train/loss": 3.0}]
  assert len(_warnings(caplog)) == 1 and "metrics.jsonl:2: skipping" in _warnings(caplog)[0]


def test_resume_removes_a_stale_temporary_and_keeps_rows_up_to_resume_step(tmp_path):
  workdir = str(tmp_path)
  with MetricsWriter(workdir, tensorboard=False) as writer:
    for step in range(1, 9):
      writer.write(step, {"train/loss": float(step)})
  temporary = _metrics_path(tmp_path) + ".tmp"
  open(temporary, "w").close()           # a full disk during an earlier attempt's rewrite
  inode = os.stat(_metrics_path(tmp_path)).st_ino
  with MetricsWriter(workdir, resume_step=5, tensorboard=False):
    assert not os.path.exists(temporary)
    assert _lines(workdir) == [{"step": s, "train/loss": float(s)} for s in range(1, 6)]
  # Rewritten beside and renamed over, never truncated in place: the file is a new inode.
  assert os.stat(_metrics_path(tmp_path)).st_ino != inode
  assert not os.path.exists(temporary)


def test_a_stale_temporary_is_removed_without_resume_too(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
  (tmp_path / "metrics.jsonl.tmp").write_text("")
  with MetricsWriter(str(tmp_path), tensorboard=False):
    assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")
  assert _lines(str(tmp_path)) == [{"step": 1}]


def test_a_failed_resume_rewrite_leaves_the_file_unchanged(tmp_path, monkeypatch):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')

  def disk_full(descriptor):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(metrics_lib.os, "fsync", disk_full)
  with pytest.raises(OSError, match=r"after step 1 from .*metrics.jsonl .*metrics.jsonl.tmp.*"
                                    r"No space left on device.*is unchanged") as raised:
    MetricsWriter(str(tmp_path), resume_step=1, tensorboard=False)
  assert raised.value.errno == errno.ENOSPC
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
  assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")


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
  monkeypatch.setattr(progress_lib.time, "monotonic", clock)
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
  monkeypatch.setattr(progress_lib.time, "monotonic", clock)
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

