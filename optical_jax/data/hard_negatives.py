"""Hard negatives for the ranking term, mined once from the stored teacher tokens.

Each training example's hard negatives are the other examples whose English side the teacher finds most similar
(cosine of the teacher's mean-pooled token states). They are mined over the training set only, before the first
step, and each batch carries its examples' negatives as extra stored documents: a negative costs one score in the
loss, never an encoder pass. A near-copy of the positive is not a wrong answer; the loss drops those
(`loss.rank_duplicate_threshold`), and never counts an example's own row as its negative.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")

TokenLookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # rows -> (tokens [n, L, D], mask [n, L])


def pooled_vectors(lookup: TokenLookup, num_examples: int, *, chunk: int = 1024) -> np.ndarray:
  """[N, D] float32 unit vectors: each example's mean over its real stored tokens."""
  out = []
  for start in range(0, num_examples, chunk):
    tokens, mask = lookup(np.arange(start, min(start + chunk, num_examples)))
    mask = mask.astype(np.float32)[..., None]
    mean = (tokens.astype(np.float32) * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
    out.append(mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12))
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def nearest_others(vectors: np.ndarray, k: int, *, chunk: int = 1024) -> np.ndarray:
  """[N, k] int64: for each row, the k other rows of highest cosine, most similar first (ties by lower row).

  Exact (brute force, N x N in chunks of rows).
  """
  n = len(vectors)
  if not 0 < k < n:
    raise UserError(f"loss.rank_hard_negatives={k}: must be between 1 and the number of training examples - 1 "
                    f"({n - 1})")
  out = np.empty((n, k), np.int64)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    sims = vectors[start:stop] @ vectors.T
    sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf      # never its own negative
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((top, -top_sims), axis=1)
    out[start:stop] = np.take_along_axis(top, order, axis=1)
  return out


def mine(lookup: TokenLookup, num_examples: int, k: int) -> np.ndarray:
  """[N, k] hard-negative example indices of every training example (see module docstring)."""
  t0 = time.perf_counter()
  neighbours = nearest_others(pooled_vectors(lookup, num_examples), k)
  log.info("hard negatives: %d per example over %d examples (%.1f s)", k, num_examples, time.perf_counter() - t0)
  return neighbours


def batch_rows(indices: np.ndarray, negatives: np.ndarray, lookup: TokenLookup) -> dict[str, np.ndarray]:
  """The batch_spec keys of the examples `indices`: their mined negatives' tokens, example-major."""
  negative_index = negatives[np.asarray(indices)].reshape(-1)
  tokens, mask = lookup(negative_index)
  return {"example_index": np.asarray(indices, np.int32), "negative_index": negative_index.astype(np.int32),
          "negative_tokens": tokens, "negative_mask": mask}
