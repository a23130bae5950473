"""STP vs expert iteration over seeds: runs (or resumes) every run, then prints the table and
draws the curves.

    python bench/stp_seeds.py --workdir=/tmp/stp_seeds --seeds=0,1,2

For each seed s: the one-command STP run in DIR/seed{s}/stp (which first trains the
config's `warm_start` section with seed s in DIR/seed{s}/stp/warm_start), then expert
iteration from those same warm-start parameters (`--config.init_from`,
`--config.stp.mode=expert_iteration`) in DIR/seed{s}/expert_iteration. Every run is
`launch/train.py` with the flags printed before it starts; finished runs are skipped and an
interrupted one resumes. --parallel runs the seeds side by side (one process per seed; on
a GPU they share the device).

The table (DIR/table.md, DIR/table.json) gives, per method, the warm start's and the final
held-out eval/pass_at_1 and eval/pass_at_k and the final train/proved_fraction: mean +-
sample std over seeds, then each seed's value, and whether STP beats expert iteration at
every seed. DIR/curves.png draws proved fraction and held-out pass@1 against the number of
generated proofs (one column per seed); DIR/conjectures.md lists accepted conjectures of
each seed's final state.
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

METHODS = ("stp", "expert_iteration")
FIGURES = ("eval/pass_at_1", "eval/pass_at_k", "train/proved_fraction")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of all runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed of both stages).")
_CONFIG = flags.DEFINE_string("config", "configs/stp_linear_equations.py:tiny", "Config[:preset].")
_EXTRA = flags.DEFINE_multi_string("override", [], "Extra --config.x=y flags for every run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Seeds run at the same time.")
_REPORT_STEPS = flags.DEFINE_list("report_steps", [], "Also tabulate the figures at these steps "
                                  "(eval steps), besides the final one.")
flags.mark_flag_as_required("workdir")


def _train(workdir: str, *overrides: str) -> None:
  runs.train(_CONFIG.value, workdir, *overrides, log_path=workdir + ".log")


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _run_seed(seed: str) -> None:
  base = os.path.join(_WORKDIR.value, f"seed{seed}")
  os.makedirs(base, exist_ok=True)
  common = [f"--config.seed={seed}", f"--config.warm_start.seed={seed}", *_EXTRA.value]
  stp_dir = os.path.join(base, "stp")
  if not runs.finished(stp_dir):
    _train(stp_dir, *common)
  ei_dir = os.path.join(base, "expert_iteration")
  if not runs.finished(ei_dir):
    _train(ei_dir, *common, "--config.stp.mode=expert_iteration",
           f"--config.init_from={os.path.join(stp_dir, 'warm_start', 'params')}")


def _figures(workdir: str) -> dict:
  rows = _rows(workdir)
  evals = [r for r in rows if "eval/pass_at_1" in r]
  trains = [r for r in rows if "train/proved_fraction" in r]
  at = lambda step: {**{k: r[k] for r in evals if r["step"] == step for k in FIGURES[:2]},
                     **{k: r[k] for r in trains if r["step"] == step for k in FIGURES[2:]}}
  return {"start": {k: evals[0][k] for k in FIGURES[:2]},
          "final": at(evals[-1]["step"]), "final_step": evals[-1]["step"],
          **{f"step{s}": at(int(s)) for s in _REPORT_STEPS.value},
          "curve": {"generated_proofs": [r["train/generated_proofs"] for r in trains],
                    "proved_fraction": [r["train/proved_fraction"] for r in trains],
                    "eval_steps": [r["step"] for r in evals],
                    "pass_at_1": [r["eval/pass_at_1"] for r in evals]},
          "proofs_per_step": trains[0]["train/generated_proofs"] / trains[0]["step"]}


def _table(results: dict, seeds: list[str], at: str = "final") -> str:
  def cell(values):
    values = 100 * np.asarray(values, float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} +- {std:.1f} ({' / '.join(f'{v:.1f}' for v in values)})"

  step = results[seeds[0]]["stp"]["final_step"] if at == "final" else at[len("step"):]
  lines = [f"At step {step}:\n", "| method | figure | warm start (step 0) | "
           f"step {step} |", "|---|---|---|---|"]
  for method in METHODS:
    for figure in FIGURES:
      start = [results[s][method]["start"].get(figure) for s in seeds]
      final = [results[s][method][at][figure] for s in seeds]
      lines.append(f"| {method} | {figure} | "
                   f"{cell(start) if None not in start else '-'} | {cell(final)} |")
  for figure in FIGURES:
    wins = [results[s]["stp"][at][figure] > results[s]["expert_iteration"][at][figure]
            for s in seeds]
    lines.append(f"\nSTP above expert iteration on {figure} at every seed: {all(wins)} "
                 f"({sum(wins)}/{len(wins)})")
  return "\n".join(lines) + "\n"


def _conjectures(workdir: str, limit: int = 12) -> list[str]:
  """The most recent accepted conjectures in the final checkpoint (text, pass rate, step)."""
  import orbax.checkpoint as ocp
  from selfimprove.tasks.linear_equations_graph import ALPHABET
  from selfimprove.tokenizers import CharTokenizer
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  pool = restored["state"]["extra"]["accepted"]
  tokenizer = CharTokenizer(ALPHABET)
  order = np.argsort(-np.asarray(pool["step"]))
  lines = []
  for i in order[:limit]:
    if pool["step"][i] < 0:
      break
    text = tokenizer.decode([int(t) for t in pool["tokens"][i][:int(pool["len"][i])]])
    lines.append(f"step {int(pool['step'][i])}: `{text}` (pass rate {float(pool['pass_rate'][i]):.3f})")
  return lines


def _plot(results: dict, seeds: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, len(seeds), figsize=(4 * len(seeds), 6), squeeze=False)
  for column, seed in enumerate(seeds):
    for method in METHODS:
      curve = results[seed][method]["curve"]
      axes[0, column].plot(curve["generated_proofs"], curve["proved_fraction"], label=method)
      per_step = results[seed][method]["proofs_per_step"]
      axes[1, column].plot(np.asarray(curve["eval_steps"]) * per_step, curve["pass_at_1"],
                           marker="o", label=method)
    axes[0, column].set_title(f"seed {seed}")
    axes[0, column].set_ylabel("train/proved_fraction")
    axes[1, column].set_ylabel("eval/pass_at_1 (held out)")
    axes[1, column].set_xlabel("generated proofs")
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  seeds = list(_SEEDS.value)
  with concurrent.futures.ThreadPoolExecutor(max(_PARALLEL.value, 1)) as pool:
    list(pool.map(_run_seed, seeds))
  results = {s: {m: _figures(os.path.join(_WORKDIR.value, f"seed{s}", m)) for m in METHODS}
             for s in seeds}
  table = "\n".join(_table(results, seeds, f"step{s}") for s in _REPORT_STEPS.value) + (
      "\n" + _table(results, seeds))
  print(table)
  with open(os.path.join(_WORKDIR.value, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(_WORKDIR.value, "table.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(_WORKDIR.value, "conjectures.md"), "w") as f:
    for seed in seeds:
      f.write(f"## seed {seed}\n\n" + "\n".join(
          f"- {line}" for line in _conjectures(os.path.join(_WORKDIR.value, f"seed{seed}", "stp")))
          + "\n\n")
  _plot(results, seeds, os.path.join(_WORKDIR.value, "curves.png"))


if __name__ == "__main__":
  app.run(main)
