"""Benchmark: seconds per RL iteration, ours vs TRL and Tunix, and our SCoRe step (issue 15).

    .venv/bin/python bench/rl_iteration.py [--rounds 2] [--steps 8] [--skip trl,tunix]

RL row: 8 prompts x 8 samples, 16 new tokens, a rule-based reward, KL to a reference
(coefficient 0.04), one policy-gradient update, the `tiny` model shape. Each library runs in
its own process (bench/peers/rl_*.py; TRL and Tunix in their own virtual environments, see
bench/rl_iteration.md) with its own defaults and thread settings; the harness runs them in
`--rounds` rounds, reversing the order every round, and pools the timed steps (the first step
of each process, which compiles, is reported separately). SCoRe row: our SCoRe step at the
demo's shape (configs/bench_rl.py:score), samples/s and generated tokens/s.

Every row also prints its physical floor: the FLOPs the work needs (2 x matmul params per
token forward, 6 x for forward + backward, plus causal attention; prompts prefilled once each)
over a large f32 matmul's GFLOP/s measured in this run (median), and achieved/floor.
Prints a table and writes bench/results/rl_iteration.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = [os.path.join(ROOT, ".venv/bin/python"), "bench/peers/rl_selfimprove.py"]
WORKERS = {   # name -> argv without --steps
    "selfimprove": OURS + ["--config=configs/bench_rl.py:rl"],
    "trl": ["/tmp/trl_venv/bin/python", "bench/peers/rl_trl.py"],
    "trl_f32": ["/tmp/trl_venv/bin/python", "bench/peers/rl_trl.py", "--f32"],
    "tunix": ["/tmp/tunix_venv/bin/python", "bench/peers/rl_tunix.py"],
}
TINY = dict(vocab_size=512, embed_dim=256, mlp_dim=768, num_layers=4, num_heads=8,
            num_kv_heads=4, head_dim=32)   # selfimprove.models preset "tiny"


def matmul_peak_gflops(n: int = 2048, repeats: int = 15) -> float:
  """Median GFLOP/s of an n x n x n f32 matmul in JAX (this process, default threads)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def matmul_params(m: dict) -> int:
  """Parameters that take part in a matmul per token (blocks + LM head; not the embedding lookup)."""
  q_o = 2 * m["embed_dim"] * m["num_heads"] * m["head_dim"]
  k_v = 2 * m["embed_dim"] * m["num_kv_heads"] * m["head_dim"]
  mlp = 3 * m["embed_dim"] * m["mlp_dim"]
  return m["num_layers"] * (q_o + k_v + mlp) + m["embed_dim"] * m["vocab_size"]


def forward_flops(m: dict, new: int, context: int) -> float:
  """Forward FLOPs of `new` tokens appended after `context` cached ones (causal attention:
  QK^T and AV at 2 FLOPs per multiply-add over the tokens each new token sees)."""
  attended = new * context + new * (new + 1) / 2
  return 2 * matmul_params(m) * new + 4 * m["num_layers"] * m["num_heads"] * m["head_dim"] * attended


def iteration_flops(m: dict, prompts: int, samples: int, prompt_len: int, new_tokens: int,
                    turns: int = 1, instruction_len: int = 0) -> float:
  """FLOPs one RL iteration needs: sample `turns` attempts (prompt prefilled once per prompt;
  each later turn prefills the instruction after the previous attempt), one reference forward
  and one forward + backward (3x forward) over each full sequence."""
  rows = prompts * samples
  flops = prompts * forward_flops(m, prompt_len, 0)
  context = prompt_len
  for turn in range(turns):
    if turn:
      flops += rows * forward_flops(m, instruction_len, context)
      context += instruction_len
    flops += rows * sum(forward_flops(m, 1, context + t) for t in range(new_tokens))
    context += new_tokens
  return flops + 4 * rows * forward_flops(m, context, 0)


def run_worker(name: str, argv: list[str], steps: int, log_dir: str) -> dict:
  start = time.perf_counter()
  proc = subprocess.run(argv + [f"--steps={steps}"], cwd=ROOT, capture_output=True, text=True)
  with open(os.path.join(log_dir, f"{name}.log"), "a") as f:
    f.write(proc.stdout + proc.stderr)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return dict(library=name, error=f"exit {proc.returncode}: " + " | ".join(tail))
  result = json.loads(lines[-1][len("RESULT "):])
  result.update(wall_s=time.perf_counter() - start, loadavg_after=os.getloadavg()[0])
  return result


def summarise(name: str, runs: list[dict], flops: float, peak: float) -> dict:
  ok = [r for r in runs if "error" not in r]
  if not ok:
    return dict(name=name, error=runs[0]["error"])
  steps = [t for r in ok for t in r["step_s"]]
  median = statistics.median(steps)
  first = [(r["compile_s"] or 0.0) + r["first_step_s"] for r in ok]
  # Ours compiles ahead of time (measured); Tunix's jit compiles inside its first step
  # (estimated as first step - median step); TRL runs PyTorch eagerly (no compile).
  compile_s = [r["compile_s"] if r["compile_s"] is not None else r["first_step_s"] - median
               for r in ok if r.get("compiles", True)]
  floor = flops / (peak * 1e9)
  return dict(name=name, version=ok[0]["version"], processes=len(ok), timed_steps=len(steps),
              median_step_s=median, min_step_s=min(steps), max_step_s=max(steps),
              per_process_median_s=[statistics.median(r["step_s"]) for r in ok],
              first_step_s=statistics.median(first),
              compile_s=statistics.median(compile_s) if compile_s else None,
              compile_measured=ok[0]["compile_s"] is not None,
              setup_s=statistics.median(r["setup_s"] for r in ok),
              flops=flops, floor_s=floor, achieved_over_floor=floor / median,
              settings=ok[0].get("settings"), metrics=ok[0].get("metrics"),
              threads=ok[0].get("threads"), loadavg_after=[r["loadavg_after"] for r in ok])


def compile_text(row: dict) -> str:
  if row["compile_s"] is None:
    return "eager"
  return f"{row['compile_s']:.2f}" + ("" if row["compile_measured"] else "~")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
  parser.add_argument("--skip", default="", help="comma-separated workers to leave out")
  parser.add_argument("--output", default=os.path.join(ROOT, "bench/results/rl_iteration.json"))
  args = parser.parse_args()
  names = [n for n in WORKERS if n not in args.skip.split(",")]
  log_dir = os.path.join("/tmp", "rl_iteration_logs")
  os.makedirs(log_dir, exist_ok=True)
  started, load_start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getloadavg()
  peak = matmul_peak_gflops()
  print(f"matmul peak (2048^3 f32, jax, median of 15): {peak:.1f} GFLOP/s; "
        f"load {load_start[0]:.2f}", file=sys.stderr, flush=True)

  runs = {n: [] for n in names}
  for round_index in range(args.rounds):
    for name in (names if round_index % 2 == 0 else names[::-1]):
      result = run_worker(name, WORKERS[name], args.steps, log_dir)
      runs[name].append(result)
      print(f"  round {round_index}: {name}: "
            f"{result.get('error') or statistics.median(result['step_s']):} ", file=sys.stderr,
            flush=True)
  score_runs = [run_worker("score", OURS + ["--config=configs/bench_rl.py:score"], args.steps,
                           log_dir) for _ in range(args.rounds)]
  peak_end = matmul_peak_gflops()

  rl_flops = iteration_flops(TINY, 8, 8, 9, 16)
  rows = [summarise(n, runs[n], rl_flops, peak) for n in names]
  score = score_runs[0]
  if "error" not in score:
    score_flops = iteration_flops(score["model"], score["prompts"], score["samples_per_prompt"],
                                  score["prompt_len"], score["max_new_tokens"], turns=2,
                                  instruction_len=score["instruction_len"])
    score_row = summarise("selfimprove SCoRe", score_runs, score_flops, peak)
    rows_per_step = score["prompts"] * score["samples_per_prompt"]
    generated = rows_per_step * (score_row["metrics"]["train/length_t1"] +
                                 score_row["metrics"]["train/length_t2"])
    score_row.update(samples_per_s=rows_per_step / score_row["median_step_s"],
                     generated_tokens_per_s=generated / score_row["median_step_s"],
                     budget_tokens_per_s=rows_per_step * 2 * score["max_new_tokens"] /
                     score_row["median_step_s"], shape={k: score[k] for k in (
                         "prompts", "samples_per_prompt", "prompt_len", "max_new_tokens",
                         "instruction_len", "model")})
  else:
    score_row = dict(name="selfimprove SCoRe", error=score["error"])

  print(f"\nRL iteration: 8 prompts x 8 samples, 16 new tokens, prompt 9 tokens, KL 0.04, one "
        f"update, tiny shape; {rl_flops / 1e9:.1f} GFLOP/iteration; matmul peak "
        f"{peak:.0f} GFLOP/s (start) / {peak_end:.0f} (end)")
  header = f"{'library':<13}{'s/step':>8}{'min':>7}{'max':>7}{'1st step':>9}{'compile':>10}" \
           f"{'setup':>7}{'floor s':>9}{'ach/floor':>10}"
  print(header + "\n" + "-" * len(header))
  # 1st step: compile (if any) + the first step's run; compile "~": first step - median step;
  # setup: building the model/run/trainer before the first step (not in any other column).
  for r in rows + [score_row]:
    if "error" in r:
      print(f"{r['name']:<13} ERROR {r['error']}")
      continue
    print(f"{r['name'][:13]:<13}{r['median_step_s']:>8.3f}{r['min_step_s']:>7.3f}"
          f"{r['max_step_s']:>7.3f}{r['first_step_s']:>9.2f}{compile_text(r):>10}"
          f"{r['setup_s']:>7.1f}{r['floor_s']:>9.3f}{r['achieved_over_floor']:>10.1%}")
  peers = [r for r in rows if r["name"] != "selfimprove" and "error" not in r]
  ours = next((r for r in rows if r["name"] == "selfimprove" and "error" not in r), None)
  if ours and peers:
    best = min(peers, key=lambda r: r["median_step_s"])
    ours["speedup_vs_fastest_peer"] = best["median_step_s"] / ours["median_step_s"]
    print(f"\nours vs the fastest peer ({best['name']}): "
          f"{ours['speedup_vs_fastest_peer']:.2f}x (target >= 3x); compile {ours['compile_s']:.1f} s "
          f"(target <= 30 s)")
  if "error" not in score_row:
    print(f"SCoRe step ({score_row['shape']['prompts']} prompts x "
          f"{score_row['shape']['samples_per_prompt']} samples, 2 attempts of "
          f"{score_row['shape']['max_new_tokens']} tokens): {score_row['samples_per_s']:.1f} "
          f"samples/s, {score_row['generated_tokens_per_s']:.0f} generated tokens/s "
          f"({score_row['budget_tokens_per_s']:.0f} at the full budget)")
  result = dict(benchmark="rl_iteration", started=started,
                finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                loadavg_start=load_start, loadavg_end=os.getloadavg(), cpu_count=os.cpu_count(),
                matmul_peak_gflops=peak, matmul_peak_gflops_end=peak_end,
                rounds=args.rounds, steps_per_process=args.steps, rows=rows + [score_row],
                raw_runs=dict(runs, score=score_runs))
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {args.output}; worker logs in {log_dir}")


if __name__ == "__main__":
  main()
