"""Batches as a pure function of (seed, step), and length buckets: the smallest bucket that fits the global batch,
the same cut on every process, only bucket shapes ever, only padding removed; data.length_buckets validation."""
import numpy as np
import pytest

from optical_jax import config as config_lib
from optical_jax.data import pipeline
from optical_jax.errors import UserError

LS, LT, D = 16, 24, 4
BUCKETS = (4, 8, 16)
N, BATCH = 96, 8


def _corpus(seed=0):
  """Rows with right-padded masks whose lengths vary widely (short batches exist), as arrays and a load_rows."""
  rng = np.random.default_rng(seed)
  # Mostly short examples, a few long ones: a batch of 8 lands in every bucket over a few dozen steps.
  student_len = np.where(rng.random(N) < 0.85, rng.integers(1, 5, N), rng.integers(5, LS + 1, N))
  teacher_len = np.minimum(student_len + rng.integers(0, 3, N), LT)
  positions_s, positions_t = np.arange(LS)[None], np.arange(LT)[None]
  arrays = {
      "student_ids": np.where(positions_s < student_len[:, None], rng.integers(3, 50, (N, LS)), 0).astype(np.int32),
      "student_mask": (positions_s < student_len[:, None]).astype(np.int32),
      "teacher_mask": (positions_t < teacher_len[:, None]).astype(np.int32),
  }
  arrays["teacher_tokens"] = (rng.normal(size=(N, LT, D)) * arrays["teacher_mask"][..., None]).astype(np.float16)
  arrays["student_weights"] = (rng.random((N, LS)) * arrays["student_mask"]).astype(np.float32)

  def load_rows(indices):
    return {k: v[np.asarray(indices)] for k, v in arrays.items()}
  return arrays, load_rows


def _buckets(arrays):
  return pipeline.LengthBuckets(BUCKETS, pipeline.teacher_buckets(BUCKETS, LS, LT),
                                pipeline.real_lengths(arrays["student_mask"]),
                                pipeline.real_lengths(arrays["teacher_mask"]))


def _stream(load_rows, rows=slice(0, BATCH), buckets=None, seed=3):
  return pipeline.BatchStream(load_rows, N, BATCH, seed, rows, buckets=buckets)


def test_real_lengths_is_one_past_the_last_real_position():
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(pipeline.real_lengths(mask), [2, 0, 3, 4])


def test_teacher_buckets_scale_and_end_at_the_teacher_max():
  assert pipeline.teacher_buckets((4, 8, 16), 16, 24) == (6, 12, 24)
  assert pipeline.teacher_buckets((16, 32, 48), 48, 48) == (16, 32, 48)
  assert pipeline.teacher_buckets((5, 7), 7, 10) == (8, 10)


def test_bucket_is_the_smallest_that_fits_the_global_batch():
  buckets = pipeline.LengthBuckets((4, 8, 16), (6, 12, 24), np.array([3, 4, 5, 16, 1]), np.array([6, 2, 2, 2, 7]))
  assert buckets.pick(np.array([0, 1])) == (4, 6)      # student 4 fits bucket 4 exactly; teacher 6 too
  assert buckets.pick(np.array([0, 2])) == (8, 12)     # student 5 needs 8
  assert buckets.pick(np.array([0, 4])) == (8, 12)     # the teacher side (7 > 6) forces the next bucket
  assert buckets.pick(np.array([3, 1])) == (16, 24)


def test_bucket_matches_the_longest_row_of_every_step():
  arrays, load_rows = _corpus()
  buckets = _buckets(arrays)
  stream = _stream(load_rows, buckets=buckets)
  for step in range(60):
    full = _stream(load_rows).batch(step)
    ls = pipeline.real_lengths(full["student_mask"]).max()
    lt = pipeline.real_lengths(full["teacher_mask"]).max()
    k = min(i for i in range(len(BUCKETS)) if BUCKETS[i] >= ls and buckets.teacher[i] >= lt)
    assert stream.bucket(step) == (BUCKETS[k], buckets.teacher[k])


def test_only_bucket_shapes_and_only_padding_is_cut():
  arrays, load_rows = _corpus()
  buckets = _buckets(arrays)
  trimmed, full = _stream(load_rows, buckets=buckets), _stream(load_rows)
  shapes = set()
  for step in range(60):
    cut, whole = trimmed.batch(step), full.batch(step)
    ls, lt = cut["student_ids"].shape[1], cut["teacher_tokens"].shape[1]
    shapes.add((ls, lt))
    assert set(cut) == set(whole)
    for key, value in whole.items():
      length = ls if key.startswith("student_") else lt
      assert cut[key].shape == (BATCH, length, *value.shape[2:]) and cut[key].flags.c_contiguous
      np.testing.assert_array_equal(cut[key], value[:, :length])  # same examples, same order
      assert not np.any(value[:, length:]), key  # everything cut away was padding
  assert shapes <= set(zip(buckets.student, buckets.teacher))
  assert len(shapes) == len(BUCKETS)  # the corpus is built so that every bucket occurs


def test_one_and_two_processes_see_the_same_cut_batches():
  """Two processes feed the two contiguous halves of each global batch (sharding.process_batch_slice)."""
  arrays, load_rows = _corpus()
  buckets = _buckets(arrays)
  one = _stream(load_rows, buckets=buckets)
  halves = [_stream(load_rows, rows, buckets) for rows in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))]
  for step in range(60):
    whole, parts = one.batch(step), [h.batch(step) for h in halves]
    for key, value in whole.items():
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)


def test_batches_depend_only_on_seed_and_step():
  arrays, load_rows = _corpus()
  stream = _stream(load_rows, buckets=_buckets(arrays))
  resumed = dict(zip(range(20, 26), (b for _, b in stream.iterate(20))))
  for step, batch in resumed.items():
    again = _stream(load_rows, buckets=_buckets(arrays)).batch(step)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
  other_seed = _stream(load_rows, buckets=_buckets(arrays), seed=4)
  assert not np.array_equal(other_seed.indices(20), stream.indices(20))


def test_stale_lengths_never_cut_real_tokens():
  arrays, load_rows = _corpus()
  lying = pipeline.LengthBuckets(BUCKETS, pipeline.teacher_buckets(BUCKETS, LS, LT), np.ones(N, np.int32),
                                 np.ones(N, np.int32))
  with pytest.raises(ValueError, match="past the length bucket"):
    for step in range(10):
      _stream(load_rows, buckets=lying).batch(step)


def test_from_config_is_off_by_default():
  config = config_lib.load_config("configs/tiny.py")
  assert pipeline.LengthBuckets.from_config(config.data, np.ones(3), np.ones(3)) is None
  config.data.length_buckets = (8, 16)
  buckets = pipeline.LengthBuckets.from_config(config.data, np.ones(3), np.ones(3))
  assert buckets.student == (8, 16) and buckets.teacher == (12, 24)


@pytest.mark.parametrize("value, message", [
    ((8, 12), "must end at data.max_len_student=16"),
    ((8, 8, 16), "increasing positive ints"),
    ((12, 8, 16), "increasing positive ints"),
    ((0, 16), "increasing positive ints"),
    ((8.0, 16), "increasing positive ints"),
    ((True, 16), "increasing positive ints"),
    ("8,16", "increasing positive ints"),
    (16, "increasing positive ints"),
])
def test_bad_length_buckets_name_the_field(value, message):
  config = config_lib.load_config("configs/tiny.py")
  del config.data["length_buckets"]  # ConfigDict would refuse a value of another type than the default's
  config.data.length_buckets = value
  with pytest.raises(UserError, match=message) as error:
    config_lib.validate(config)
  assert "data.length_buckets" in str(error.value) and "\n" not in str(error.value)


def test_length_buckets_override_and_list_form_validate():
  config = config_lib.load_config("configs/tiny.py", ["data.length_buckets=(4, 8, 16)"])
  assert config.data.length_buckets == (4, 8, 16)
  del config.data["length_buckets"]
  config.data.length_buckets = [4, 16]  # as read back from a workdir's config.json
  config_lib.validate(config)
  with pytest.raises(UserError, match="max_len_student=48"):
    config_lib.load_config("configs/tiny.py:text", ["data.length_buckets=(16, 32)", "data.bitext=x.tsv"])


@pytest.mark.parametrize("overrides", [[], ["ot.tokens=content", "ot.marginals=idf"]])
def test_synthetic_rows_match_the_batch_spec(overrides):
  from optical_jax.data import batch_spec, training_data
  config = config_lib.load_config("configs/tiny.py", ["data.num_examples=64", *overrides])
  data = training_data.build(config, None)
  rows = data.load_rows(np.arange(5))
  batch_spec.check_rows(rows, data.spec, "synthetic")
  assert data.spec == batch_spec.batch_spec(config)
  if overrides:
    # [CLS] and [SEP] are out of the student's OT problem; every real teacher vector is in it.
    assert (rows["student_ot_mask"].sum(1) == rows["student_mask"].sum(1) - 2).all()
    assert (rows["teacher_ot_mask"] == rows["teacher_mask"]).all()
    assert ((rows["student_weights"] > 0) == (rows["student_mask"] > 0)).all()


def test_length_grouping_sorts_windows_and_keeps_their_examples():
  """data.length_group: each window of G batches holds the examples it held ungrouped, cut by length bucket, in a
  seeded order; more batches run at the smallest bucket; still a pure function of (seed, step)."""
  arrays, load_rows = _corpus()
  buckets = _buckets(arrays)
  plain, grouped = _stream(load_rows, buckets=buckets), pipeline.BatchStream(
      load_rows, N, BATCH, 3, slice(0, BATCH), buckets=buckets, length_group=4)
  for window in range(5):
    steps = range(4 * window, 4 * window + 4)
    assert sorted(np.concatenate([grouped.global_indices(s) for s in steps]).tolist()) == sorted(
        np.concatenate([plain.global_indices(s) for s in steps]).tolist())
    keys = [buckets.keys(grouped.global_indices(s)) for s in steps]
    assert sum(len(set(k.tolist())) > 1 for k in keys) <= len(BUCKETS) - 1  # only where the sorted window crosses
  small = lambda stream: sum(stream.bucket(s)[0] == BUCKETS[0] for s in range(40))
  assert small(grouped) > small(plain)
  again = pipeline.BatchStream(load_rows, N, BATCH, 3, slice(0, BATCH), buckets=buckets, length_group=4)
  np.testing.assert_array_equal(again.global_indices(13), grouped.global_indices(13))
  with pytest.raises(ValueError, match="needs length buckets"):
    pipeline.BatchStream(load_rows, N, BATCH, 3, slice(0, BATCH), length_group=4)


def test_english_side_is_cut_to_the_teacher_bucket_and_chooses_it_too():
  arrays, load_rows = _corpus()
  english_len = np.minimum(pipeline.real_lengths(arrays["teacher_mask"]) + 2, LT)  # longer than the teacher's
  arrays["english_mask"] = (np.arange(LT)[None] < english_len[:, None]).astype(np.int32)
  buckets = pipeline.LengthBuckets(BUCKETS, pipeline.teacher_buckets(BUCKETS, LS, LT),
                                   pipeline.real_lengths(arrays["student_mask"]),
                                   pipeline.real_lengths(arrays["teacher_mask"]), english_len)
  stream = pipeline.BatchStream(load_rows, N, BATCH, 3, slice(0, BATCH), buckets=buckets, length_group=4)
  for step in range(24):
    batch = stream.batch(step)
    assert batch["english_mask"].shape[1] == batch["teacher_mask"].shape[1]
    assert batch["english_mask"].sum() == arrays["english_mask"][stream.global_indices(step)].sum()  # none cut
