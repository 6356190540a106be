"""Token rules: IDF marginal weights (against the loss module's formula) and content masks."""
import numpy as np

from optical_jax import losses
from optical_jax.data import encoding, tokens


def test_idf_weights_match_the_loss_module_formula():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, size=(30, 9))
  mask = (np.arange(9)[None] < rng.integers(1, 10, size=(30, 1))).astype(np.int32)
  df = tokens.document_frequency(ids, mask, 12)
  expected_df = [sum(1 for r in range(30) if v in set(ids[r][mask[r] > 0])) for v in range(12)]
  assert df.tolist() == expected_df
  weights = tokens.idf_weights(ids, mask)
  reference = np.asarray(losses.idf_weights(ids, mask, df, 30))
  np.testing.assert_allclose(weights, reference, rtol=1e-5)
  assert (weights[mask == 0] == 0).all() and (weights[mask > 0] > 0).all()


def test_content_mask_drops_leading_prefix_and_final_special_tokens():
  mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.int32)
  out = tokens.content_mask(mask, skip_front=2)
  assert out.tolist() == [[0, 0, 1, 1, 0, 0],
                          [1, 1, 0, 0, 0, 0],   # no content token left: the full mask is kept
                          [0, 0, 0, 0, 0, 0]]


def test_prefix_length_counts_the_prefix_pieces():
  tokenizer = encoding.byte_tokenizer()
  assert tokens.prefix_length(tokenizer, "") == 0
  assert tokens.prefix_length(tokenizer, "q: ") == 3  # one piece per byte
