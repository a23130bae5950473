"""Self-judged RL vs verifier RL vs no training over seeds: runs (or resumes) every run, then
prints the tables and draws the curves (docs/results/self_judging.md).

    python bench/self_judging_seeds.py --workdir=/tmp/self_judging --seeds=0,1,2

For each seed s (config.seed of every stage):
  DIR/seed{s}/self_judged   the one command of configs/self_judged_rl_arithmetic.py: SFT in
                            .../warm_start/warm_start, judge training in .../warm_start, then
                            GRPO with the trained P(True) self-judge as the only reward;
  DIR/seed{s}/<arm>         GRPO from the same judge-trained parameters with another single
                            reward (ARMS: the pairwise self-judge, self-certainty, the group's
                            majority answer, and the verifier: the upper reference), the same
                            steps, prompts and samples per step;
and "no training" is step 0 of any of them (their common start). Every run is `launch/train.py` with the
flags printed before it starts; finished runs are skipped, an interrupted one resumes.

Tables (DIR/table.md, DIR/table.json): judge training before/after (held-out greedy accuracy,
judge AUROC / ECE / accuracy); the RL arms' held-out accuracy at the start and the end, and the
judge's figures along the way; best-of-N by selector at the RL start (the judge-trained model)
and at the end of self-judged RL; the reward-hacking flags of the run summaries. Mean +- sample
std over seeds, then each seed. DIR/curves.png: per seed, held-out accuracy and the judge's
score of the policy's samples (eval/judge_score) for both arms, and judge AUROC.
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

# arm -> the reward flags of its run (the self_judged run is the config as it is).
ARMS = {
    "self_judged": (),
    "pairwise": ("--config.rl.rewards.self_judge.weight=0",
                 "--config.rl.rewards.pairwise.weight=1"),
    "self_certainty": ("--config.rl.rewards.self_judge.weight=0",
                       "--config.rl.rewards.self_certainty.weight=1"),
    "majority": ("--config.rl.rewards.self_judge.weight=0", "--config.rl.rewards.majority.weight=1"),
    "verifier_rl": ("--config.rl.rewards.self_judge.weight=0",
                    "--config.rl.rewards.verifier.weight=1"),
}
JUDGE_FIGURES = ("eval/accuracy", "eval/judge_auroc", "eval/judge_ece", "eval/judge_accuracy",
                 "eval/pairwise_agreement")
RL_FIGURES = ("eval/accuracy", "eval/judge_auroc", "eval/judge_ece", "eval/judge_score",
              "eval/sample_accuracy")
SELECTORS = ("random", "majority", "self_certainty", "borda", "p_true", "oracle")
BEST_OF = (1, 4, 16)

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of all runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed of every stage).")
_CONFIG = flags.DEFINE_string("config", "configs/self_judged_rl_arithmetic.py:tiny",
                              "Config[:preset].")
_EXTRA = flags.DEFINE_multi_string("override", [], "Extra --config.x=y flags for every run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Seeds run at the same time.")
flags.mark_flag_as_required("workdir")


def _run_seed(seed: str) -> None:
  base = os.path.join(_WORKDIR.value, f"seed{seed}")
  os.makedirs(base, exist_ok=True)
  common = [f"--config.seed={seed}", f"--config.warm_start.seed={seed}",
            f"--config.warm_start.warm_start.seed={seed}", *_EXTRA.value]
  judged = os.path.join(base, "self_judged")
  if not runs.finished(judged):
    runs.train(_CONFIG.value, judged, *common, log_path=judged + ".log")
  for arm, rewards in ARMS.items():
    workdir = os.path.join(base, arm)
    if not runs.finished(workdir):
      runs.train(_CONFIG.value, workdir, *common,
                 f"--config.init_from={os.path.join(judged, 'warm_start', 'params')}", *rewards,
                 log_path=workdir + ".log")


def _evals(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if "eval/accuracy" in r]


def _figures(workdir: str) -> dict:
  evals = _evals(workdir)
  flags_path = os.path.join(workdir, "flags.json")
  run_flags = json.load(open(flags_path)) if os.path.exists(flags_path) else {}
  return {"start": evals[0], "final": evals[-1], "steps": [r["step"] for r in evals],
          "curves": {k: [r.get(k) for r in evals] for k in RL_FIGURES}, "flags": run_flags}


def _tables(results: dict, seeds: list[str]) -> str:
  judge = [results[s]["judge_training"] for s in seeds]
  lines = ["## Judge training (held out)\n", "| figure | before (step 0) | after |", "|---|---|---|"]
  for figure in JUDGE_FIGURES:
    lines.append(f"| {figure} | {runs.mean_std_cell([j['start'].get(figure) for j in judge])} | "
                 f"{runs.mean_std_cell([j['final'].get(figure) for j in judge])} |")
  step = results[seeds[0]]["self_judged"]["final"]["step"]
  lines += [f"\n## RL (held out): the start (= no training) and each reward at step {step}\n",
            "| figure | start | " + " | ".join(ARMS) + " |", "|---|---|" + "---|" * len(ARMS)]
  for figure in RL_FIGURES:
    row = [[results[s]["self_judged"]["start"].get(figure) for s in seeds]]
    row += [[results[s][arm]["final"].get(figure) for s in seeds] for arm in ARMS]
    lines.append(f"| {figure} | " + " | ".join(runs.mean_std_cell(v) for v in row) + " |")
  for arm in ARMS:
    improved = [results[s][arm]["final"]["eval/accuracy"] >
                results[s][arm]["start"]["eval/accuracy"] for s in seeds]
    lines.append(f"\n{arm}: above its start on eval/accuracy at every seed: {all(improved)} "
                 f"({sum(improved)}/{len(improved)})")
  for arm in ARMS:
    for seed in seeds:
      for name, message in results[seed][arm]["flags"].items():
        lines.append(f"\nFLAG {arm} seed {seed} {name}: {message}")
  for title, arm, at in (("at the RL start (the judge-trained model)", "self_judged", "start"),
                         ("after self-judged RL", "self_judged", "final")):
    lines += [f"\n## Best-of-N accuracy {title}\n",
              "| selector | " + " | ".join(f"N={n}" for n in BEST_OF) + " |",
              "|---|" + "---|" * len(BEST_OF)]
    for selector in SELECTORS:
      lines.append(f"| {selector} | " + " | ".join(
          runs.mean_std_cell([results[s][arm][at].get(f"eval/bon{n}_{selector}") for s in seeds])
          for n in BEST_OF) + " |")
  return "\n".join(lines) + "\n"


def _plot(results: dict, seeds: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = (("eval/accuracy", "held-out accuracy (verifier)"),
          ("eval/judge_score", "judge's mean P(True) of samples"),
          ("eval/judge_auroc", "judge AUROC vs verifier"))
  fig, axes = plt.subplots(len(rows), len(seeds), figsize=(4 * len(seeds), 8), squeeze=False)
  for column, seed in enumerate(seeds):
    for arm in ARMS:
      figures = results[seed][arm]
      for row, (key, label) in enumerate(rows):
        values = [np.nan if v is None else v for v in figures["curves"][key]]
        axes[row, column].plot(figures["steps"], values, marker="o", label=arm)
        axes[row, column].set_ylabel(label)
    axes[0, column].set_title(f"seed {seed}")
    axes[-1, column].set_xlabel("RL step")
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  seeds = list(_SEEDS.value)
  with concurrent.futures.ThreadPoolExecutor(max(_PARALLEL.value, 1)) as pool:
    list(pool.map(_run_seed, seeds))
  results = {}
  for seed in seeds:
    base = os.path.join(_WORKDIR.value, f"seed{seed}")
    results[seed] = {arm: _figures(os.path.join(base, arm)) for arm in ARMS}
    results[seed]["judge_training"] = _figures(os.path.join(base, "self_judged", "warm_start"))
  table = _tables(results, seeds)
  runs.write_report(_WORKDIR.value, table, results)
  _plot(results, seeds, os.path.join(_WORKDIR.value, "curves.png"))


if __name__ == "__main__":
  app.run(main)
