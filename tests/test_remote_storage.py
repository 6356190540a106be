"""`gs://` workdirs, checkpoints and teacher stores, on a fake GCS (tests/fake_gcs.py) seen by every client we use.

What reaches the fake: etils.epath (our JSON / jsonl files, orbax's directories and commit markers), TensorStore's
GCS driver (orbax's array data) and ArrayRecord's GCS reader (teacher-store shards) through a local GCS JSON API.
What does not: gcsfs itself (the fake replaces it under epath, mimicking its write-on-close and no-append
behaviour), google-cloud-storage (orbax's bucket-type lookup is stubbed), authentication, and real GCS latency,
consistency and rate limits.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from fake_gcs import fake_gcs
from optical_jax import checkpointing
from optical_jax import config as config_lib
from optical_jax import metrics as metrics_lib
from optical_jax import train as train_lib
from optical_jax.data import teacher_store
from optical_jax.train_step import TrainState

BUCKET = "gs://bucket"
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py")


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The fake's backing directory; the test runs in an empty cwd so a gs:// path taken as local would show up."""
  root = tmp_path / "gcs"
  (root / "bucket").mkdir(parents=True)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_gcs(str(root)):
    yield root
  assert not list(cwd.iterdir()), "something wrote a gs:// path to the local disk"


def _state(scale: float) -> TrainState:
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  params = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4) * scale, sharded), "b": jnp.full((3,), scale)}
  return TrainState(step=jnp.asarray(int(scale), jnp.int32), params=params, opt_state={"mu": params["b"] * 2})


def test_checkpoints_round_trip_and_rotate_on_gcs(gcs):
  ckpt = checkpointing.Checkpointer(f"{BUCKET}/run/checkpoints", keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {"step": step, "seed": 0})
  ckpt.wait()
  assert ckpt.latest_step() == 3
  target = _state(0)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  restored, meta = ckpt.restore(3, target, shardings)
  ckpt.close()
  assert meta == {"step": 3, "seed": 0}
  expected = _state(3)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored.params["w"].sharding == expected.params["w"].sharding
  # The objects are in the bucket (array data came through TensorStore's GCS driver), step 1 was rotated out.
  assert sorted(os.listdir(gcs / "bucket/run/checkpoints")) == ["2", "3"]
  assert (gcs / "bucket/run/checkpoints/3/commit_success.txt").exists()
  assert any(f.parent.name == "d" for f in (gcs / "bucket/run/checkpoints/3/state").rglob("*") if f.is_file())
  # A new process finds the newest checkpoint the same way.
  assert checkpointing.Checkpointer(f"{BUCKET}/run/checkpoints").latest_step() == 3


def test_workdir_config_and_metric_truncation_on_gcs(gcs):
  workdir = epath.Path(f"{BUCKET}/run")
  workdir.mkdir(parents=True, exist_ok=True)
  config = config_lib.load_config(TINY)
  train_lib._write_config(workdir, config)  # pylint: disable=protected-access
  assert json.loads((gcs / "bucket/run/config.json").read_text())["seed"] == config.seed
  (workdir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (5, 10, 15)))
  metrics_lib.truncate_after(workdir, 10)
  assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == [5, 10]


def _store_inputs():
  rng = np.random.default_rng(0)
  examples = [(f"id{i}", f"text {i}") for i in range(20)]
  meta = dict(teacher="t", teacher_checksum="c", tokenizer="tok", max_len=8, dim=4, dtype="float32")

  def encode(texts):
    lengths = rng.integers(1, 9, len(texts))
    return rng.normal(size=(len(texts), 8, 4)).astype(np.float32), lengths

  return examples, encode, meta


def test_teacher_store_is_read_from_gcs(gcs, tmp_path):
  examples, encode, meta = _store_inputs()
  local = tmp_path / "store"
  teacher_store.precompute(str(local), examples, encode, batch_size=4, examples_per_shard=8, meta=meta, progress=False)
  remote = epath.Path(f"{BUCKET}/store")
  for f in local.iterdir():  # What `gsutil cp -r` would do.
    (remote / f.name).write_bytes(f.read_bytes())
  rows = [0, 7, 8, 19, 3]
  with teacher_store.TeacherStore.open(str(local)) as a, teacher_store.TeacherStore.open(str(remote)) as b:
    assert a.ids == b.ids
    for x, y in zip(a.lookup_batch(rows), b.lookup_batch(rows)):
      np.testing.assert_array_equal(x, y)


def test_teacher_store_is_written_to_gcs(gcs):
  examples, encode, meta = _store_inputs()
  teacher_store.precompute(f"{BUCKET}/store", examples, encode, batch_size=4, examples_per_shard=8, meta=meta,
                           progress=False)
  with teacher_store.TeacherStore.open(f"{BUCKET}/store") as store:
    assert len(store) == len(examples)


def test_metric_rows_survive_a_resume_on_gcs(gcs):
  del gcs
  for step in (1, 2):  # Two runs of the same workdir.
    writer = metrics_lib.MetricWriter(f"{BUCKET}/run", tensorboard=False)
    writer.write(step, {"loss": float(step)})
    writer.close()
  assert [r["step"] for r in metrics_lib.read_metrics(f"{BUCKET}/run")] == [1, 2]


def test_train_and_resume_with_a_gcs_workdir(gcs):
  def run(steps):
    config = config_lib.load_config(TINY, [
        f"train.steps={steps}", "train.checkpoint_every=3", "train.log_every=3", "data.num_examples=256"])
    return train_lib.train(config, f"{BUCKET}/run", progress=False)

  assert run(6)["final_step"] == 6
  assert run(9)["start_step"] == 6
  assert [r["step"] for r in metrics_lib.read_metrics(f"{BUCKET}/run")] == [3, 6, 9]
  assert sorted(os.listdir(gcs / "bucket/run/checkpoints")) == ["6", "9"]
