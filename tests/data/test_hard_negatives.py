"""data.hard_negatives: exact nearest other examples, against a brute-force argsort."""
import numpy as np
import pytest

from optical_jax.data import hard_negatives
from optical_jax.errors import UserError


def test_nearest_others_is_exact_and_never_the_example_itself():
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(50, 8)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  got = hard_negatives.nearest_others(vectors, 3, chunk=7)   # chunks that do not divide N
  sims = vectors @ vectors.T
  np.fill_diagonal(sims, -np.inf)
  np.testing.assert_array_equal(got, np.argsort(-sims, axis=1, kind="stable")[:, :3])
  with pytest.raises(UserError, match="rank_hard_negatives"):
    hard_negatives.nearest_others(vectors, 50)


def test_mined_rows_come_from_the_lookup():
  tokens = np.zeros((4, 3, 2), np.float16)
  tokens[:, 0] = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
  mask = np.zeros((4, 3), np.int32)
  mask[:, 0] = 1
  lookup = lambda rows: (tokens[rows], mask[rows])
  negatives = hard_negatives.mine(lookup, 4, 1)
  np.testing.assert_array_equal(negatives[:, 0], [1, 0, 3, 2])
  rows = hard_negatives.batch_rows(np.asarray([2, 0]), negatives, lookup)
  np.testing.assert_array_equal(rows["negative_index"], [3, 1])
  np.testing.assert_array_equal(rows["negative_tokens"], tokens[[3, 1]])
  assert rows["example_index"].dtype == np.int32 and rows["negative_mask"].shape == (2, 3)
