"""Input pipeline: JSONL errors, shuffling determinism, epochs, resumable state, sharding, eval padding."""

import json

import numpy as np
import pytest

from selfimprove.data import eval_batches, make_iterator, read_jsonl

RECORDS = [{"id": i, "text": f"record {i}"} for i in range(23)]


def _encode(record):
  return {"id": np.int32(record["id"]), "features": np.full(3, record["id"], np.float32)}


def _iterator(**kwargs):
  kwargs = {"global_batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1} | kwargs
  return make_iterator(RECORDS, _encode, **kwargs)


def _ids(iterator, num_batches):
  return [next(iterator)["id"].tolist() for _ in range(num_batches)]


def test_read_jsonl_maps_fields_and_skips_blank_lines(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"question": "1+1=", "solution": "2", "extra": 0}\n\n'
                  '  \n{"question": "2+3=", "solution": "5"}\n')
  assert read_jsonl(str(path), {"prompt": "question", "answer": "solution"}) == [
      {"prompt": "1+1=", "answer": "2"}, {"prompt": "2+3=", "answer": "5"}]


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "1+1=", "solution": ', "not valid JSON"),
    ('["1+1=", "2"]', "expected a JSON object, got list"),
    ('{"question": "1+1="}', r"missing field 'solution' \(read as 'answer'\); the line has fields \['question'\]"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
  path = tmp_path / "broken.jsonl"
  # The bad line is line 4: a blank line still counts towards the numbering.
  path.write_text('{"question": "a", "solution": "b"}\n\n{"question": "c", "solution": "d"}\n'
                  f"{bad_line}\n")
  with pytest.raises(ValueError, match=rf"^{path}:4: {message}"):
    read_jsonl(str(path), {"prompt": "question", "answer": "solution"})


def test_batches_are_numpy_with_per_process_batch_dim():
  batch = next(_iterator(global_batch_size=6, process_index=1, process_count=2))
  assert set(batch) == {"id", "features"}
  assert batch["id"].shape == (3,) and batch["id"].dtype == np.int32
  assert batch["features"].shape == (3, 3) and batch["features"].dtype == np.float32


def test_same_seed_same_order_different_seed_different_order():
  assert _ids(_iterator(seed=7), 12) == _ids(_iterator(seed=7), 12)
  assert _ids(_iterator(seed=7), 12) != _ids(_iterator(seed=8), 12)
  # Unshuffled keeps record order.
  assert _ids(_iterator(shuffle=False), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_every_record_once_per_epoch_and_reshuffled_each_epoch():
  # 23 records in batches of 1: epoch boundaries fall exactly between rows.
  stream = sum(_ids(_iterator(global_batch_size=1, seed=3), 3 * 23), [])
  epochs = [stream[i * 23:(i + 1) * 23] for i in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(23))
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs[0] != list(range(23))


def test_finite_epochs_drop_the_partial_batch():
  batches = [b["id"].tolist() for b in _iterator(num_epochs=2)]
  assert len(batches) == (2 * 23) // 4     # 46 rows -> 11 full batches, 2 rows dropped
  assert all(len(b) == 4 for b in batches)
  assert sorted(sum(batches[:5], []) + batches[5][:3]) == list(range(23))   # first epoch
  ragged = [b["id"].tolist() for b in _iterator(num_epochs=1, drop_remainder=False)]
  assert [len(b) for b in ragged] == [4] * 5 + [3] and sorted(sum(ragged, [])) == list(range(23))


def test_resume_from_state_continues_identically():
  iterator = _iterator(seed=5)
  _ids(iterator, 7)                             # crosses an epoch boundary (28 rows > 23)
  state = iterator.get_state()
  expected = _ids(iterator, 10)
  # Same object, restored in place.
  iterator.set_state(state)
  assert _ids(iterator, 10) == expected
  # A fresh pipeline restored from a JSON round trip of the state (as a checkpoint would).
  restored = _iterator(seed=5)
  restored.set_state(json.loads(json.dumps(state)))
  assert _ids(restored, 10) == expected
  # A state from the very start replays everything.
  fresh = _iterator(seed=5)
  start = fresh.get_state()
  first = _ids(fresh, 3)
  fresh.set_state(start)
  assert _ids(fresh, 3) == first


def test_per_process_shards_are_disjoint_halves_of_each_global_batch():
  global_batches = _ids(_iterator(global_batch_size=8, seed=2), 9)
  shard_0 = _ids(_iterator(global_batch_size=8, seed=2, process_index=0, process_count=2), 9)
  shard_1 = _ids(_iterator(global_batch_size=8, seed=2, process_index=1, process_count=2), 9)
  for whole, half_0, half_1 in zip(global_batches, shard_0, shard_1):
    assert len(half_0) == len(half_1) == 4
    # Disjoint positions of the stream whose union is the global batch (ids can repeat
    # across an epoch boundary, so compare as multisets).
    assert sorted(half_0 + half_1) == sorted(whole)
  # Within one epoch (the first 23 rows) the two processes never see the same record.
  first_epoch_0 = set(sum(shard_0[:2], []))
  first_epoch_1 = set(sum(shard_1[:2], []))
  assert not first_epoch_0 & first_epoch_1


def test_finite_epochs_give_every_process_the_same_number_of_batches():
  # 23 rows, global batch 4 over 2 processes: 5 full global batches; the 3 extra rows
  # would give process 0 a sixth local batch if the partial global batch were not dropped.
  counts = [len(list(_iterator(num_epochs=1, process_index=p, process_count=2))) for p in (0, 1)]
  assert counts == [5, 5]


def test_argument_errors_name_the_numbers():
  with pytest.raises(ValueError, match="global_batch_size=6 .* process_count=4"):
    _iterator(global_batch_size=6, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index=2 must be in \\[0, process_count=2\\)"):
    _iterator(process_index=2, process_count=2)
  with pytest.raises(ValueError, match="23 records x 1 epochs .* global batch of 32"):
    _iterator(global_batch_size=32, num_epochs=1)
  with pytest.raises(ValueError, match="no records"):
    make_iterator([], _encode, global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_encode_failure_names_the_record():
  def encode(record):
    if record["id"] == 3:
      raise KeyError("answer")
    return _encode(record)
  with pytest.raises(ValueError, match="Encoding record 3 .*KeyError"):
    _ids(make_iterator(RECORDS, encode, global_batch_size=4, seed=0, shuffle=False,
                       process_index=0, process_count=1), 1)


def test_eval_batches_pad_the_last_batch_and_mark_valid_rows():
  batches = eval_batches(RECORDS, _encode, batch_size=10)
  assert len(batches) == 3
  assert [b["id"].tolist() for b in batches[:2]] == [list(range(10)), list(range(10, 20))]
  last = batches[2]
  assert last["id"].tolist() == [20, 21, 22] + [22] * 7
  assert last["features"].shape == (10, 3)
  assert last["valid"].tolist() == [True] * 3 + [False] * 7
  assert all(b["valid"].all() for b in batches[:2])
  assert eval_batches(RECORDS[:10], _encode, batch_size=5)[1]["valid"].all()
