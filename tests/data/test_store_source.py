"""IDF marginal weights of the training batches, and the seeded training-pair sample (data.max_train_pairs)."""
import ml_collections
import numpy as np
import pytest

from optical_jax import losses, precompute
from optical_jax.data import store_source
from optical_jax.errors import UserError


def test_idf_weights_match_the_loss_module_formula():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, size=(30, 9))
  mask = (np.arange(9)[None] < rng.integers(1, 10, size=(30, 1))).astype(np.int32)
  df = store_source.document_frequency(ids, mask, 12)
  expected_df = [sum(1 for r in range(30) if v in set(ids[r][mask[r] > 0])) for v in range(12)]
  assert df.tolist() == expected_df
  weights = store_source.idf_weights(ids, mask)
  reference = np.asarray(losses.idf_weights(ids, mask, df, 30))
  np.testing.assert_allclose(weights, reference, rtol=1e-5)
  assert (weights[mask == 0] == 0).all() and (weights[mask > 0] > 0).all()


def _config(path, limit, seed=0):
  return ml_collections.ConfigDict(dict(data=dict(bitext=str(path), strict=False, max_train_pairs=limit,
                                                  sample_seed=seed, tfds_data_dir="")))


def test_max_train_pairs_is_a_seeded_sample(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"p{i}\tchanzo {i}\tsource {i}\n" for i in range(50)))
  every = precompute.load_training_bitext(_config(path, 0), tmp_path)
  assert [ex.id for ex in every] == [f"p{i}" for i in range(50)]
  some = precompute.load_training_bitext(_config(path, 20), tmp_path)
  ids = [ex.id for ex in some]
  assert len(set(ids)) == 20 and ids == [ex.id for ex in precompute.load_training_bitext(_config(path, 20), tmp_path)]
  assert ids == sorted(ids, key=lambda i: int(i[1:]))  # source order kept
  assert ids != [ex.id for ex in precompute.load_training_bitext(_config(path, 20, seed=1), tmp_path)]
  assert len(precompute.load_training_bitext(_config(path, 500), tmp_path)) == 50
  with pytest.raises(UserError, match="max_train_pairs"):
    precompute.load_training_bitext(_config(path, -1), tmp_path)
