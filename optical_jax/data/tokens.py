"""Which tokens count, and how much: content masks (no special or prefix tokens) and BM25 IDF weights.

Numpy only, shared by the training rows (OT masks and marginals) and the retrieval encoders (MaxSim masks).
"""
from __future__ import annotations

import numpy as np


def prefix_length(tokenizer, prefix: str) -> int:
  """Pieces the prefix adds after the leading special token (e.g. E5's "query: " is 3 pieces)."""
  if not prefix:
    return 0
  bare = tokenizer("x", add_special_tokens=False)["input_ids"]
  with_prefix = tokenizer(prefix + "x", add_special_tokens=False)["input_ids"]
  return max(len(with_prefix) - len(bare), 0)


def content_mask(mask: np.ndarray, skip_front: int) -> np.ndarray:
  """The attention mask without the first `skip_front` tokens and the last real token ([SEP] / </s>)."""
  lengths = mask.sum(-1, keepdims=True)
  positions = np.arange(mask.shape[-1])[None]
  keep = (positions >= skip_front) & (positions < lengths - 1)
  out = (mask.astype(bool) & keep).astype(np.int32)
  # A sequence with no content token keeps its full mask: an empty OT marginal would be undefined.
  empty = out.sum(-1) == 0
  out[empty] = mask[empty]
  return out


def document_frequency(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """[V] number of rows (sentences) in which each id occurs at a real position."""
  ids = np.where(mask > 0, ids, -1)
  ordered = np.sort(ids, axis=1)
  first = np.ones(ordered.shape, bool)
  first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
  return np.bincount(ordered[first & (ordered >= 0)], minlength=vocab_size)


def idf_weights(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[N, L] float32 BM25 IDF of each real token over the N rows (0 on pads): losses.idf_weights in numpy.

  log(1 + (N - df + 0.5) / (df + 0.5)) is > 0 for every token, so a token in every sentence keeps some mass.
  """
  df = document_frequency(ids, mask, int(ids.max(initial=0)) + 1)[ids].astype(np.float64)
  n = float(ids.shape[0])
  return np.where(mask > 0, np.log1p((n - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32)
