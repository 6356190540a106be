"""The training bitext of a config: the seeded training-pair sample (data.max_train_pairs)."""
import pytest

from optical_jax import config as config_lib
from optical_jax.data.bitext import load_training_bitext
from optical_jax.errors import UserError


def _config(path, limit, seed=0):
  overrides = [f"data.bitext={path}", f"data.max_train_pairs={limit}", f"data.sample_seed={seed}"]
  return config_lib.load_config("configs/tiny.py:text", overrides)


def test_max_train_pairs_is_a_seeded_sample(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"p{i}\tchanzo {i}\tsource {i}\n" for i in range(50)))
  every = load_training_bitext(_config(path, 0), tmp_path)
  assert [ex.id for ex in every] == [f"p{i}" for i in range(50)]
  some = load_training_bitext(_config(path, 20), tmp_path)
  ids = [ex.id for ex in some]
  assert len(set(ids)) == 20 and ids == [ex.id for ex in load_training_bitext(_config(path, 20), tmp_path)]
  assert ids == sorted(ids, key=lambda i: int(i[1:]))  # source order kept
  assert ids != [ex.id for ex in load_training_bitext(_config(path, 20, seed=1), tmp_path)]
  assert len(load_training_bitext(_config(path, 500), tmp_path)) == 50
  with pytest.raises(UserError, match="max_train_pairs"):
    _config(path, -1)


def test_nested_samples_nest(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"p{i}\tchanzo {i}\tsource {i}\n" for i in range(200)))
  nested = {}
  for n in (10, 30, 100):
    config = _config(path, n)
    config.data.nested_sample = True
    nested[n] = {ex.id for ex in load_training_bitext(config, tmp_path)}
  assert nested[10] < nested[30] < nested[100] and len(nested[30]) == 30


def test_several_sources_with_weights(tmp_path):
  from optical_jax.data import bitext
  sw, bn = tmp_path / "sw.tsv", tmp_path / "bn.tsv"
  sw.write_text("".join(f"sw{i}\tchanzo {i}\tsource {i}\n" for i in range(30)))
  bn.write_text("".join(f"bn{i}\tউৎস {i}\tsource {i}\n" for i in range(10)))
  sources = bitext.parse_sources(f" {sw}@3, {bn} ,tfds:bible/bn_en@0.5")
  assert [(s.weight, s.language) for s in sources] == [(3.0, ""), (1.0, ""), (0.5, "bn")]
  training = bitext.load_training_sources(_config(f"{sw}@3,{bn}", 0), tmp_path)
  assert training.sizes == [30, 10] and [s.weight for s in training.sources] == [3.0, 1.0]
  assert [ex.id for ex in training.examples] == [f"sw{i}" for i in range(30)] + [f"bn{i}" for i in range(10)]
  # data.max_train_pairs samples each source.
  assert bitext.load_training_sources(_config(f"{sw},{bn}", 8), tmp_path).sizes == [8, 8]
  dup = tmp_path / "dup.tsv"
  dup.write_text("sw3\tx\ty\n")
  with pytest.raises(UserError, match="'sw3' is in both"):
    bitext.load_training_sources(_config(f"{sw},{dup}", 0), tmp_path)
  for bad, message in ((f"{sw}@0", "must be > 0"), (f"{sw},{sw}", "listed twice"), (" , ", "empty")):
    with pytest.raises(UserError, match=message):
      bitext.parse_sources(bad)


def test_weighted_sources_share_every_batch_by_weight():
  import numpy as np
  from optical_jax.data import pipeline
  ds = pipeline.batch_index_dataset(40, 8, seed=0, sources=[(30, 3.0), (10, 1.0)])
  batches = np.stack([np.asarray(ds[i]) for i in range(50)])
  share = (batches >= 30).mean()
  assert abs(share - 0.25) < 0.02                       # 1 of 4 from the second source, though it is small
  assert set(batches[batches >= 30].tolist()) == set(range(30, 40))   # revisited, every example of it
  again = pipeline.batch_index_dataset(40, 8, seed=0, sources=[(30, 3.0), (10, 1.0)])
  np.testing.assert_array_equal(np.asarray(again[17]), batches[17])   # a pure function of (seed, step)
  single = pipeline.batch_index_dataset(40, 8, seed=0)
  assert np.asarray(single[0]).tolist() == np.asarray(pipeline.batch_index_dataset(40, 8, 0, [(40, 1.0)])[0]).tolist()
