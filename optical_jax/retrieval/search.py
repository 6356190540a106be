"""Exact top-k search in JAX: pooled cosine or ColBERT MaxSim, batched over queries, chunked over documents.

Documents stay on the host (numpy, any float dtype, e.g. float16 or a memory map) and go to the device one fixed-size
chunk at a time, so a corpus larger than device memory works. For every chunk and query batch one jitted step scores
[query_batch, doc_chunk] and merges it into the running best with `jax.lax.top_k` over [running k ‖ chunk]. The last
chunk and the last query batch are padded to the same shapes (pad documents score -inf and are never returned), so
there is one compile per search configuration. The next chunk's host-to-device copy overlaps the current chunk's
compute, and at most two chunks are on the device at once.

With a `mesh`, every chunk is sharded over all of the mesh's devices on the document axis; queries and the running
top-k are replicated and XLA partitions the scoring (and gathers the chunk's scores for the top-k). Results equal the
single-device ones: the same indices, scores to float32 rounding (XLA may vectorise a different shape differently).

Ordering: score descending, ties by lower document index (top_k is stable, and the running best, which holds earlier
chunks, comes first in every merge).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from optical_jax.errors import UserError

if TYPE_CHECKING:
  from optical_jax.retrieval.encode import Encoded

SCORERS = ("maxsim", "cosine")
REDUCTIONS = ("mean", "sum")
DEFAULT_DOC_CHUNK = {"maxsim": 1024, "cosine": 65536}
# A document with no real token gets this per query token: below any cosine (≥ -1), so it ranks after every real
# document, yet finite, so it still ranks before padding (-inf).
EMPTY_DOC_SCORE = -2.0
_EPS = 1e-12


def _l2_normalise(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def cosine_scores(queries: jax.Array, docs: jax.Array, *, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """[Q, D] x [N, D] -> [Q, N] cosine similarity (both sides L2-normalised here)."""
  q = _l2_normalise(queries.astype(jnp.float32))
  d = _l2_normalise(docs.astype(jnp.float32))
  return jnp.einsum("qd,nd->qn", q, d, precision=precision)


def maxsim_scores(query_tokens: jax.Array, query_mask: jax.Array, doc_tokens: jax.Array, doc_mask: jax.Array, *,
                  reduce: str = "mean", precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """ColBERT late interaction: [Q, Lq, D] (+mask) x [N, Ld, D] (+mask) -> [Q, N].

  For every real query token, the max cosine over the document's real tokens; then the mean (reduce="mean", the
  default: scores stay in [-1, 1] whatever the query length, comparable across queries) or the sum (reduce="sum",
  ColBERT's original) over real query tokens. A query with no real token scores 0 against every document.
  """
  q = _l2_normalise(query_tokens.astype(jnp.float32))
  d = _l2_normalise(doc_tokens.astype(jnp.float32))
  qm = query_mask.astype(bool)
  dm = doc_mask.astype(bool)
  sim = jnp.einsum("qid,njd->qnij", q, d, precision=precision)
  best = jnp.max(jnp.where(dm[None, :, None, :], sim, -jnp.inf), axis=-1)          # [Q, N, Lq]
  best = jnp.where(jnp.any(dm, axis=-1)[None, :, None], best, EMPTY_DOC_SCORE)
  total = jnp.sum(jnp.where(qm[:, None, :], best, 0.0), axis=-1)                      # [Q, N]
  if reduce == "sum":
    return total
  return total / jnp.maximum(jnp.sum(qm, axis=-1), 1)[:, None]


def _merge_step(best_scores, best_index, queries, docs, offset, num_docs, *, scorer, reduce, k, precision):
  """Scores one (query batch, document chunk) pair and merges it into the running top-k."""
  if scorer == "maxsim":
    scores = maxsim_scores(queries[0], queries[1], docs[0], docs[1], reduce=reduce, precision=precision)
  else:
    scores = cosine_scores(queries[0], docs[0], precision=precision)
  index = offset + jnp.arange(scores.shape[1], dtype=jnp.int32)
  scores = jnp.where((index < num_docs)[None, :], scores, -jnp.inf)
  cand_scores = jnp.concatenate([best_scores, scores], axis=1)
  cand_index = jnp.concatenate([best_index, jnp.broadcast_to(index, scores.shape)], axis=1)
  top_scores, pos = jax.lax.top_k(cand_scores, k)
  return top_scores, jnp.take_along_axis(cand_index, pos, axis=1)


@functools.lru_cache(maxsize=32)
def _compiled_step(scorer: str, reduce: str, k: int, precision: str, mesh: Mesh | None):
  """One jitted step per configuration (cached so repeated searches reuse the compiled executable)."""
  fn = functools.partial(_merge_step, scorer=scorer, reduce=reduce, k=k, precision=jax.lax.Precision[precision])
  if mesh is None:
    return jax.jit(fn)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(fn, out_shardings=(replicated, replicated))


def _auto_mesh(mesh: Mesh) -> Mesh:
  # jax.make_mesh defaults to Explicit axes, under which concatenating replicated and sharded arrays is a type
  # error; the same devices with Auto axes let XLA choose the layout.
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _as_pair(repr_, scorer: str, side: str) -> tuple[np.ndarray, ...]:
  """Validates one side's representation: maxsim -> (tokens [n, L, D], mask [n, L]); cosine -> (vectors [n, D],)."""
  if scorer == "maxsim":
    if not (isinstance(repr_, (tuple, list)) and len(repr_) == 2):
      raise UserError(f"maxsim search needs {side} as (token_embeddings [n, L, D], mask [n, L])")
    tokens, mask = np.asarray(repr_[0]), np.asarray(repr_[1])
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
      raise UserError(f"maxsim {side}: tokens {tokens.shape} and mask {mask.shape} must be [n, L, D] and [n, L]")
    return tokens, mask
  vectors = None if isinstance(repr_, (tuple, list)) else np.asarray(repr_)
  if vectors is None or vectors.ndim != 2:
    got = "a tuple" if vectors is None else f"shape {vectors.shape}"
    raise UserError(f"cosine search needs {side} as pooled vectors [n, D], got {got}")
  return (vectors,)


def _padded_slice(arrays: tuple[np.ndarray, ...], start: int, size: int) -> tuple[np.ndarray, ...]:
  """arrays[start:start+size] along axis 0, zero-padded at the end to exactly `size` rows."""
  out = []
  for a in arrays:
    part = a[start:start + size]
    if part.shape[0] < size:
      pad = np.zeros((size - part.shape[0],) + a.shape[1:], dtype=a.dtype)
      part = np.concatenate([part, pad], axis=0)
    out.append(np.ascontiguousarray(part))
  return tuple(out)


def search(query_repr: Any, doc_repr: Any, *, k: int, scorer: str = "maxsim", reduce: str = "mean",
           query_batch: int = 16, doc_chunk: int | None = None, mesh: Mesh | None = None,
           precision: str = "highest") -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k documents for every query.

  Args:
    query_repr: maxsim: (tokens [Q, Lq, D], mask [Q, Lq]); cosine: pooled vectors [Q, D].
    doc_repr: maxsim: (tokens [N, Ld, D], mask [N, Ld]); cosine: pooled vectors [N, D]. Numpy (kept on the host).
    k: documents per query; more than N is clamped to N.
    scorer: "maxsim" (ColBERT late interaction) or "cosine" (vectors are L2-normalised here).
    reduce: maxsim only: "mean" (default) or "sum" over real query tokens.
    query_batch: queries per step. doc_chunk: documents per step (default 1024 maxsim, 65536 cosine; rounded up to
      a multiple of the mesh size). Peak device memory for maxsim ≈ 4·query_batch·doc_chunk·Lq·Ld bytes.
    mesh: shard every document chunk over all of this mesh's devices.
    precision: matmul precision ("highest" keeps float32 accuracy on TPU/GPU; "default" is faster there).

  Returns:
    (scores [Q, k] float32, indices [Q, k] int64 into the documents), best first.
  """
  if scorer not in SCORERS:
    raise UserError(f"unknown scorer {scorer!r}; use one of {SCORERS}")
  if reduce not in REDUCTIONS:
    raise UserError(f"unknown maxsim reduce {reduce!r}; use one of {REDUCTIONS}")
  if precision.upper() not in ("DEFAULT", "HIGH", "HIGHEST"):
    raise UserError(f"unknown matmul precision {precision!r}; use default, high or highest")
  queries = _as_pair(query_repr, scorer, "queries")
  docs = _as_pair(doc_repr, scorer, "documents")
  if queries[0].shape[-1] != docs[0].shape[-1]:
    raise UserError(f"query embedding size {queries[0].shape[-1]} != document embedding size {docs[0].shape[-1]}"
                    " (index built with another encoder?)")
  num_queries, num_docs = queries[0].shape[0], docs[0].shape[0]
  if k < 1 or query_batch < 1 or (doc_chunk is not None and doc_chunk < 1):
    raise UserError(f"k, query_batch and doc_chunk must be ≥ 1, got {k}, {query_batch}, {doc_chunk}")
  if num_docs == 0:
    raise UserError("search over an empty document collection")
  k = min(k, num_docs)
  if num_queries == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  if num_docs >= 2**31:
    raise UserError(f"{num_docs} documents exceed the int32 index range")

  doc_chunk = doc_chunk or DEFAULT_DOC_CHUNK[scorer]
  doc_chunk = min(doc_chunk, num_docs)  # a small corpus needs no padding up to the default chunk
  if mesh is not None:
    mesh = _auto_mesh(mesh)
    doc_chunk = -(-doc_chunk // mesh.size) * mesh.size
    doc_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    put_docs = functools.partial(jax.device_put, device=doc_sharding)
    put_replicated = functools.partial(jax.device_put, device=NamedSharding(mesh, PartitionSpec()))
  else:
    put_docs = put_replicated = jax.device_put
  step = _compiled_step(scorer, reduce, k, precision.upper(), mesh)

  queries = tuple(q.astype(np.float32) if i == 0 else q.astype(bool) for i, q in enumerate(queries))
  docs = tuple(d if i == 0 else d.astype(bool) for i, d in enumerate(docs))
  query_batch = min(query_batch, num_queries)
  q_starts = range(0, num_queries, query_batch)
  q_batches = [tuple(put_replicated(a) for a in _padded_slice(queries, s, query_batch)) for s in q_starts]
  init_scores = np.full((query_batch, k), -np.inf, np.float32)
  init_index = np.full((query_batch, k), -1, np.int32)
  best = [(put_replicated(init_scores), put_replicated(init_index)) for _ in q_starts]

  n_docs = np.int32(num_docs)
  starts = list(range(0, num_docs, doc_chunk))
  next_chunk = tuple(put_docs(a) for a in _padded_slice(docs, starts[0], doc_chunk))
  for c, start in enumerate(starts):
    chunk = next_chunk
    for b, q in enumerate(q_batches):
      best[b] = step(best[b][0], best[b][1], q, chunk, np.int32(start), n_docs)
    if c + 1 < len(starts):
      # Dispatched while this chunk computes; blocking below keeps at most two chunks on the device.
      next_chunk = tuple(put_docs(a) for a in _padded_slice(docs, starts[c + 1], doc_chunk))
    jax.block_until_ready(best)

  scores = np.concatenate([np.asarray(s) for s, _ in best])[:num_queries]
  indices = np.concatenate([np.asarray(i) for _, i in best])[:num_queries].astype(np.int64)
  return scores, indices


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row: the k best (score, column), score descending, ties by lower column (as retrieval.search)."""
  k = min(k, scores.shape[1])
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
      np.arange(scores.shape[1]), (scores.shape[0], 1))
  out_s, out_i = np.zeros((scores.shape[0], k), np.float32), np.zeros((scores.shape[0], k), np.int64)
  for row in range(scores.shape[0]):
    # Columns tied with the k-th score may sit outside the partition: take every column >= it, then sort.
    kth = scores[row, part[row]].min()
    cand = np.flatnonzero(scores[row] >= kth)
    order = np.lexsort((cand, -scores[row, cand]))[:k]
    out_i[row], out_s[row] = cand[order], scores[row, cand[order]]
  return out_s, out_i


def packed_maxsim(queries: tuple[np.ndarray, np.ndarray], docs: tuple[np.ndarray, np.ndarray], *, k: int,
                  query_batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Exact MaxSim top k (mean over query tokens), computed over real tokens only, with numpy's BLAS.

  retrieval.search pads every sequence to its max length; on a CPU, verses averaging ~30 of 48 tokens then cost
  (48/30)^2 = 2.5x the work. Here all real document tokens are one [T_d, D] matrix: each query batch's real tokens
  take one GEMM against it, then a segment max per document and a mean per query. Same scores as
  retrieval.search(scorer="maxsim") up to float rounding; a document without real tokens scores -2 (ranks last).
  """
  q_tokens, q_mask = queries
  d_tokens, d_mask = docs
  d_mask = np.asarray(d_mask, bool)
  counts = d_mask.sum(1)
  flat = _unit(d_tokens[d_mask])  # row-major: document j's tokens are rows starts[j] .. starts[j] + counts[j]
  nonempty = np.flatnonzero(counts)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
  n_q, n_d = q_tokens.shape[0], d_tokens.shape[0]
  scores = np.full((n_q, n_d), EMPTY_DOC_SCORE, np.float32)
  for start in range(0, n_q, query_batch):
    qm = np.asarray(q_mask[start:start + query_batch], bool)
    q_counts = qm.sum(1)
    has = q_counts > 0
    block = np.zeros((len(qm), len(nonempty)), np.float32)
    if has.any() and len(nonempty):
      best = np.maximum.reduceat(_unit(q_tokens[start:start + len(qm)][qm]) @ flat.T, starts, axis=1)
      q_starts = np.concatenate([[0], np.cumsum(q_counts)[:-1]])
      block[has] = np.add.reduceat(best, q_starts[has], axis=0) / q_counts[has, None]
    rows = scores[start:start + len(qm)]
    rows[:, nonempty] = block
    rows[~has] = 0.0  # a query without real tokens scores 0 everywhere (as retrieval.search)
  return top_k(scores, k)


def rank(queries: Encoded, docs: Encoded, scorer: str, *, k: int, mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """Top-k (scores, document rows) of every query under `scorer` ("maxsim" | "pooled")."""
  if scorer == "maxsim":
    if mesh is None and jax.default_backend() == "cpu":
      return packed_maxsim((queries.tokens, queries.maxsim_mask), (docs.tokens, docs.maxsim_mask), k=k)
    return search((queries.tokens, queries.maxsim_mask), (docs.tokens, docs.maxsim_mask), k=k, scorer="maxsim",
                  mesh=mesh)
  if scorer == "pooled":
    return search(queries.pooled, docs.pooled, k=k, scorer="cosine", mesh=mesh)
  raise UserError(f"unknown scorer {scorer!r}; use maxsim or pooled")
