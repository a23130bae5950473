"""The pass-rate distribution of a saved prover over an STP config's training and held-out
statements: how many of them it essentially never proves (pass@K = 0).

    python bench/stp_pass_rates.py --params=DIR/warm_start/params --out=DIR/pass_rates.json

Samples K proofs (the config's stp.proofs_per_statement, at stp.temperature) for every
statement with the same prompts and checks as the STP step, and prints, by number of terms,
the share of statements with pass rate 0, in (0, 0.25), [0.25, 0.5], above 0.5 and the mean
pass rate.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from selfimprove import run_setup  # noqa: E402
from selfimprove.models.orbax_params import load_orbax_params  # noqa: E402
from selfimprove.pipelines.stp import _id_table  # noqa: E402
from selfimprove.pipelines.stp_rows import Piece, text_before_stop  # noqa: E402
from selfimprove.run import build_run  # noqa: E402
from selfimprove.sampling import sample  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/stp_linear_equations.py:tiny")
_PARAMS = flags.DEFINE_string("params", None, "A saved model (a run's DIR/params).")
_OUT = flags.DEFINE_string("out", None, "Write the table as JSON here.")
_BATCH = flags.DEFINE_integer("batch", 64, "Statements per sampling call.")
flags.mark_flag_as_required("params")

BINS = ("zero", "below_0.25", "0.25_to_0.5", "above_0.5")


def pass_rates(pipeline, params, statements: np.ndarray, lengths: np.ndarray, key) -> np.ndarray:
  k = pipeline.config.proofs_per_statement

  @jax.jit
  def rates(params, ids, length, key):
    model = nnx.merge(pipeline.graphdef, params)
    prompt, mask = pipeline._prompts(Piece(ids, length))
    proofs = sample(model, prompt, mask, key, pipeline._sampling(pipeline.proof_width + 1, k))
    text, _ = text_before_stop(proofs.tokens, proofs.completion_mask, pipeline.stop_token_ids)
    statement_mask = jnp.arange(ids.shape[1])[None, :] < length[:, None]
    correct = pipeline.checks.check_proof(jnp.repeat(ids, k, axis=0),
                                          jnp.repeat(statement_mask, k, axis=0),
                                          proofs.tokens, text)
    return jnp.mean(correct.reshape(-1, k), axis=1)

  out, batch = [], _BATCH.value
  for start in range(0, len(statements), batch):
    ids, length = statements[start:start + batch], lengths[start:start + batch]
    pad = batch - len(ids)
    ids = np.concatenate([ids, np.repeat(ids[:1], pad, axis=0)])
    length = np.concatenate([length, np.repeat(length[:1], pad)])
    out.append(np.asarray(rates(params, ids, length, jax.random.fold_in(key, start)))[:batch - pad])
  return np.concatenate(out)


def summarize(rates: np.ndarray, terms: np.ndarray) -> dict:
  table = {}
  for n in sorted(set(terms.tolist())) + ["all"]:
    r = rates if n == "all" else rates[terms == n]
    table[str(n)] = {"statements": int(len(r)), "mean": float(r.mean()),
                     "zero": float(np.mean(r == 0)), "below_0.25": float(np.mean((r > 0) & (r < 0.25))),
                     "0.25_to_0.5": float(np.mean((r >= 0.25) & (r <= 0.5))),
                     "above_0.5": float(np.mean(r > 0.5))}
  return table


def main(argv):
  del argv
  config = _CONFIG.value.unlock()
  config.init_from = ""
  run = build_run(config)
  pipeline, task = run.pipeline, run_setup.build_task(config)
  _, _, loaded = load_orbax_params(_PARAMS.value)
  params = nnx.to_pure_dict(loaded)
  key = jax.random.key(config.seed)
  results = {}
  for split, ids, lengths, examples in (
      ("train", pipeline.tables.train, pipeline.tables.train_len, task.examples("train")),
      ("eval", *_id_table([e["statement"] for e in task.examples("eval")],
                          pipeline.statement_width, run.tokenizer, pipeline.pad_id, "statement"),
       task.examples("eval"))):
    rates = pass_rates(pipeline, params, ids, lengths, jax.random.fold_in(key, len(results)))
    results[split] = summarize(rates, np.asarray([e["num_terms"] for e in examples]))
  lines = [f"K = {pipeline.config.proofs_per_statement} proofs per statement, params "
           f"{_PARAMS.value}", "| split | terms | statements | mean | pass 0 | (0, 0.25) | "
           "[0.25, 0.5] | > 0.5 |", "|---|---|---|---|---|---|---|---|"]
  for split, table in results.items():
    for n, row in table.items():
      lines.append(f"| {split} | {n} | {row['statements']} | {row['mean']:.3f} | "
                   + " | ".join(f"{100 * row[b]:.1f}%" for b in BINS) + " |")
  print("\n".join(lines))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"table": results, "markdown": "\n".join(lines)}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
