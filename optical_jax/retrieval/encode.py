"""Texts to token vectors for retrieval: any encoder, length-sorted batches, MaxSim and pooled representations.

The same code encodes the teacher's documents and every system's queries, so their token rules are identical: the
MaxSim mask drops the leading special token, the prefix pieces and the final special token ("content" tokens);
pooling (the E5 / sentence-transformers mean) uses every real token.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
import tqdm

from optical_jax import metrics as metrics_lib
from optical_jax import sharding as sharding_lib
from optical_jax.data import tokens as tokens_lib
from optical_jax.errors import UserError

MAXSIM_TOKENS = ("content", "all")
POOLINGS = ("mean", "cls")
_WIDTH = 16  # encoding batches are cut to a multiple of this many tokens


@dataclasses.dataclass
class Encoded:
  """Token vectors [n, L, D] float16, all-real-token mask, MaxSim-token mask, pooled [n, D] float32 (unit)."""
  tokens: np.ndarray
  mask: np.ndarray
  maxsim_mask: np.ndarray
  pooled: np.ndarray

  def take(self, rows: np.ndarray) -> Encoded:
    return Encoded(self.tokens[rows], self.mask[rows], self.maxsim_mask[rows], self.pooled[rows])


def pool_embeddings(token_embeddings: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
  """[b, L, D] + mask [b, L] -> L2-normalised [b, D] float32.

  "mean": mean over real tokens (the E5 / mE5 recipe); "cls": the first token. Rows with no real token pool to 0.
  """
  if pooling not in POOLINGS:
    raise UserError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
  x = np.asarray(token_embeddings, dtype=np.float32)
  m = np.asarray(mask).astype(np.float32)
  if pooling == "mean":
    pooled = np.einsum("bld,bl->bd", x, m) / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
  else:
    pooled = x[:, 0, :] * (m[:, :1] > 0)
  norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
  return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("module", "head"))
def _forward(module, params, ids, mask, head):
  # Keyed on the module (a hashable dataclass: equal configs are equal): the teacher, the zero-shot student and
  # every trained student of one architecture share one compiled executable per input shape.
  return module.apply({"params": params}, ids, mask, head=head)


def encode_texts(encoder, texts: Sequence[str], *, prefix: str, max_len: int, batch_size: int, head: bool = True,
                 maxsim_tokens: str = "content", mesh=None, desc: str = "encoding") -> Encoded:
  """Encodes `prefix + text` (truncated to max_len tokens, keeping the final special token).

  Batches of `batch_size` texts of similar length (a short last batch is filled with empty rows), cut to a multiple
  of 16 tokens: at most max_len/16 compiled shapes. With a mesh, batches are split over its data x fsdp axes.
  The MaxSim mask drops the leading special token, the prefix pieces and the final special token; pooling uses
  every real token.
  """
  if maxsim_tokens not in MAXSIM_TOKENS:
    raise UserError(f"maxsim_tokens must be one of {MAXSIM_TOKENS}, got {maxsim_tokens!r}")
  params, put = encoder.params, lambda x: x
  if mesh is not None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards
    params = jax.device_put(params, sharding_lib.replicated(mesh))
    put = lambda x: jax.device_put(x, sharding_lib.data_sharding(mesh, 2))
  # The head is the identity without a projection or normalisation: one executable serves teacher and students.
  head = bool(head and (encoder.config.projection_dim or encoder.config.normalize))
  n = len(texts)
  dim = encoder.config.output_dim if head else encoder.config.hidden_size
  tokens = np.zeros((n, max_len, dim), np.float16)
  mask = np.zeros((n, max_len), bool)
  all_ids, all_mask = encoder.tokenize([prefix + t for t in texts], max_len)
  # Shortest first, each batch cut to a multiple of _WIDTH tokens: padding never changes a real token's state (the
  # mask hides it; XLM-R positions count real tokens), so this only saves work, with a few compiled widths.
  order = np.argsort(all_mask.sum(1), kind="stable")
  with tqdm.tqdm(total=n, desc=desc, unit="text", disable=not metrics_lib.progress_enabled(), leave=False) as bar:
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      width = min(max_len, max(_WIDTH, -(-int(all_mask[rows].sum(1).max()) // _WIDTH) * _WIDTH))
      ids = np.zeros((batch_size, width), all_ids.dtype)
      m = np.zeros((batch_size, width), all_mask.dtype)
      ids[:len(rows)], m[:len(rows)] = all_ids[rows, :width], all_mask[rows, :width]
      out = np.asarray(_forward(encoder.module, params, put(ids), put(m), head=head), np.float32)[:len(rows)]
      real = m[:len(rows)] > 0
      tokens[rows, :width] = np.where(real[..., None], out, 0.0)
      mask[rows, :width] = real
      bar.update(len(rows))
  pooled = pool_embeddings(tokens.astype(np.float32), mask, "mean")
  if maxsim_tokens == "content":
    skip = 1 + tokens_lib.prefix_length(encoder.tokenizer, prefix)
    maxsim_mask = tokens_lib.content_mask(mask.astype(np.int32), skip).astype(bool)
  else:
    maxsim_mask = mask
  return Encoded(tokens, mask, maxsim_mask, pooled)
