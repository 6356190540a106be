"""Tests of the teacher token store: round trip, resume after a crash, multi-process writing, integrity checks."""
import hashlib
import json
import pathlib

import ml_dtypes
import numpy as np
import pytest

from optical_jax.data import teacher_store as ts
from optical_jax.errors import UserError

MAX_LEN, DIM = 6, 8
WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def make_examples(n: int = 23) -> list[tuple[str, str]]:
  rng = np.random.default_rng(0)
  return [(f"ex{i:03d}", " ".join(rng.choice(WORDS, size=int(rng.integers(1, 10))))) for i in range(n)]


def fake_vectors(text: str) -> np.ndarray:
  """Deterministic [length, DIM] 'teacher' output: one vector per word, seeded by a hash of the text."""
  seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
  length = min(len(text.split()), MAX_LEN)
  return np.random.default_rng(seed).standard_normal((length, DIM)).astype(np.float32) * 3


class FakeEncoder:
  """encode_fn returning padded embeddings and a mask (or lengths); can crash after `crash_after` calls.

  batch_dependent: outputs also depend on the batch (as a real model's do, through padding and GEMM blocking), so a
  resumed run is only identical if it makes exactly the same batches.
  """

  def __init__(self, crash_after: int | None = None, use_lengths: bool = False, batch_dependent: bool = False):
    self.crash_after, self.use_lengths, self.batch_dependent = crash_after, use_lengths, batch_dependent
    self.calls, self.texts = 0, []

  def __call__(self, texts):
    if self.crash_after is not None and self.calls >= self.crash_after:
      raise KeyboardInterrupt("simulated crash")
    self.calls += 1
    self.texts.extend(texts)
    vecs = [fake_vectors(t) + (0.01 * len(texts) if self.batch_dependent else 0) for t in texts]
    width = max(len(v) for v in vecs) + 1  # garbage padding that must not reach the store
    embs = np.full((len(texts), width, DIM), 7.0, np.float32)
    mask = np.zeros((len(texts), width), np.int64)
    for i, v in enumerate(vecs):
      embs[i, :len(v)], mask[i, :len(v)] = v, 1
    return embs, (mask.sum(1) if self.use_lengths else mask)


def meta(**overrides):
  return {"teacher": "fake-teacher", "teacher_checksum": "abc123", "tokenizer": "fake-tok/0001", "max_len": MAX_LEN,
          "dim": DIM, "dtype": "float16", "prefix": "passage: ", **overrides}


def build(root, examples, encoder=None, **kw):
  kw = {"batch_size": 3, "examples_per_shard": 7, "meta": meta(), "progress": False, **kw}
  return ts.precompute(root, examples, encoder or FakeEncoder(), **kw)


def files(root: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("dtype,use_lengths", [("float16", False), ("bfloat16", True), ("float32", False)])
def test_round_trip(tmp_path, dtype, use_lengths):
  examples = make_examples()
  manifest = build(tmp_path, examples, FakeEncoder(use_lengths=use_lengths), meta=meta(dtype=dtype))
  assert manifest.complete and manifest.num_examples == len(examples) and len(manifest.shards) == 4
  store = ts.TeacherStore.open(tmp_path, expect={"teacher_checksum": "abc123", "max_len": MAX_LEN, "dim": DIM})
  assert len(store) == len(examples) and store.ids == [i for i, _ in examples]
  assert store.index_of("ex005") == 5
  np_dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]
  wanted = ["ex011", "ex000", "ex022", "ex007"]  # across shards, out of order
  tokens, mask = store.get(wanted)
  assert tokens.dtype == np.float32 and tokens.shape == (4, MAX_LEN, DIM)
  assert mask.dtype == np.int32 and mask.shape == (4, MAX_LEN)
  texts = dict(examples)
  for row, example_id in enumerate(wanted):
    ref = fake_vectors("passage: " + texts[example_id])  # the prefix reaches encode_fn
    n = len(ref)
    np.testing.assert_array_equal(tokens[row, :n], ref.astype(np_dtype).astype(np.float32))
    assert (tokens[row, n:] == 0).all()
    np.testing.assert_array_equal(mask[row], (np.arange(MAX_LEN) < n).astype(np.int32))
  by_index = store.lookup_batch([11, 0, 22, 7])
  np.testing.assert_array_equal(by_index[0], tokens)
  np.testing.assert_array_equal(by_index[1], mask)
  np.testing.assert_array_equal(store.lengths, [len(fake_vectors("passage: " + t)) for _, t in examples])
  assert store.store_size_bytes() == sum((tmp_path / s["name"]).stat().st_size for s in manifest.shards)
  assert ts.StoreManifest.from_json((tmp_path / "manifest.json").read_text()) == manifest


def test_rebuild_is_byte_identical(tmp_path):
  examples = make_examples()
  build(tmp_path / "a", examples)
  build(tmp_path / "b", examples)
  assert files(tmp_path / "a") == files(tmp_path / "b")


@pytest.mark.parametrize("crash_after", [1, 4, 7])
def test_kill_and_resume_is_byte_identical(tmp_path, crash_after):
  examples = make_examples()
  build(tmp_path / "ref", examples, FakeEncoder(batch_dependent=True))
  root = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    build(root, examples, FakeEncoder(crash_after=crash_after, batch_dependent=True))
  assert not (root / "manifest.json").exists()
  # Debris of a killed run: a half-written shard under its final name (never recorded) and a stale temp file.
  progress = json.loads((root / "progress-p000.json").read_text()) if (root / "progress-p000.json").exists() else None
  done = len(progress["shards"]) if progress else 0
  (root / ts.shard_name(0, done)).write_bytes(b"half a shard")
  (root / (ts.shard_name(0, done) + ".tmp")).write_bytes(b"garbage")
  (root / ts.shard_name(0, 9)).write_bytes(b"from an earlier, larger run")
  resumed = FakeEncoder(batch_dependent=True)
  manifest = build(root, examples, resumed)
  assert manifest.complete
  assert resumed.texts == ["passage: " + t for _, t in examples[7 * done:]]  # continues after the last complete shard
  assert files(root) == files(tmp_path / "ref")


def test_corrupt_committed_shard_is_reencoded_on_resume(tmp_path):
  examples = make_examples()
  build(tmp_path / "ref", examples)
  root = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    build(root, examples, FakeEncoder(crash_after=8))  # shards 0 and 1 committed
  shard = root / ts.shard_name(0, 1)
  shard.write_bytes(shard.read_bytes()[:-10])
  resumed = FakeEncoder()
  build(root, examples, resumed)
  assert resumed.texts[0] == "passage: " + examples[7][1]
  assert files(root) == files(tmp_path / "ref")


def test_resume_with_other_teacher_is_refused(tmp_path):
  examples = make_examples()
  with pytest.raises(KeyboardInterrupt):
    build(tmp_path, examples, FakeEncoder(crash_after=3))
  with pytest.raises(UserError, match=r"meta\.teacher_checksum='abc123'.*'other'"):
    build(tmp_path, examples, meta=meta(teacher_checksum="other"))
  with pytest.raises(UserError, match="inputs_sha256"):
    build(tmp_path, examples[:-1])


@pytest.mark.parametrize("order", [(1, 0), (0, 1)])
def test_two_processes_match_one(tmp_path, order):
  examples = make_examples()
  build(tmp_path / "one", examples)
  root = tmp_path / "two"
  results = {p: build(root, examples, process_index=p, process_count=2, examples_per_shard=5) for p in order}
  if order == (0, 1):  # process 0 finished first: nothing merged yet
    assert not results[0].complete and not (root / "manifest.json").exists()
    with pytest.raises(UserError, match="not complete"):
      ts.TeacherStore.open(root)
    manifest = ts.finalize(root)
  else:
    manifest = results[0]
  assert manifest.complete and manifest.num_examples == len(examples) and manifest.process_count == 2
  assert [s["process"] for s in manifest.shards] == [0, 0, 0, 1, 1, 1]
  one, two = ts.TeacherStore.open(tmp_path / "one"), ts.TeacherStore.open(root)
  assert one.ids == two.ids
  ids = [i for i, _ in examples][::-1]
  for a, b in zip(one.get(ids), two.get(ids)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(one.lookup_batch(np.arange(len(examples))), two.lookup_batch(np.arange(len(examples)))):
    np.testing.assert_array_equal(a, b)


def test_more_processes_than_examples(tmp_path):
  examples = make_examples(2)
  for p in (2, 1, 0):
    manifest = build(tmp_path, examples, process_index=p, process_count=3)
  assert manifest.complete and manifest.num_examples == 2
  assert ts.TeacherStore.open(tmp_path).ids == ["ex000", "ex001"]


@pytest.fixture
def store_root(tmp_path):
  build(tmp_path, make_examples())
  return tmp_path


def _read_all(root, verify):
  store = ts.TeacherStore.open(root, verify=verify)
  store.lookup_batch(np.arange(len(store)))


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_is_named(store_root, verify):
  shard = store_root / ts.shard_name(0, 2)
  shard.write_bytes(shard.read_bytes()[:-100])
  with pytest.raises(UserError, match=ts.shard_name(0, 2)):
    _read_all(store_root, verify)


@pytest.mark.parametrize("verify", [True, False])
def test_flipped_byte_is_named(store_root, verify):
  shard = store_root / ts.shard_name(0, 1)
  data = bytearray(shard.read_bytes())
  # A byte of content (ArrayRecord pads files with zeros that no reader looks at: only sha256 sees those).
  nonzero = np.flatnonzero(np.frombuffer(bytes(data), np.uint8))
  data[nonzero[len(nonzero) // 2]] ^= 0x10
  shard.write_bytes(bytes(data))
  with pytest.raises(UserError, match=ts.shard_name(0, 1) + ".*" + ("sha256" if verify else "corrupted")):
    _read_all(store_root, verify)


def test_missing_shard_is_named(store_root):
  (store_root / ts.shard_name(0, 3)).unlink()
  with pytest.raises(UserError, match=ts.shard_name(0, 3) + " is missing"):
    ts.TeacherStore.open(store_root)


@pytest.mark.parametrize("field,value", [("teacher_checksum", "zzz"), ("tokenizer", "other-tok"), ("max_len", 512),
                                         ("teacher", "other-teacher"), ("dim", 16)])
def test_expect_mismatch_names_field(store_root, field, value):
  have = meta()[field]
  with pytest.raises(UserError, match=rf"another {field}: store has {have!r}, expected {value!r}"):
    ts.TeacherStore.open(store_root, expect={**{k: meta()[k] for k in ("teacher", "tokenizer")}, field: value})


def test_bad_expect_field_and_missing_id(store_root):
  with pytest.raises(UserError, match="unknown field 'max_length'"):
    ts.TeacherStore.open(store_root, expect={"max_length": MAX_LEN})
  store = ts.TeacherStore.open(store_root, verify=False)
  with pytest.raises(UserError, match="'nope'"):
    store.get(["ex001", "nope"])
  with pytest.raises(IndexError):
    store.lookup_batch([len(store)])


def test_missing_store_and_bad_inputs(tmp_path):
  with pytest.raises(UserError, match="manifest.json missing"):
    ts.TeacherStore.open(tmp_path / "nowhere")
  with pytest.raises(UserError, match="duplicate id 'a'"):
    build(tmp_path / "dup", [("a", "x y"), ("a", "z")])
  with pytest.raises(UserError, match="dtype"):
    build(tmp_path / "dt", make_examples(), meta=meta(dtype="int8"))
  with pytest.raises(UserError, match="more than max_len"):
    build(tmp_path / "long", make_examples(), meta=meta(max_len=2))
  with pytest.raises(UserError, match="not finite in float16"):
    build(tmp_path / "inf", make_examples(), lambda texts: (np.full((len(texts), 2, DIM), 1e6), np.ones(len(texts))))


def test_pickled_store_reopens_readers(store_root):
  import pickle  # pylint: disable=g-import-not-at-top
  store = ts.TeacherStore.open(store_root)
  want = store.lookup_batch([3, 20])
  store.lookup_batch([0])
  clone = pickle.loads(pickle.dumps(store))
  for a, b in zip(want, clone.lookup_batch([3, 20])):
    np.testing.assert_array_equal(a, b)
