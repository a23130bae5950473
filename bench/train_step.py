"""Benchmark: training tokens/s and model FLOPs utilisation, ours vs plain PyTorch, own processes.

    .venv/bin/python bench/train_step.py --presets=tiny,small --batch=8 --seq_len=256

Ours is the SFT pipeline's compiled step exactly as launch/train.py builds it
(bench/peers/selfimprove_train_step.py); the peer is a plain PyTorch forward + backward +
clip + AdamW step on `transformers`' LlamaForCausalLM loaded from the same exported weights
(bench/peers/torch_train_step.py, its own virtualenv). Same harness as bench/sampling.py:
alternating processes, median of the pooled timed calls, warm-up reported apart.
MFU = train-step FLOPs (3 x forward: 6 x matmul params x tokens + causal attention,
bench/peers/flops.py) / seconds / the jax f32 matmul peak measured at the start of the run.
"matmuls only s": the step's projection and LM-head matmuls alone, forward and backward, at
the step's shapes (bench/peers/matmuls_only.py, its own process); "ceiling" = floor / that,
the MFU that XLA:CPU's matmuls at these shapes allow at most.
Prints a markdown table and writes JSON (--output). Not a test; see bench/README.md.
"""

from __future__ import annotations

import os
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import flops  # noqa: E402
import harness  # noqa: E402
from selfimprove.models import get_preset  # noqa: E402

_PRESETS = flags.DEFINE_list("presets", ["tiny", "small"], "Model presets.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.")
_CALLS = flags.DEFINE_integer("calls", 3, "Timed steps per process.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Processes per side, alternating A B, B A.")
_SEED = flags.DEFINE_integer("seed", 0, "Weights and data seed.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the peak-measuring matmul.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", harness.DEFAULT_PEER_PYTHON,
                                   "The PyTorch peer's interpreter ('' skips the peer).")
_WEIGHTS_DIR = flags.DEFINE_string("weights_dir", "/tmp/selfimprove_bench_weights",
                                   "Where our random weights are exported for the peer.")
_OUTPUT = flags.DEFINE_string("output", "bench/results/train_step.json", "JSON results.")


def measure(preset: str) -> dict:
  weights = os.path.join(_WEIGHTS_DIR.value, preset)
  args = [f"--batch={_BATCH.value}", f"--seq_len={_SEQ_LEN.value}", f"--calls={_CALLS.value}",
          f"--seed={_SEED.value}"]
  sides = {"ours": (sys.executable, "selfimprove_train_step.py", [f"--preset={preset}", *args])}
  if _PEER_PYTHON.value:
    harness.run_worker(sys.executable, "selfimprove_generate.py",
                       [f"--preset={preset}", f"--seed={_SEED.value}", f"--export_hf={weights}"])
    sides["peer"] = (_PEER_PYTHON.value, "torch_train_step.py", [f"--hf_dir={weights}", *args])
  sides = harness.alternate(sides, _ROUNDS.value)
  matmuls_only = harness.run_worker(sys.executable, "matmuls_only.py",
                                    [f"--preset={preset}", "--work=train", *args])
  return sides, matmuls_only


def summarize(preset: str, sides: dict, matmuls_only: dict, peak_gflops: float) -> dict:
  config = get_preset(preset)
  tokens = _BATCH.value * _SEQ_LEN.value
  work = flops.train_step_flops(config, _BATCH.value, _SEQ_LEN.value)
  row = dict(preset=preset, params=config.num_params, batch=_BATCH.value, seq_len=_SEQ_LEN.value,
             flops=work, floor_seconds=work / (peak_gflops * 1e9))
  matmul_seconds = statistics.median(matmuls_only["call_seconds"])
  row["matmuls_only"] = dict(seconds=matmul_seconds, call_seconds=matmuls_only["call_seconds"],
                             warmup_seconds=matmuls_only["warmup_seconds"],
                             ceiling=row["floor_seconds"] / matmul_seconds)
  for name, side in sides.items():
    seconds = side["median_seconds"]
    row[name] = dict(seconds=seconds, tokens_per_sec=tokens / seconds,
                     mfu=work / seconds / (peak_gflops * 1e9),
                     warmup_seconds=side["warmup_seconds"], call_seconds=side["call_seconds"],
                     load_before=side["load_before"], load_after=side["load_after"],
                     runs=side["runs"])
  return row


def print_rows(rows: list[dict], peak: dict) -> None:
  print(f"\ntrain step: batch {_BATCH.value} x {_SEQ_LEN.value} tokens, f32, median of "
        f"{_ROUNDS.value} x {_CALLS.value} calls per side")
  print(f"matmul peak (f32 {_MATMUL_SIZE.value}^2, median): jax {peak['jax']['median_gflops']:.0f}"
        f" GFLOP/s" + (f", torch {peak['torch']['median_gflops']:.0f} GFLOP/s" if "torch" in peak
                       else ""))
  header = ["preset", "params", "ours tok/s", "peer tok/s", "ours/peer", "ours s/step",
            "peer s/step", "floor s", "ours MFU", "peer MFU", "matmuls only s", "ceiling MFU",
            "ours warm-up s", "peer warm-up s", "load 1m"]
  table = []
  for r in rows:
    ours, peer = r["ours"], r.get("peer")
    na = "n/a"
    table.append([
        r["preset"], f"{r['params'] / 1e6:.1f}M", f"{ours['tokens_per_sec']:.0f}",
        f"{peer['tokens_per_sec']:.0f}" if peer else na,
        f"{ours['tokens_per_sec'] / peer['tokens_per_sec']:.2f}x" if peer else na,
        f"{ours['seconds']:.3f}", f"{peer['seconds']:.3f}" if peer else na,
        f"{r['floor_seconds']:.3f}", f"{100 * ours['mfu']:.0f}%",
        f"{100 * peer['mfu']:.0f}%" if peer else na,
        f"{r['matmuls_only']['seconds']:.3f}", f"{100 * r['matmuls_only']['ceiling']:.0f}%",
        f"{statistics.median(ours['warmup_seconds']):.1f}",
        f"{statistics.median(peer['warmup_seconds']):.1f}" if peer else na,
        f"{ours['load_before']['load_1m']:.2f}-{ours['load_after']['load_1m']:.2f}"])
  harness.print_table(header, table)


def main(argv):
  del argv
  start = harness.machine()
  peak = harness.matmul_peak(_PEER_PYTHON.value or None, _MATMUL_SIZE.value, 20)
  rows = [summarize(preset, *measure(preset), peak["jax"]["median_gflops"])
          for preset in _PRESETS.value]
  # The peak again at the end: a drift between the two says the machine changed under the run.
  peak_end = harness.matmul_peak(None, _MATMUL_SIZE.value, 20)
  print_rows(rows, peak)
  print(f"jax matmul peak at the end of the run: {peak_end['jax']['median_gflops']:.0f} GFLOP/s; "
        f"1-minute load at the start {start['load_1m']:.2f} (before any worker ran)")
  harness.write_json(_OUTPUT.value, dict(matmul_peak_end=peak_end,
      benchmark="train_step", flags={f.name: f.value for f in (
          _PRESETS, _BATCH, _SEQ_LEN, _CALLS, _ROUNDS, _SEED, _MATMUL_SIZE, _PEER_PYTHON)},
      machine=start, end=harness.load(), matmul_peak=peak, rows=rows))


if __name__ == "__main__":
  app.run(main)
