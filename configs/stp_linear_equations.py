"""STP (conjecturer-prover self-play) on step-checked linear-equation proofs: warm start, then STP.

    python launch/train.py --config=configs/stp_linear_equations.py:tiny --workdir=/tmp/stp

One command runs both stages: the `warm_start` section (a whole SFT run config) trains
the model in DIR/warm_start on the task's warm-start set only: the seed statements (3-4
terms) with their reference proofs, and conjecturing examples (seed statement and proof
-> another seed statement); the training statements (3-5 terms, no proofs) are never
shown with a proof. STP then starts from its parameters (`init_from`) and logs
eval/pass_at_1, eval/pass_at_k (held-out, k = stp.eval_samples), train/proved_fraction
(the cumulative share of training statements proved), train/generated_proofs and the
conjecture shares (conjecture/well_formed, new, barely_provable, accepted, distinct,
difficulty, pool_size). Relaunching resumes either stage.

Expert iteration, the paper's baseline, is `--config.stp.mode=expert_iteration`: the same
prover samples per step, all on unproved training statements, no conjectures. A warm start
already trained (e.g. by an STP run) is reused with `--config.init_from=DIR/warm_start/params`.

Presets: `tiny` (the demo; docs/results/stp.md); `test` (a 2-layer model, a few steps).
Settings were chosen on task seed 1 (`--config.task.seed=1 --config.warm_start.task.seed=1`);
the results page reports task seed 0.
"""

import ml_collections

from configs.sft_arithmetic import get_config as get_sft_config

# The proof domain: statements of 3-5 terms over two sides, coefficients and solutions up to 5;
# seeds have 3-4 terms (8192 of them, with proofs), the training and held-out statements 3-5
# (weights 1:2:3). The warm start essentially never proves a 5-term statement (pass@8 = 0 for
# all but a handful: docs/results/stp.md), so expert iteration gets no signal from them.
TASK = dict(name="linear_equations", min_terms=3, max_terms=5, max_terms_per_side=3,
            max_coefficient=5, max_solution=5, max_proof_steps=10, max_statement_len=0,
            max_proof_len=64, num_seed=8192, num_train=2048, num_eval=256, seed_max_terms=4,
            conjecture_examples_per_seed=1, seed=0)
TEST_TASK = dict(TASK, num_seed=64, num_train=128, num_eval=32)


def _model(config: ml_collections.ConfigDict, arg: str) -> None:
  config.model.vocab_size = 32          # the task's 16 symbols with pad/bos/eos
  if arg == "tiny":
    config.model.update(dict(embed_dim=128, mlp_dim=512, num_layers=4, num_heads=4,
                             num_kv_heads=4, head_dim=32))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "test"):
    raise ValueError(f"configs/stp_linear_equations.py: unknown preset {arg!r}; use 'tiny' or "
                     f"'test'.")
  task = TASK if arg == "tiny" else TEST_TASK

  warm_start = get_sft_config(arg).unlock()
  warm_start.task = ml_collections.ConfigDict(task)
  _model(warm_start, arg)
  warm_start.data.train_examples = "warm_start"   # seeds' proofs + conjecturing examples
  if arg == "tiny":
    warm_start.optimizer.update(dict(learning_rate=3e-3, warmup_steps=50))
    warm_start.train.update(dict(num_steps=500, global_batch_size=64, steps_per_call=20,
                                 log_every=100, eval_every=500, checkpoint_every=100))
    warm_start.eval.num_examples = 256

  config = get_sft_config(arg).unlock()
  config.task = ml_collections.ConfigDict(task)
  _model(config, arg)
  config.warm_start = warm_start.lock()
  config.pipeline = "stp"
  config.stp = ml_collections.ConfigDict(dict(
      mode="stp", conjectures_per_step=16, statements_per_step=16, proofs_per_statement=8,
      conjecture_max_pass_rate=0.25, seed_min_pass_rate=0.35, prover_max_pass_rate=0.5,
      proof_length_coef=0.001, elegance_drop_fraction=0.2, matching_cap=4.0,
      matching_targets=64, reinclude_proved=0.05, temperature=1.0, distinct_proofs=True,
      novelty_table_size=8192, replay_table_size=65536, accepted_pool_size=256,
      eval_samples=8, verifier="in_graph"))
  config.train.eval_at_start = True
  # STP draws its statements from its own tables in the step and does not read the trainer's
  # rows; a small batch keeps the input pipeline idle (a multiple of the data-parallel devices).
  config.train.global_batch_size = 8
  if arg == "tiny":
    # A small rate: each step trains on the few proofs it verified (the official round trains
    # on a whole round's data at 5e-5, batch 2048); 1e-4 lost held-out pass rate on the tuning
    # split for both methods.
    config.optimizer.update(dict(learning_rate=3e-5, warmup_steps=0, decay="constant",
                                 weight_decay=0.0, b2=0.95, eps=1e-5))
    config.train.update(dict(num_steps=200, steps_per_call=5, log_every=5, eval_every=50,
                             checkpoint_every=50))
    config.eval.update(dict(batch_size=64, num_examples=256))
  else:
    config.stp.update(dict(conjectures_per_step=4, statements_per_step=4, proofs_per_statement=4,
                           matching_targets=8, novelty_table_size=64, replay_table_size=256,
                           accepted_pool_size=8, eval_samples=2))
    config.train.update(dict(num_steps=4, steps_per_call=2, log_every=2, eval_every=4,
                             checkpoint_every=2))
    config.eval.update(dict(batch_size=8, num_examples=8))
  return config.lock()
