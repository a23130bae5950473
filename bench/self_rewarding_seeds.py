"""Self-Rewarding, Temporal Self-Rewarding, SPIN, SPPO and verifier-labelled DPO over seeds, from
the same judge-trained start: runs (or resumes) every run, prints per-round tables, draws curves.

    python bench/self_rewarding_seeds.py --workdir=/tmp/self_rewarding --seeds=0,1,2

For each seed s the start is SFT + judge training (the warm starts of
configs/self_rewarding_arithmetic.py, the same as configs/self_judged_rl_arithmetic.py's): taken
from --starts=DIR2 when DIR2/seed{s}/self_judged/warm_start/params exists (the runs of
bench/self_judging_seeds.py with the same seeds), else trained by the first method's one
command in DIR/seed{s}/self_rewarding. Every method then runs from those parameters
(`--config.init_from`) in DIR/seed{s}/<method> with the flags of METHODS: the same number of
updates (300), prompts per step (16) and learning rate; finished runs are skipped.

Tables (DIR/table.md, DIR/table.json): per method and round, held-out greedy accuracy (the
verifier only measures), the judge's AUROC, the chosen - rejected score gap, and how often the
chosen / rejected answers are right; mean +- sample std over seeds, then each seed.
DIR/curves.png: accuracy and score gap per method, one column per seed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import runs  # noqa: E402

# method -> its flags. Temporal: K = 2 per model (2K candidates in phase 1, 3K in phase 2,
# about SR's N = 4 per prompt on average) and 2 rounds of 150 steps (300 updates, as 3 x 100;
# steps_per_call 2 so that evaluations fall on 150 and 300: the same updates, grouped by 2).
METHODS = {
    "self_rewarding": (),
    "temporal": ("--config.self_rewarding.method=temporal",
                 "--config.self_rewarding.steps_per_round=150",
                 "--config.self_rewarding.num_candidates=2", "--config.train.eval_every=150",
                 "--config.train.steps_per_call=2", "--config.train.checkpoint_every=30"),
    "spin": ("--config.self_rewarding.method=spin",),
    "sppo": ("--config.self_rewarding.method=sppo", "--config.self_rewarding.scorer=pairwise"),
    "verifier_dpo": ("--config.self_rewarding.scorer=verifier",),
}
PAIR_FIGURES = ("train/score_gap", "train/chosen_verified", "train/rejected_verified",
                "train/pair_fraction", "train/chosen_rejected_cosine")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of all runs.")
_STARTS = flags.DEFINE_string("starts", "", "bench/self_judging_seeds.py's workdir, whose "
                              "judge-trained starts are reused when present.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed of every stage).")
_CONFIG = flags.DEFINE_string("config", "configs/self_rewarding_arithmetic.py:tiny",
                              "Config[:preset].")
_EXTRA = flags.DEFINE_multi_string("override", [], "Extra --config.x=y flags for every run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Seeds run at the same time.")
flags.mark_flag_as_required("workdir")


def _start(seed: str) -> str:
  """The judge-trained parameters of this seed (trained here when not reused)."""
  if _STARTS.value:
    reused = os.path.join(_STARTS.value, f"seed{seed}", "self_judged", "warm_start", "params")
    if os.path.exists(os.path.join(reused, "model_config.json")):
      return reused
  return os.path.join(_WORKDIR.value, f"seed{seed}", "self_rewarding", "warm_start", "params")


def _run_seed(seed: str) -> None:
  base = os.path.join(_WORKDIR.value, f"seed{seed}")
  os.makedirs(base, exist_ok=True)
  common = [f"--config.seed={seed}", f"--config.warm_start.seed={seed}",
            f"--config.warm_start.warm_start.seed={seed}", *_EXTRA.value]
  start = _start(seed)
  for method, method_flags in METHODS.items():
    workdir = os.path.join(base, method)
    if runs.finished(workdir):
      continue
    # The first run trains the start when there is none yet (its own warm starts).
    reuse = [f"--config.init_from={start}"] if os.path.exists(
        os.path.join(start, "model_config.json")) else []
    runs.train(_CONFIG.value, workdir, *common, *reuse, *method_flags,
               log_path=workdir + ".log")


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _figures(workdir: str) -> dict:
  rows = _rows(workdir)
  evals = [r for r in rows if "eval/accuracy" in r]
  trains = [r for r in rows if "train/round" in r]
  rounds = sorted({int(r["train/round"]) for r in trains})
  def round_mean(key: str, t: int) -> float | None:   # over the logged steps with pairs
    values = [r[key] for r in trains if int(r["train/round"]) == t and r.get(key) is not None]
    return float(np.mean(values)) if values else None

  per_round = {str(t): {k: round_mean(k, t) for k in PAIR_FIGURES} for t in rounds}
  return {"evals": [{k: r.get(k) for k in ("step", "eval/accuracy", "eval/judge_auroc")}
                    for r in evals], "rounds": per_round,
          "steps": [r["step"] for r in trains],
          "score_gap": [r.get("train/score_gap") for r in trains]}


def _summary(results: dict, seeds: list[str]) -> list[str]:
  """One row per method: held-out accuracy at the start and at the end, and how many seeds end
  above their start."""
  lines = ["## Summary: held-out greedy accuracy\n", "| method | start | final | final > start |",
           "|---|---|---|---|"]
  for method in METHODS:
    start, final = ([results[s][method]["evals"][i]["eval/accuracy"] for s in seeds]
                    for i in (0, -1))
    rose = sum(f > b for f, b in zip(final, start))
    lines.append(f"| {method} | {runs.mean_std_cell(start)} | {runs.mean_std_cell(final)} | "
                 f"{rose}/{len(seeds)} |")
  return lines + [""]


def _tables(results: dict, seeds: list[str]) -> str:
  lines = _summary(results, seeds)
  for method in METHODS:
    first = results[seeds[0]][method]
    lines += [f"## {method}\n", "| eval step | eval/accuracy | eval/judge_auroc |", "|---|---|---|"]
    for i, row in enumerate(first["evals"]):
      values = [[results[s][method]["evals"][i][k] for s in seeds]
                for k in ("eval/accuracy", "eval/judge_auroc")]
      lines.append(f"| {row['step']} | {runs.mean_std_cell(values[0])} | {runs.mean_std_cell(values[1])} |")
    lines += ["", "| round | " + " | ".join(PAIR_FIGURES) + " |",
              "|---|" + "---|" * len(PAIR_FIGURES)]
    for t in first["rounds"]:
      lines.append(f"| {t} | " + " | ".join(
          runs.mean_std_cell([results[s][method]["rounds"][t][k] for s in seeds]) for k in PAIR_FIGURES) + " |")
    rose = [results[s][method]["evals"][-1]["eval/accuracy"] >
            results[s][method]["evals"][0]["eval/accuracy"] for s in seeds]
    lines.append(f"\n{method}: final held-out accuracy above the start at every seed: "
                 f"{all(rose)} ({sum(rose)}/{len(rose)})\n")
  return "\n".join(lines)


def _plot(results: dict, seeds: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, len(seeds), figsize=(4 * len(seeds), 6), squeeze=False)
  for column, seed in enumerate(seeds):
    for method in METHODS:
      figures = results[seed][method]
      axes[0, column].plot([r["step"] for r in figures["evals"]],
                           [r["eval/accuracy"] for r in figures["evals"]], marker="o",
                           label=method)
      gaps = [np.nan if g is None else g for g in figures["score_gap"]]
      axes[1, column].plot(figures["steps"], gaps, label=method)
    axes[0, column].set_title(f"seed {seed}")
    axes[0, column].set_ylabel("held-out accuracy")
    axes[1, column].set_ylabel("train/score_gap")
    axes[1, column].set_xlabel("step")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  seeds = list(_SEEDS.value)
  with concurrent.futures.ThreadPoolExecutor(max(_PARALLEL.value, 1)) as pool:
    list(pool.map(_run_seed, seeds))
  results = {s: {m: _figures(os.path.join(_WORKDIR.value, f"seed{s}", m)) for m in METHODS}
             for s in seeds}
  table = _tables(results, seeds)
  runs.write_report(_WORKDIR.value, table, results)
  _plot(results, seeds, os.path.join(_WORKDIR.value, "curves.png"))


if __name__ == "__main__":
  app.run(main)
