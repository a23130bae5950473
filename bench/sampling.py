"""Benchmark: decode throughput of our sampler vs `transformers.generate`, each in its own process.

    .venv/bin/python bench/sampling.py --config=configs/bench_sampling.py:tiny,small

For each preset our worker first exports its random weights (seed 0) as a Hugging Face
folder, so both libraries run the very same model; then every row alternates
bench/peers/selfimprove_generate.py (this virtualenv) and bench/peers/transformers_generate.py
(the peer's virtualenv). tok/s = rows x new tokens / median seconds of one call (prefill
included). floor = the FLOPs the row needs (bench/peers/flops.py) / the jax f32 matmul peak
measured at the start of this run; "% floor" = floor / measured time. "matmuls only s" is the
row's projection and LM-head matmuls alone, at the row's own shapes, nothing else
(bench/peers/matmuls_only.py, its own process, once per row); "ceiling" = floor / that: the
"% floor" that XLA:CPU's matmuls at these shapes allow at most. Prints a markdown table and
writes JSON (config.output). Not a test; see bench/README.md.
"""

from __future__ import annotations

import os
import statistics
import sys

from absl import app
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import flops  # noqa: E402
import harness  # noqa: E402
from selfimprove.models import get_preset  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_sampling.py:tiny,small")


def row_specs(bench) -> list[dict]:
  """(preset, prompts, samples per prompt, new tokens) of every row, in run order."""
  specs = []
  for preset in [p.strip() for p in bench.presets.split(",") if p.strip()]:
    for batch in bench.batch_sizes:
      specs.append(dict(preset=preset, kind="greedy", prompts=batch, samples=1,
                        new_tokens=bench.max_new_tokens))
    specs.append(dict(preset=preset, kind="grpo", prompts=bench.grpo_prompts,
                      samples=bench.grpo_samples, new_tokens=bench.grpo_new_tokens))
  return specs


def row_args(spec: dict, bench) -> list[str]:
  return [f"--prompts={spec['prompts']}", f"--samples_per_prompt={spec['samples']}",
          f"--prompt_len={bench.prompt_len}", f"--new_tokens={spec['new_tokens']}",
          f"--calls={bench.calls}", f"--seed={bench.seed}"]


def measure_row(spec: dict, bench, weights: str) -> dict:
  args = row_args(spec, bench)
  sides = {"ours": (sys.executable, "selfimprove_generate.py",
                    [f"--preset={spec['preset']}", *args])}
  if bench.peer_python:
    sides["peer"] = (bench.peer_python, "transformers_generate.py", [f"--hf_dir={weights}", *args])
  return harness.alternate(sides, bench.rounds)


def measure_matmuls_only(spec: dict, bench) -> dict:
  """The row's projection and LM-head matmuls alone (bench/peers/matmuls_only.py)."""
  result = harness.run_worker(sys.executable, "matmuls_only.py",
                              [f"--preset={spec['preset']}", "--work=sampling",
                               *row_args(spec, bench)])
  return dict(seconds=statistics.median(result["call_seconds"]),
              call_seconds=result["call_seconds"], warmup_seconds=result["warmup_seconds"])


def summarize(spec: dict, sides: dict, matmuls_only: dict, bench, peak_gflops: float) -> dict:
  config = get_preset(spec["preset"])
  rows = spec["prompts"] * spec["samples"]
  work = flops.sampling_flops(config, spec["prompts"], spec["samples"], bench.prompt_len,
                              spec["new_tokens"])
  floor = work / (peak_gflops * 1e9)
  row = dict(spec, rows=rows, params=config.num_params, flops=work, floor_seconds=floor,
             matmuls_only=dict(matmuls_only, ceiling=floor / matmuls_only["seconds"]))
  for name, side in sides.items():
    row[name] = dict(seconds=side["median_seconds"],
                     tokens_per_sec=rows * spec["new_tokens"] / side["median_seconds"],
                     fraction_of_floor=floor / side["median_seconds"],
                     warmup_seconds=side["warmup_seconds"], call_seconds=side["call_seconds"],
                     load_before=side["load_before"], load_after=side["load_after"],
                     runs=[{k: v for k, v in run.items() if k != "first_row_tokens"}
                           for run in side["runs"]])
  if "peer" in sides and spec["kind"] == "greedy":
    ours, peer = (sides[n]["runs"][0]["first_row_tokens"] for n in ("ours", "peer"))
    same = next((i for i, (a, b) in enumerate(zip(ours, peer)) if a != b), len(ours))
    row["greedy_tokens_agree"] = same   # leading tokens of row 0 that are identical
  return row


def print_rows(rows: list[dict], peak: dict, bench) -> None:
  print(f"\nsampling: prompt {bench.prompt_len}; greedy rows {bench.max_new_tokens} new tokens; "
        f"grpo = {bench.grpo_prompts} prompts x {bench.grpo_samples} samples x "
        f"{bench.grpo_new_tokens} new tokens (temperature 1); f32; median of "
        f"{bench.rounds} x {bench.calls} calls per side")
  print(f"matmul peak (f32 {bench.matmul_size}^2, median): jax {peak['jax']['median_gflops']:.0f} "
        f"GFLOP/s" + (f", torch {peak['torch']['median_gflops']:.0f} GFLOP/s" if "torch" in peak
                      else ""))
  header = ["preset", "row", "ours tok/s", "peer tok/s", "ours/peer", "floor s",
            "ours % floor", "peer % floor", "matmuls only s", "ceiling % floor",
            "ours warm-up s", "peer warm-up s", "same greedy tokens", "load 1m"]
  table = []
  for r in rows:
    ours, peer = r["ours"], r.get("peer")
    label = (f"batch {r['prompts']}" if r["kind"] == "greedy"
             else f"grpo {r['prompts']}x{r['samples']}x{r['new_tokens']}")
    load = f"{ours['load_before']['load_1m']:.2f}-{ours['load_after']['load_1m']:.2f}"
    table.append([
        r["preset"], label, f"{ours['tokens_per_sec']:.0f}",
        f"{peer['tokens_per_sec']:.0f}" if peer else "n/a",
        f"{ours['tokens_per_sec'] / peer['tokens_per_sec']:.2f}x" if peer else "n/a",
        f"{r['floor_seconds']:.3f}", f"{100 * ours['fraction_of_floor']:.0f}%",
        f"{100 * peer['fraction_of_floor']:.0f}%" if peer else "n/a",
        f"{r['matmuls_only']['seconds']:.3f}", f"{100 * r['matmuls_only']['ceiling']:.0f}%",
        f"{statistics.median(ours['warmup_seconds']):.1f}",
        f"{statistics.median(peer['warmup_seconds']):.1f}" if peer else "n/a",
        f"{r['greedy_tokens_agree']}/{r['new_tokens']}" if "greedy_tokens_agree" in r else "-",
        load])
  harness.print_table(header, table)


def main(argv):
  del argv
  bench = _CONFIG.value
  start = harness.machine()
  peak = harness.matmul_peak(bench.peer_python or None, bench.matmul_size, bench.matmul_calls)
  peak_gflops = peak["jax"]["median_gflops"]
  rows = []
  exported = set()
  for spec in row_specs(bench):
    weights = os.path.join(bench.weights_dir, spec["preset"])
    if bench.peer_python and spec["preset"] not in exported:
      harness.run_worker(sys.executable, "selfimprove_generate.py",
                         [f"--preset={spec['preset']}", f"--seed={bench.seed}",
                          f"--export_hf={weights}"])
      exported.add(spec["preset"])
    sides = measure_row(spec, bench, weights)
    rows.append(summarize(spec, sides, measure_matmuls_only(spec, bench), bench, peak_gflops))
  # The peak again at the end: a drift between the two says the machine changed under the run.
  peak_end = harness.matmul_peak(None, bench.matmul_size, bench.matmul_calls)
  print_rows(rows, peak, bench)
  print(f"jax matmul peak at the end of the run: {peak_end['jax']['median_gflops']:.0f} GFLOP/s; "
        f"1-minute load at the start {start['load_1m']:.2f} (before any worker ran)")
  harness.write_json(bench.output, dict(
      benchmark="sampling", config=bench.to_dict(), machine=start, end=harness.load(),
      matmul_peak=peak, matmul_peak_end=peak_end, rows=rows))


if __name__ == "__main__":
  app.run(main)
