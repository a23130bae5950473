"""seqio task: prompts/answers through the adapter equal seqio's own reading and the source text.

The tests that need seqio (the `seqio` extra, which pulls TensorFlow) skip without it; the config
and missing-package tests run everywhere. The seqio Tasks are registered here from in-memory
FunctionDataSources, so nothing is downloaded.
"""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from configs.sft_seqio import get_config
from selfimprove.config_checks import ConfigError
from selfimprove.run_setup import build_task
from selfimprove.tasks import get_task_entry
from selfimprove.tasks.seqio_task import SeqioTask, SeqioTaskConfig

PREFIX = "selfimprove_test_"
TEXT = {   # a tokenized task: its prompts come from inputs_pretokenized
    "train": (["What is 12 plus 34?", "Capital of France?", "Übersetze: ünï ☃", "  spaces  "],
              ["46", "Paris", "uni ☃", "x"]),
    "validation": (["What is 2 plus 2?", "Colour of the sky?"], ["4", "blue"]),
}
TEXT2 = {"train": (["Second task, first prompt", "Second task, second prompt"], ["a", "b"])}
PLAIN = {   # an untokenized task: inputs / targets stay text, "id" a number
    "train": (["plain one", "plain two", "plain three"], ["1", "2", "3"]),
    "validation": ([], []),
}


@pytest.fixture(scope="module")
def seqio():
  """seqio with the test Tasks and Mixture registered (removed again at the end)."""
  seqio = pytest.importorskip("seqio")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def dataset_fn(split, shuffle_files, seed=None, data=None, with_id=False):
    del shuffle_files, seed
    prompts, answers = data[split]
    features = {"question": tf.constant(prompts, tf.string),
                "answer": tf.constant(answers, tf.string)}
    if with_id:
      features["id"] = tf.range(len(prompts), dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices(features)

  rekey = functools.partial(seqio.preprocessors.rekey,
                            key_map={"inputs": "question", "targets": "answer"})
  tokenized = {k: seqio.Feature(seqio.ByteVocabulary()) for k in ("inputs", "targets")}
  text = {k: seqio.Feature(seqio.PassThroughVocabulary(size=0), dtype=tf.string, rank=0)
          for k in ("inputs", "targets")}

  def rename_only(ds):   # keeps "id"
    return ds.map(lambda ex: {"inputs": ex["question"], "targets": ex["answer"], "id": ex["id"]})

  def add(name, data, preprocessors, features, with_id=False):
    source = seqio.FunctionDataSource(
        functools.partial(dataset_fn, data=data, with_id=with_id), splits=list(data))
    seqio.TaskRegistry.add(PREFIX + name, source=source, preprocessors=preprocessors,
                           output_features=features)

  add("text", TEXT, [rekey, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      tokenized)
  add("text2", TEXT2, [rekey, seqio.preprocessors.tokenize], tokenized)
  add("plain", PLAIN, [rename_only], text, with_id=True)
  add("ids_only", TEXT, [rekey, functools.partial(seqio.preprocessors.tokenize,
                                                  copy_pretokenized=False)], tokenized)
  seqio.MixtureRegistry.add(PREFIX + "mix", [PREFIX + "text2", PREFIX + "text"],
                            default_rate=1.0)
  yield seqio
  seqio.MixtureRegistry.remove(PREFIX + "mix")
  for name in ("text", "text2", "plain", "ids_only"):
    seqio.TaskRegistry.remove(PREFIX + name)


def _task(name, **fields):
  return SeqioTask(SeqioTaskConfig(seqio_name=PREFIX + name, **fields))


def _read_directly(seqio, name, split, feature):
  """The texts of `feature` as seqio itself gives them (the reference)."""
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                   shuffle=False, num_epochs=1)
  return [ex[feature].decode("utf-8") for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("ours, theirs", [("train", "train"), ("eval", "validation")])
def test_task_gives_seqio_prompts_and_answers(seqio, ours, theirs):
  examples = _task("text").examples(ours)
  name = PREFIX + "text"
  assert [e["prompt"] for e in examples] == _read_directly(seqio, name, theirs,
                                                           "inputs_pretokenized")
  assert [e["answer"] for e in examples] == _read_directly(seqio, name, theirs,
                                                           "targets_pretokenized")
  assert ([e["prompt"] for e in examples], [e["answer"] for e in examples]) == (
      list(TEXT[theirs][0]), list(TEXT[theirs][1]))
  assert examples[0]["source"] == f"seqio:{name}:{theirs}:0"
  assert examples[0]["seqio_task"] == name


def test_untokenized_task_keeps_text_and_other_features(seqio):
  examples = _task("plain").examples("train")
  assert [e["prompt"] for e in examples] == _read_directly(seqio, PREFIX + "plain", "train",
                                                           "inputs")
  assert [e["answer"] for e in examples] == list(PLAIN["train"][1])
  assert [e["id"] for e in examples] == [0, 1, 2]


def test_mixture_gives_each_task_once_in_its_order(seqio):
  task = _task("mix")
  train = task.examples("train")
  expected = (_read_directly(seqio, PREFIX + "text", "train", "inputs_pretokenized")
              + _read_directly(seqio, PREFIX + "text2", "train", "inputs_pretokenized"))
  assert [t.name for t in seqio.get_mixture_or_task(PREFIX + "mix").tasks] == [
      PREFIX + "text", PREFIX + "text2"]
  assert [e["prompt"] for e in train] == expected
  assert [e["seqio_task"] for e in train] == [PREFIX + "text"] * 4 + [PREFIX + "text2"] * 2
  # text2 has no validation split: the mixture's eval examples are text's alone.
  assert [e["answer"] for e in task.examples("eval")] == list(TEXT["validation"][1])


def test_max_examples_and_verifier(seqio):
  task = _task("text", max_examples_per_split=2, verifier="exact_match", seed=3)
  examples = task.examples("train")
  assert [e["prompt"] for e in examples] == list(TEXT["train"][0][:2])
  assert task.host_verifier("Paris.", examples[1]) == 1.0
  assert task.host_verifier("Lyon", examples[1]) == 0.0
  assert task.example_arrays(examples[0]) == {} and task.in_graph_verifier(None) is None


def test_seqio_modules_are_imported_first(seqio, tmp_path, monkeypatch):
  (tmp_path / "my_seqio_tasks.py").write_text(textwrap.dedent(f"""
      import seqio
      import tensorflow as tf
      def _fn(split, shuffle_files):
        return tf.data.Dataset.from_tensor_slices(
            {{"inputs": ["from module"], "targets": ["ok"]}})
      _text = seqio.Feature(seqio.PassThroughVocabulary(size=0), dtype=tf.string, rank=0)
      seqio.TaskRegistry.add("{PREFIX}module", source=seqio.FunctionDataSource(_fn, ["train"]),
                             preprocessors=[], output_features={{"inputs": _text, "targets": _text}})
  """))
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    task = _task("module", seqio_modules="my_seqio_tasks", eval_split="train")
    assert [(e["prompt"], e["answer"]) for e in task.examples("eval")] == [("from module", "ok")]
  finally:
    seqio.TaskRegistry.remove(PREFIX + "module")
    sys.modules.pop("my_seqio_tasks", None)


def test_build_task_from_the_config_file(seqio):
  config = get_config("test")
  config.task.seqio_name = PREFIX + "text"
  examples = build_task(config).examples("eval")
  assert [e["prompt"] for e in examples] == list(TEXT["validation"][0])


@pytest.mark.parametrize("name, fields, message", [
    ("missing", {}, "seqio_name='selfimprove_test_missing': no seqio Task or Mixture"),
    ("text", {"seqio_modules": ("no_such_module_xyz",)},
     "seqio_modules: cannot import 'no_such_module_xyz'"),
])
def test_lookup_errors_name_the_field(seqio, name, fields, message):
  with pytest.raises(ValueError, match=message):
    _task(name, **fields)


@pytest.mark.parametrize("name, fields, split, message", [
    ("text", {"prompt_feature": "question"}, "train",
     r"prompt_feature='question': seqio task 'selfimprove_test_text' \(split 'train'\) has no "
     r"feature 'question'; its features are \["),
    ("text", {"answer_feature": "label"}, "eval", r"answer_feature='label': .* no feature"),
    ("ids_only", {}, "train", r"prompt_feature='inputs': .* holds feature 'inputs' as int32 .* "
     r"keeps no 'inputs_pretokenized'"),
    ("text", {"eval_split": "test"}, "eval",
     r"eval_split='test': seqio task 'selfimprove_test_text' has no such split; its splits are "
     r"\['train', 'validation'\]"),
    ("mix", {"eval_split": "test"}, "eval",
     r"eval_split='test': no task of seqio mixture 'selfimprove_test_mix' has that split"),
    ("plain", {}, "eval",
     r"eval_split='validation': seqio 'selfimprove_test_plain' gave no examples"),
])
def test_data_errors_name_the_field_and_the_seqio_name(seqio, name, fields, split, message):
  with pytest.raises(ValueError, match=message):
    _task(name, **fields).examples(split)


# ---- without seqio ------------------------------------------------------------------------


def test_registered_and_imported_lazily():
  assert get_task_entry("seqio").config_class is SeqioTaskConfig
  code = ("import sys, selfimprove.tasks, selfimprove.run_setup; "
          "print(sorted(m for m in ('seqio', 'tensorflow') if m in sys.modules))")
  root = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
  assert out.stdout.strip() == "[]"


def test_missing_seqio_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "seqio", None)   # `import seqio` now raises ImportError
  with pytest.raises(ImportError, match=r"needs the seqio package .*pip install '\.\[seqio\]'"):
    SeqioTask(SeqioTaskConfig(seqio_name="anything"))


@pytest.mark.parametrize("fields, message", [
    ({}, "seqio_name='': must be a non-empty string naming a registered seqio Task or Mixture"),
    ({"seqio_name": "t", "prompt_feature": ""}, "prompt_feature='': must be a non-empty string"),
    ({"seqio_name": "t", "eval_split": None}, "eval_split=None"),
    ({"seqio_name": "t", "seqio_modules": [1]}, r"seqio_modules=\[1\]: must be a list"),
    ({"seqio_name": "t", "max_examples_per_split": -1}, "max_examples_per_split=-1"),
    ({"seqio_name": "t", "seed": "0"}, "seed='0': must be an int or None"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    SeqioTaskConfig(**fields)


def test_config_file_and_comma_separated_modules(monkeypatch):
  assert SeqioTaskConfig(seqio_name="t", seqio_modules=" a.b, c ").seqio_modules == ("a.b", "c")
  assert SeqioTaskConfig(seqio_name="t").seqio_modules == ()
  config = get_config("test")
  with pytest.raises(ConfigError, match=r"config.task \(name='seqio'\): seqio_name=''"):
    build_task(config)
  monkeypatch.setitem(sys.modules, "seqio", None)
  config.task.seqio_name = "t"   # an existing field: allowed on the locked config
  with pytest.raises(ImportError, match=r"pip install '\.\[seqio\]'"):
    build_task(config)
