"""Judge training: the step's judge and task losses against a hand computation from separate
forward passes on the rendered judge text, one compile, the judge learns, evaluation measures it,
config errors name the field."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfimprove import judging
from selfimprove.pipelines import judge_training
from selfimprove.sampling import sample
from selfimprove.train_state import TrainState
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.helpers import arithmetic_task, real_tokens, run_pieces, tiny_model
from tests.pipelines.test_rl import parity_verifier

JUDGE = dict(template="{problem}{candidate}=", yes="1", no="0")


def make_pipeline(task, optimizer=None, **settings):
  pieces = run_pieces(task, InGraphVerifier(parity_verifier), optimizer)
  defaults = dict(JUDGE, num_candidates=4, judge_eval=dict(num_candidates=4, best_of=(1, 4)))
  return judge_training.build(pieces, {**defaults, **settings})


def make_state(pipeline, params):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pipeline.optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), extra={},
                    skipped_updates=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.sum(np.exp(x - x.max())))


@pytest.mark.parametrize("task_weight, judge_weight", [(1.0, 0.5), (0.0, 1.0)])
def test_losses_by_hand_from_the_rendered_judge_text(task_weight, judge_weight):
  task = arithmetic_task()
  pipeline = make_pipeline(task, task_weight=task_weight, judge_weight=judge_weight)
  _, params = tiny_model()
  batch, key = task.generate(jax.random.key(3), 3), jax.random.key(5)
  _, metrics = jax.jit(pipeline.step)(make_state(pipeline, params), batch, key)
  metrics = jax.device_get(metrics)

  model = nnx.merge(pipeline.graphdef, params)
  rollout = jax.device_get(sample(model, batch["prompt_tokens"], batch["prompt_mask"], key,
                                  pipeline.sampling))
  assert rollout.tokens.shape[0] == 3 * 4
  tokenizer, encoder = task.tokenizer, run_pieces(task).encoder
  template = judging.JudgeTemplate(JUDGE["template"], JUDGE["yes"], JUDGE["no"])
  (yes,), (no,) = template.answer_ids(encoder)
  judge_losses, right, labels = [], [], []
  for row in range(rollout.tokens.shape[0]):
    completion = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    label = float(completion[0] % 2 == 0)                   # the parity verifier, by hand
    problem = tokenizer.decode(real_tokens(rollout.prompt_tokens[row], rollout.prompt_mask[row]))
    candidate = tokenizer.decode([t for t in completion if t != tokenizer.eos_id])
    ids = encoder.prompt_ids(template.render(problem=problem, candidate=candidate))
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    logp = _log_softmax(logits[0, -1])
    z = logp[yes] - logp[no]
    judge_losses.append(-label * np.log(1 / (1 + np.exp(-z))) -
                        (1 - label) * np.log(1 - 1 / (1 + np.exp(-z))))
    right.append(float((z > 0) == (label > 0.5)))
    labels.append(label)
  assert 0 < np.mean(labels) < 1                           # both classes in the batch
  # The task term: next-token cross-entropy of the reference answers after each prompt.
  task_losses = []
  for row in range(3):
    prompt = real_tokens(batch["prompt_tokens"][row], batch["prompt_mask"][row])
    answer = real_tokens(batch["answer_tokens"][row], batch["answer_mask"][row])
    ids = prompt + answer
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    for i, target in enumerate(answer):
      task_losses.append(-_log_softmax(logits[0, len(prompt) - 1 + i])[target])
  assert metrics["train/judge_loss"] == pytest.approx(np.mean(judge_losses), rel=1e-4)
  assert metrics["train/task_loss"] == pytest.approx(np.mean(task_losses), rel=1e-4)
  assert metrics["train/loss"] == pytest.approx(
      task_weight * np.mean(task_losses) + judge_weight * np.mean(judge_losses), rel=1e-4)
  assert metrics["train/sample_accuracy"] == pytest.approx(np.mean(labels))
  assert metrics["train/judge_accuracy"] == pytest.approx(np.mean(right))


def test_the_step_compiles_once_and_the_judge_learns():
  """The parity of the candidate's first token is in the judge prompt: after 80 steps the judge
  beats the best constant guess (the labels' entropy) by a clear margin."""
  task = arithmetic_task()
  pipeline = make_pipeline(task, optax.adam(3e-3), task_weight=0.0, num_candidates=8)
  _, params = tiny_model()
  state, step = make_state(pipeline, params), jax.jit(pipeline.step)
  losses, entropies = [], []
  for i in range(80):
    batch = task.generate(jax.random.fold_in(jax.random.key(1), i), 8)
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(2), i))
    rate = float(metrics["train/sample_accuracy"])
    losses.append(float(metrics["train/judge_loss"]))
    entropies.append(-sum(p * np.log(p) for p in (rate, 1 - rate) if p > 0))
  assert step._cache_size() == 1
  assert np.mean(losses[-20:]) < 0.85 * np.mean(entropies[-20:]), (losses, entropies)
  assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:5])


def test_evaluate_measures_the_judge():
  task = arithmetic_task()
  pipeline = make_pipeline(task)
  _, params = tiny_model()
  batch = task.generate(jax.random.key(0), 4)
  values = jax.device_get(jax.jit(pipeline.evaluate)(params, batch, jax.random.key(1)))
  assert set(values) == set(pipeline.eval_metric_names)
  assert values["judge_p_true"].shape == (4, 4) and values["accuracy"].shape == (4,)
  summary = pipeline.summarize_eval({k: np.asarray(v) for k, v in values.items()})
  for name in ("accuracy", "judge_auroc", "judge_ece", "judge_score", "sample_accuracy",
               "bon4_p_true", "bon4_oracle"):
    assert name in summary, name
  assert summary["judge_score"] == pytest.approx(np.mean(values["judge_p_true"]))
  assert summary["sample_accuracy"] == pytest.approx(np.mean(values["judge_correct"]))
  # The judge measured is this section's (template defaults flow into judge_eval).
  assert pipeline.config.judge_eval.template == JUDGE["template"]
  assert pipeline.config.judge_eval.section == "judge_training.judge_eval"


@pytest.mark.parametrize("field, value", [("num_candidates", 0), ("temperature", 0.0),
                                          ("judge_weight", 0.0), ("task_weight", -1.0),
                                          ("max_new_tokens", -1)])
def test_config_errors_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"judge_training.{field}="):
    judge_training.JudgeTrainingConfig(**{field: value})


def test_a_template_without_its_fields_is_named():
  with pytest.raises(ValueError, match="judge_training.template"):
    make_pipeline(arithmetic_task(), template="{candidate} is right?")
