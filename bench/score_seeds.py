"""SCoRe vs the paper's baselines and ablations over seeds: runs (or resumes) every run, then
prints the table and draws the curves.

    python bench/score_seeds.py --workdir=/tmp/score_seeds --seeds=0,1,2

For each seed s: the one-command SCoRe run in DIR/seed{s}/score (which first
trains the config's `warm_start` section with seed s in DIR/seed{s}/score/warm_start),
then each other method from those same warm-start parameters (`--config.init_from`)
in DIR/seed{s}/<mode> (`--config.score.mode`, see --modes). Every run is
`launch/train.py` with the flags printed before it starts, so each can be repeated
by hand; finished runs are skipped, and an interrupted one resumes. The table reads
each run's step-0 eval (the warm start) and final eval from its metrics.jsonl
(greedy attempts, as logged during training) and adds the same figures with both
attempts sampled at --sampled_temperature (one fixed key per seed): mean +- sample
std over seeds, then every seed's value. It is printed and written to
DIR/table.md and DIR/table.json; eval/delta and eval/acc_t2 at every eval step
of every method are drawn in DIR/curves.png (one column per seed).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import runs  # noqa: E402

MODES = ("score", "multiturn_rl_baseline", "offline_star_baseline", "online_star_baseline",
         "pair_sft_baseline", "score_without_stage1", "score_without_shaping")
FIGURES = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "changed")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of all runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed of both stages).")
_CONFIG = flags.DEFINE_string("config", "configs/score_arithmetic.py:tiny", "Config[:preset].")
_EXTRA = flags.DEFINE_multi_string("override", [], "Extra --config.x=y flags for every SCoRe run.")
_MODES = flags.DEFINE_list("modes", list(MODES), "config.score.mode of the runs; score first.")
_SAMPLED_TEMPERATURE = flags.DEFINE_float(
    "sampled_temperature", 1.0, "Also evaluate every final model with both attempts sampled at "
    "this temperature (0 = skip); the paper reports greedy and sampled figures.")
flags.mark_flag_as_required("workdir")


def _train(workdir: str, *overrides: str) -> None:
  runs.train(_CONFIG.value, workdir, *overrides)


def _eval_rows(workdir: str) -> list[dict]:
  """Every eval row of a finished run, from step 0 (the starting model) to the last."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in rows if "eval/acc_t1" in r]
  if not evals or evals[0]["step"] != 0:
    raise ValueError(f"{workdir}/metrics.jsonl has no step-0 eval (train.eval_at_start).")
  return evals


def _sampled_eval(run: str, seed: int, mode: str, config_run: str | None = None
                  ) -> dict[str, float]:
  """The held-out figures of RUN/params with both attempts sampled, under the SCoRe config that
  CONFIG_RUN (default RUN) was launched with (its config.json); cached in
  RUN/sampled_eval_t<temperature>.json (computed once per run)."""
  cache = os.path.join(run, f"sampled_eval_t{_SAMPLED_TEMPERATURE.value:g}.json")
  if os.path.exists(cache):
    with open(cache) as f:
      return json.load(f)
  figures = _compute_sampled_eval(run, seed, mode, config_run or run)
  with open(cache, "w") as f:
    json.dump(figures, f)
  return figures


def _compute_sampled_eval(run: str, seed: int, mode: str, config_run: str) -> dict[str, float]:
  import jax
  import ml_collections
  from flax import nnx

  from selfimprove.evaluation import evaluate
  from selfimprove.models.orbax_params import load_orbax_params
  from selfimprove.run import build_run

  with open(os.path.join(config_run, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.score.update(dict(mode=mode, eval_greedy=False,
                           eval_temperature=_SAMPLED_TEMPERATURE.value))
  config.init_from = os.path.join(run, "params")
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  built = build_run(config)
  _, _, params = load_orbax_params(config.init_from, built.mesh, built.rules)
  with jax.set_mesh(built.mesh):
    return evaluate(jax.jit(built.pipeline.evaluate), built.pipeline, nnx.to_pure_dict(params),
                    built.eval_batches, built.mesh, built.rules, jax.random.key(1000 + seed))


def _cell(values: list[float]) -> str:
  values = np.asarray(values) * 100
  spread = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
  return f"{values.mean():.1f}{spread} ({', '.join(f'{v:.1f}' for v in values)})"


def _plot(trajectories: dict, seeds: list[int], path: str) -> None:
  """eval/delta (top row) and eval/acc_t2 (bottom row) against step, one column per seed."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(4.2 * len(seeds), 7.5))
  FigureCanvasAgg(figure)
  axes = figure.subplots(2, len(seeds), squeeze=False, sharex=True)
  for row, (name, by_mode) in enumerate(trajectories.items()):
    for column, seed in enumerate(seeds):
      axis = axes[row][column]
      for mode, by_seed in by_mode.items():
        steps = sorted(by_seed[seed])
        axis.plot(steps, [by_seed[seed][step] * 100 for step in steps], marker="o",
                  markersize=3, linewidth=2.5 if mode == "score" else 1.2, label=mode)
      if name == "delta":
        axis.axhline(0, color="black", linewidth=0.8)
      axis.set_title(f"seed {seed}", fontsize=9)
      axis.set_ylabel(f"greedy eval/{name} (%)")
      axis.grid(alpha=0.3)
      if row == 1:
        axis.set_xlabel("training step")
  axes[0][0].legend(fontsize=7)
  figure.suptitle("held-out figures at every evaluation (step 0: the warm start)", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  modes = tuple(_MODES.value)
  if modes[0] != "score":
    raise app.UsageError("--modes must start with score (its run trains the warm start).")
  methods = ("warm start",) + modes
  if _SAMPLED_TEMPERATURE.value > 0:
    methods += tuple(f"{method}, sampled" for method in methods)
  results: dict[str, dict[int, dict]] = {method: {} for method in methods}
  trajectories: dict[str, dict[str, dict[int, dict[int, float]]]] = {"delta": {}, "acc_t2": {}}
  for seed in seeds:
    seed_dir = os.path.join(_WORKDIR.value, f"seed{seed}")
    # SCoRe first: the one-command demo, which trains the warm start in score/warm_start.
    warm = os.path.join(seed_dir, "score", "warm_start", "params")
    for mode in modes:
      run = os.path.join(seed_dir, mode)
      if not runs.finished(run):
        start = ([f"--config.warm_start.seed={seed}"] if mode == "score" else
                 [f"--config.init_from={warm}"])
        _train(run, f"--config.seed={seed}", *start, f"--config.score.mode={mode}", *_EXTRA.value)
      evals = _eval_rows(run)
      results["warm start"][seed], results[mode][seed] = evals[0], evals[-1]
      for figure, by_mode in trajectories.items():
        by_mode.setdefault(mode, {})[seed] = {r["step"]: r[f"eval/{figure}"] for r in evals}
      if _SAMPLED_TEMPERATURE.value > 0:
        results[f"{mode}, sampled"][seed] = _sampled_eval(run, seed, mode)
        if mode == "score":
          results["warm start, sampled"][seed] = _sampled_eval(os.path.dirname(warm), seed, mode,
                                                               config_run=run)

  header = "| method | " + " | ".join(f"{f} (%)" for f in FIGURES) + " |"
  lines = [header, "|" + "---|" * (len(FIGURES) + 1)]
  for method, by_seed in results.items():
    cells = [_cell([by_seed[s][f"eval/{f}"] for s in seeds]) for f in FIGURES]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  # Greedy figures at every eval step (SCoRe's Stage I ends at config.score.stage1_steps).
  steps = sorted(trajectories["delta"]["score"][seeds[0]])
  for figure, by_mode in trajectories.items():
    lines += ["", f"| eval/{figure} (%) at step | " + " | ".join(map(str, steps)) + " |",
              "|" + "---|" * (len(steps) + 1)]
    for mode, by_seed in by_mode.items():
      lines.append(f"| {mode} | " + " | ".join(_cell([by_seed[s][step] for s in seeds])
                                              for step in steps) + " |")
  _plot(trajectories, seeds, os.path.join(_WORKDIR.value, "curves.png"))
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(_WORKDIR.value, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(_WORKDIR.value, "table.json"), "w") as f:
    json.dump({m: {str(s): r for s, r in v.items()} for m, v in results.items()}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
