"""Retrieval runs: every system's queries against the same English documents, scored, written as TREC files.

A *system* encodes queries (an encoder, a text prefix, and whether it reads the low-resource query or its English
translation); every system searches the same English documents, encoded once by the teacher (`passage_prefix`).
Each system is scored two ways: `maxsim` (ColBERT late interaction over token vectors; by default over content
tokens only) and `pooled` (cosine of the mean of all real token vectors: the standard E5 / sentence-transformers
pooling). A result is named SYSTEM_SCORER, e.g. `optical_maxsim`.

Written to OUT: `COLLECTION.qrels`, `SYSTEM_SCORER/COLLECTION.run` (TREC, top k), `metrics.json` =
{"systems": {SYSTEM_SCORER: {COLLECTION: {METRIC: value}}}, "collections": {...}, ...}. Every metric is computed
from the run file's scores as written (retrieval.metrics, equal to trec_eval), so it can be recomputed from the run
and qrels files alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from optical_jax import metrics as train_metrics
from optical_jax import sharding as sharding_lib
from optical_jax.data import collections as collections_lib
from optical_jax.data.teacher import teacher_head
from optical_jax.errors import UserError
from optical_jax.retrieval import doc_index
from optical_jax.retrieval import encode as encode_lib
from optical_jax.retrieval import metrics as metrics_lib
from optical_jax.retrieval import passages
from optical_jax.retrieval import trec
from optical_jax.retrieval.encode import encode_texts
from optical_jax.retrieval.search import rank

log = logging.getLogger("optical_jax")

SCORERS = ("maxsim", "pooled")
PASSAGE_DEPTH_FACTOR = 10  # passages ranked per query: up to this many times k (documents split into passages)
METRICS = metrics_lib.DEFAULT_METRICS  # map, ndcg@10, mrr@10, recall@100, p@10


@dataclasses.dataclass
class System:
  """How one retrieval system encodes queries."""
  name: str
  encoder: Any  # models.Encoder
  prefix: str = ""
  head: bool = True  # apply the encoder's projection head (a student trained through one)
  english: bool = False  # read the collection's English translation of each query (teacher_en)


def _all_documents(collections: Sequence[collections_lib.EvalCollection]) -> dict[str, str]:
  docs: dict[str, str] = {}
  for c in collections:
    for docid, text in c.documents.items():
      if docs.setdefault(docid, text) != text:
        raise UserError(f"collection {c.name}: document {docid!r} has another text in an earlier collection")
  return docs


def _query_texts(system: System, c: collections_lib.EvalCollection) -> dict[str, str] | None:
  return c.english_queries if system.english else c.queries


def evaluate_systems(collections: Sequence[collections_lib.EvalCollection], systems: Sequence[System], doc_encoder,
                     out_dir: str | os.PathLike, *, doc_prefix: str = "", scorers: Sequence[str] = ("maxsim", "pooled"),
                     k: int = 100, max_len_query: int = 48, max_len_doc: int = 48, batch_size: int = 64,
                     maxsim_tokens: str = "content", metrics: Sequence[str] = METRICS,
                     shard: bool = True, doc_window: int = 0, doc_stride: int = 0,
                     doc_aggregate: str = "maxp", indexes: Sequence[Any] = ()) -> dict[str, Any]:
  """Runs every system on every collection; writes runs, qrels and metrics.json into out_dir; returns metrics.

  With several devices and `shard`, encoding batches and document chunks are split over all of them. With
  doc_window > 0, documents are searched as passages of that many words (retrieval/passages.py) and scored by
  doc_aggregate. `indexes` (retrieval.doc_index.DocIndex, built by the same teacher with the same prefix and token
  rule: the caller checks) replace encoding for every document length they were built at and together cover (each
  document is read from the first index that holds it).
  A teacher with a projection head (a ColBERT checkpoint's) encodes documents through it, and so does every system
  that runs the teacher itself (teacher_en, teacher_lr): its queries must be in its documents' space.
  """
  for s in scorers:
    if s not in SCORERS:
      raise UserError(f"unknown scorer {s!r}; use {', '.join(SCORERS)}")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  mesh = None
  if shard and jax.device_count() > 1:
    mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  started = time.perf_counter()
  _all_documents(collections)  # one id, one text, across every collection
  # What is searched: every document whole, or its passages (parent: passage id -> document id).
  units, parent = {}, {}
  for c in collections:
    units[c.name], c_parent = passages.split(c.documents, doc_window, doc_stride or doc_window, doc_aggregate)
    parent.update(c_parent)
  docs = {pid: text for c in collections for pid, text in units[c.name].items()}
  most = max(Counter(parent.values()).values(), default=1)  # passages of the most-split document
  # Documents are encoded once per length: a collection may ask for longer ones (e.g. passages).
  doc_len = lambda c: c.max_len_doc or max_len_doc
  encoded_docs = {}  # length -> (unit ids, id -> row, Encoded)
  sources = {}  # length -> the indexes its documents were read from
  for length in sorted({doc_len(c) for c in collections}):
    ids = list(dict.fromkeys(d for c in collections if doc_len(c) == length for d in units[c.name]))
    found = doc_index.gather_from([x for x in indexes if x.manifest["max_len"] == length], ids)
    if found is not None:
      (tokens, mask, pooled), read = found
      sources[length] = ",".join(x.root for x in read)
      log.info("read %d English documents (up to %d tokens) from the index %s", len(ids), length, sources[length])
      encoded = encode_lib.Encoded(tokens, mask, mask, pooled)
    else:
      if indexes:
        log.warning("the indexes (built at %s tokens) do not hold all %d documents of up to %d tokens: encoding them",
                    sorted({x.manifest["max_len"] for x in indexes}), len(ids), length)
      log.info("encoding %d English documents with the teacher (up to %d tokens)", len(ids), length)
      encoded = encode_texts(doc_encoder, [docs[d] for d in ids], prefix=doc_prefix, max_len=length,
                             batch_size=batch_size, head=teacher_head(doc_encoder), maxsim_tokens=maxsim_tokens,
                             mesh=mesh, desc="documents (teacher)")
    encoded_docs[length] = (ids, {d: i for i, d in enumerate(ids)}, encoded)
  for c in collections:
    trec.write_qrels(os.path.join(out_dir, f"{c.name}.qrels"), c.qrels)

  results: dict[str, dict[str, dict[str, float]]] = {}
  timings: dict[str, float] = {}
  for system in systems:
    t0 = time.perf_counter()
    texts = sorted({t for c in collections if _query_texts(system, c) for t in _query_texts(system, c).values()})
    if not texts:
      continue
    # The teacher's baselines ask for no head (an HF teacher has none); a ColBERT teacher's documents went through
    # its head, so its own queries must too.
    head = system.head or (system.encoder is doc_encoder and teacher_head(doc_encoder))
    enc = encode_texts(system.encoder, texts, prefix=system.prefix, max_len=max_len_query, batch_size=batch_size,
                       head=head, maxsim_tokens=maxsim_tokens, mesh=mesh, desc=f"queries ({system.name})")
    text_row = {t: i for i, t in enumerate(texts)}
    jobs = [(c, s) for c in collections if _query_texts(system, c) for s in scorers]
    for c, scorer in tqdm.tqdm(jobs, desc=f"search ({system.name})", disable=not train_metrics.progress_enabled(), leave=False):
      query_texts = _query_texts(system, c)
      qids = list(query_texts)
      q = enc.take(np.asarray([text_row[query_texts[qid]] for qid in qids]))
      doc_ids, doc_row, doc_enc = encoded_docs[doc_len(c)]
      rows = np.asarray([doc_row[d] for d in units[c.name]])
      # Enough passages that k documents survive the merge (a document can fill up to `most` of them).
      depth = min(len(rows), (k + int(c.exclude_self)) * min(most, PASSAGE_DEPTH_FACTOR))
      scores, index = rank(q, doc_enc.take(rows), scorer, k=depth, mesh=mesh)
      run = {}
      for qid, s_row, i_row in zip(qids, scores, index):
        ranked = [(doc_ids[rows[i]], float(s)) for s, i in zip(s_row, i_row)]
        ranked = passages.to_documents(ranked, parent, k + int(c.exclude_self))
        if c.exclude_self:
          ranked = [(d, s) for d, s in ranked if d != qid]
        run[qid] = dict(ranked[:k])
      name = f"{system.name}_{scorer}"
      trec.write_run(os.path.join(out_dir, name, f"{c.name}.run"), run, name)
      # Scored from the run as written (same floats): the figures are recomputable from the files.
      mean, _ = metrics_lib.evaluate_run(c.qrels, trec.read_run(os.path.join(out_dir, name, f"{c.name}.run")),
                                         metrics)
      results.setdefault(name, {})[c.name] = mean
    timings[system.name] = time.perf_counter() - t0
  summary = {
      "systems": results,
      "collections": {c.name: {"queries": len(c.queries), "documents": len(c.documents),
                               "relevant": sum(len(j) for j in c.qrels.values()), "exclude_self": c.exclude_self,
                               "language": c.language, "description": c.description,
                               "max_len_doc": doc_len(c), "passages": len(units[c.name]),
                               "index": sources.get(doc_len(c), "")} for c in collections},
      "doc_window": doc_window, "doc_stride": doc_stride or doc_window, "doc_aggregate": doc_aggregate,
      "scorers": list(scorers), "maxsim_tokens": maxsim_tokens, "k": k, "metrics": list(metrics),
      "seconds": {"total": time.perf_counter() - started, **timings},
  }
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary
