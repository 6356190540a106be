"""search.search against brute-force numpy scoring: both scorers, chunking, k > chunk, 8-device mesh, padding."""
import sys

import jax
import numpy as np
import pytest

from optical_jax.errors import UserError
from optical_jax.retrieval.search import EMPTY_DOC_SCORE, search

Q, N, LQ, LD, D = 7, 45, 5, 6, 16


def _normalise(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def numpy_maxsim(qt, qm, dt, dm, reduce="mean"):
  sim = np.einsum("qid,njd->qnij", _normalise(qt.astype(np.float64)), _normalise(dt.astype(np.float64)))
  best = np.where(dm[None, :, None, :], sim, -np.inf).max(axis=-1)
  best = np.where(dm.any(axis=-1)[None, :, None], best, EMPTY_DOC_SCORE)
  total = np.where(qm[:, None, :], best, 0.0).sum(axis=-1)
  return total if reduce == "sum" else total / np.maximum(qm.sum(axis=-1), 1)[:, None]


def numpy_cosine(qv, dv):
  return _normalise(qv.astype(np.float64)) @ _normalise(dv.astype(np.float64)).T


def _data(seed=0, n=N):
  rng = np.random.default_rng(seed)
  qt = rng.normal(size=(Q, LQ, D)).astype(np.float32)
  qm = np.arange(LQ)[None] < rng.integers(1, LQ + 1, size=Q)[:, None]
  dt = rng.normal(size=(n, LD, D)).astype(np.float16)  # the index stores float16
  dm = np.arange(LD)[None] < rng.integers(1, LD + 1, size=n)[:, None]
  return qt, qm, dt, dm


def _check_against_reference(scores, indices, reference, k):
  num_docs = reference.shape[1]
  assert scores.shape == indices.shape == (reference.shape[0], k)
  assert scores.dtype == np.float32 and indices.dtype == np.int64
  assert ((indices >= 0) & (indices < num_docs)).all(), "a pad or an uninitialised slot was returned"
  for row in range(reference.shape[0]):
    assert len(set(indices[row])) == k
    expected = np.sort(reference[row])[::-1][:k]
    np.testing.assert_allclose(scores[row], expected, atol=1e-5)               # the best k values, in order
    np.testing.assert_allclose(reference[row, indices[row]], scores[row], atol=1e-5)  # belonging to those docs


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("doc_chunk,query_batch", [(None, 16), (8, 3), (45, 7), (13, 2)])
def test_maxsim_matches_numpy(reduce, doc_chunk, query_batch):
  qt, qm, dt, dm = _data()
  scores, indices = search((qt, qm), (dt, dm), k=10, scorer="maxsim", reduce=reduce, doc_chunk=doc_chunk,
                           query_batch=query_batch)
  _check_against_reference(scores, indices, numpy_maxsim(qt, qm, dt, dm, reduce), 10)


@pytest.mark.parametrize("doc_chunk,query_batch", [(None, 16), (8, 3), (13, 2)])
def test_cosine_matches_numpy(doc_chunk, query_batch):
  rng = np.random.default_rng(1)
  qv, dv = rng.normal(size=(Q, D)) * 5, rng.normal(size=(N, D)).astype(np.float32) * 0.1
  scores, indices = search(qv, dv, k=10, scorer="cosine", doc_chunk=doc_chunk, query_batch=query_batch)
  _check_against_reference(scores, indices, numpy_cosine(qv, dv), 10)


def test_chunked_equals_unchunked():
  qt, qm, dt, dm = _data(2)
  whole = search((qt, qm), (dt, dm), k=12, doc_chunk=N, query_batch=Q)
  chunked = search((qt, qm), (dt, dm), k=12, doc_chunk=7, query_batch=2)
  np.testing.assert_array_equal(whole[1], chunked[1])
  np.testing.assert_allclose(whole[0], chunked[0], atol=1e-6)


def test_k_larger_than_chunk_and_all_documents():
  qt, qm, dt, dm = _data(3)
  reference = numpy_maxsim(qt, qm, dt, dm)
  scores, indices = search((qt, qm), (dt, dm), k=30, doc_chunk=8)   # k spans four chunks
  _check_against_reference(scores, indices, reference, 30)
  scores, indices = search((qt, qm), (dt, dm), k=N + 20, doc_chunk=8)  # clamped to N: every document once, no pad
  _check_against_reference(scores, indices, reference, N)
  assert all(sorted(row) == list(range(N)) for row in indices)


@pytest.mark.parametrize("scorer", ["maxsim", "cosine"])
@pytest.mark.parametrize("mesh_shape,names", [((8,), ("data",)), ((4, 2), ("data", "tensor"))])
def test_mesh_equals_single_device(scorer, mesh_shape, names):
  assert jax.device_count() == 8
  qt, qm, dt, dm = _data(4, n=53)  # 53 docs, chunk 12 -> rounded up to 16 per chunk, last chunk mostly padding
  if scorer == "maxsim":
    q, d = (qt, qm), (dt, dm)
  else:
    q, d = qt.mean(axis=1), dt.mean(axis=1)
  single = search(q, d, k=20, scorer=scorer, doc_chunk=12, query_batch=4)
  mesh = jax.make_mesh(mesh_shape, names)  # Explicit axes by default: search must cope
  sharded = search(q, d, k=20, scorer=scorer, doc_chunk=12, query_batch=4, mesh=mesh)
  np.testing.assert_array_equal(single[1], sharded[1])
  np.testing.assert_allclose(single[0], sharded[0], atol=1e-6)
  reference = numpy_maxsim(qt, qm, dt, dm) if scorer == "maxsim" else numpy_cosine(q, d)
  _check_against_reference(*sharded, reference, 20)


def test_ties_go_to_the_lower_index_across_chunks_and_devices():
  # Exactly representable vectors: XLA's dot rounds differently by position, so only exact ties stay ties.
  base = np.zeros((1, D), np.float32)
  base[0, 0], base[0, 5] = 3.0, 4.0
  docs = np.repeat(base, 20, axis=0)  # 20 identical documents
  docs[[3, 17]] = -base                # two worse ones
  mesh = jax.make_mesh((8,), ("data",))
  expected = [i for i in range(20) if i not in (3, 17)] + [3, 17]
  # Zero pad vectors would score cosine 0 > -1 and displace 3 and 17: the padded chunks check pads are masked.
  for kwargs in ({}, {"doc_chunk": 6}, {"doc_chunk": 4, "mesh": mesh}):
    scores, indices = search(base, docs, k=20, scorer="cosine", **kwargs)
    assert list(indices[0]) == expected, kwargs
    np.testing.assert_allclose(scores[0, -2:], -1.0, atol=1e-6)


def test_mesh_shards_document_chunks(monkeypatch):
  search_module = sys.modules["optical_jax.retrieval.search"]
  placed = []
  real_put = jax.device_put
  def recording_put(x, device=None):
    placed.append((np.shape(x), device))
    return real_put(x, device)
  monkeypatch.setattr(search_module.jax, "device_put", recording_put)
  qt, qm, dt, dm = _data(9)
  search((qt, qm), (dt, dm), k=5, doc_chunk=16, mesh=jax.make_mesh((8,), ("data",)))
  doc_puts = [s for shape, s in placed if shape[:1] == (16,)]
  assert doc_puts and all(s.spec[0] in ("data", ("data",)) and len(s.device_set) == 8 for s in doc_puts)


def test_empty_documents_rank_last_and_empty_queries_score_zero():
  qt, qm, dt, dm = _data(6, n=10)
  dm[4] = False                      # a document with no real token
  qm[0] = False                      # a query with no real token
  scores, indices = search((qt, qm), (dt, dm), k=10, doc_chunk=4)
  assert (indices[1:, -1] == 4).all()
  np.testing.assert_allclose(scores[1:, -1], EMPTY_DOC_SCORE)
  assert (scores[0] == 0).all() and list(indices[0]) == list(range(10))


def test_zero_queries():
  qt, qm, dt, dm = _data(7)
  scores, indices = search((qt[:0], qm[:0]), (dt, dm), k=5)
  assert scores.shape == indices.shape == (0, 5)


def test_errors():
  qt, qm, dt, dm = _data(8)
  with pytest.raises(UserError, match="embedding size"):
    search((qt[..., :8], qm), (dt, dm), k=3)
  with pytest.raises(UserError, match="scorer"):
    search((qt, qm), (dt, dm), k=3, scorer="bm25")
  with pytest.raises(UserError, match="maxsim"):
    search(qt[:, 0], (dt, dm), k=3)
  with pytest.raises(UserError, match="cosine"):
    search((qt, qm), dt[:, 0], k=3, scorer="cosine")
  with pytest.raises(UserError, match="≥ 1"):
    search((qt, qm), (dt, dm), k=0)
  with pytest.raises(UserError, match="empty"):
    search((qt, qm), (dt[:0], dm[:0]), k=3)
