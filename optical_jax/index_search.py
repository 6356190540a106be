"""`optical-jax index` and `optical-jax search`: encode a corpus with the teacher once, then search it with a student.

  optical-jax index --config CFG --collection bible_sw_en --out INDEX        # or a BEIR folder, or a documents file
  optical-jax search --index INDEX --student WORKDIR --queries Q.tsv --run OUT.run [--k 100]
  optical-jax search ... --rerank FIRST.run --depth 1000     # score only a first stage's candidates (e.g. BM25)

The index (retrieval/doc_index.py) holds the teacher's passage-mode token vectors; search streams over its shards,
so a corpus larger than RAM works, and keeps an exact top k (MaxSim or pooled cosine).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from optical_jax import export
from optical_jax import metrics as metrics_lib
from optical_jax import models
from optical_jax import sharding as sharding_lib
from optical_jax.config import split_list
from optical_jax.data import collections as collections_lib
from optical_jax.data.teacher import load_teacher, teacher_head, teacher_identity
from optical_jax.errors import UserError
from optical_jax.retrieval import doc_index, trec
from optical_jax.retrieval.collection import read_texts
from optical_jax.retrieval.encode import Encoded, encode_texts
from optical_jax.retrieval.search import rank, top_k

log = logging.getLogger("optical_jax")


def collection_documents(entry: str, ev: ml_collections.ConfigDict) -> dict[str, str]:
  """The documents of a built-in collection name, `irds:NAME`, a BEIR folder (DIR[@SPLIT]), or a documents file."""
  if entry.startswith(collections_lib.IRDS_PREFIX):
    return collections_lib.irds_collection(entry[len(collections_lib.IRDS_PREFIX):]).documents
  path = entry.partition("@")[0]
  if os.path.isdir(path):
    return collections_lib.beir_collection(path, entry.partition("@")[2] or "test").documents
  if os.path.isfile(entry):
    return read_texts(entry, "document")
  if "/" in entry or os.sep in entry:
    raise UserError(f"--collection {entry}: no such file or folder")
  docs: dict[str, str] = {}
  for c in collections_lib.build([entry], num_verses=ev.num_verses, num_topical=ev.num_topical,
                                 num_quran=ev.num_quran, seed=ev.seed):
    docs.update(c.documents)
  return docs


def build_index(config: ml_collections.ConfigDict, collection: str, out: str, *, docs_per_shard: int = 4096
                ) -> dict[str, Any]:
  """Encodes the collection's documents with the config's teacher ("passage" prefix, eval.max_len_doc) into out."""
  if docs_per_shard < 1:
    raise UserError(f"--docs-per-shard must be >= 1, got {docs_per_shard}")
  ev = config.eval
  documents = sorted(collection_documents(collection, ev).items())
  teacher = load_teacher(config)
  max_len = ev.max_len_doc or config.data.max_len_teacher
  identity = {**teacher_identity(config, teacher), "prefix": config.teacher.passage_prefix, "max_len": max_len,
              "maxsim_tokens": ev.maxsim_tokens}
  mesh = None
  if jax.device_count() > 1 and jax.process_count() == 1:
    mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  encode_fn = lambda texts: encode_texts(teacher, texts, prefix=config.teacher.passage_prefix, max_len=max_len,
                                         batch_size=ev.batch_size, head=teacher_head(teacher),
                                         maxsim_tokens=ev.maxsim_tokens, mesh=mesh)
  started = time.perf_counter()
  with tqdm.tqdm(total=len(documents), desc="index", unit="doc", disable=not metrics_lib.progress_enabled()) as bar:
    manifest = doc_index.build(out, documents, encode_fn, identity=identity, docs_per_shard=docs_per_shard,
                               process_index=jax.process_index(), process_count=jax.process_count(),
                               progress=bar.update)
  log.info("index %s: %d documents, %d shards, complete=%s, %.1f s", out, len(documents), len(manifest["shards"]),
           manifest["complete"], time.perf_counter() - started)
  return manifest


def load_search_student(student: str, *, mix: float = 1.0, prefix: str | None = None
                        ) -> tuple[models.Encoder, str, int]:
  """(encoder, query prefix, max query length) from a training workdir (its config.json) or an exported HF dir."""
  if os.path.exists(os.path.join(student, "checkpoints")):
    from optical_jax import config as config_lib
    config = config_lib.from_json(os.path.join(student, "config.json"))
    encoder, _ = export.load_student(student, mix)
    return encoder, config.student.prefix if prefix is None else prefix, int(config.data.max_len_student)
  if mix != 1.0:
    raise UserError("--mix needs a training workdir (an export holds one set of weights)")
  encoder = models.from_pretrained(student)
  return encoder, prefix or "", min(512, encoder.config.max_length)


def search_index(index_dir: str, student: str, queries: str, run_out: str, *, k: int = 100, scorer: str = "maxsim",
                 rerank: str | None = None, depth: int = 1000, mix: float = 1.0, prefix: str | None = None,
                 batch_size: int = 64) -> dict[str, Any]:
  """Writes the TREC run of the student's queries against the index; returns counts and timings."""
  index = doc_index.DocIndex(index_dir)
  if scorer not in ("maxsim", "pooled"):
    raise UserError(f"--scorer must be maxsim or pooled, got {scorer!r}")
  query_texts = read_texts(queries, "query")
  encoder, query_prefix, max_len = load_search_student(student, mix=mix, prefix=prefix)
  if encoder.config.output_dim != index.manifest["dim"]:
    raise UserError(f"{student}: query vectors have {encoder.config.output_dim} dims, the index {index_dir} "
                    f"{index.manifest['dim']}: not the student of this index's teacher")
  started = time.perf_counter()
  qids = list(query_texts)
  q = encode_texts(encoder, [query_texts[i] for i in qids], prefix=query_prefix, max_len=max_len,
                   batch_size=batch_size, maxsim_tokens=index.manifest["maxsim_tokens"], desc="queries")
  if rerank:
    run = _rerank(index, q, qids, trec.read_run(rerank), depth, scorer, k)
  else:
    run = _full_search(index, q, qids, scorer, k)
  trec.write_run(run_out, run, f"optical_jax_{scorer}")
  seconds = time.perf_counter() - started
  log.info("search: %d queries against %d documents in %.1f s -> %s", len(qids), index.num_docs, seconds, run_out)
  return {"queries": len(qids), "documents": index.num_docs, "seconds": seconds}


def _shard_encoded(shard: doc_index.Shard, rows=None) -> Encoded:
  tokens, mask = shard.padded(rows)
  pooled = np.asarray(shard.pooled if rows is None else shard.pooled[np.asarray(list(rows), np.int64)], np.float32)
  return Encoded(tokens, mask, mask, pooled)


def _full_search(index: doc_index.DocIndex, q: Encoded, qids: list[str], scorer: str, k: int
                 ) -> dict[str, dict[str, float]]:
  """Exact top k over every shard: each shard's top k, merged into the running best (ties: lower row first)."""
  best_scores = np.zeros((len(qids), 0), np.float32)
  best_rows = np.zeros((len(qids), 0), np.int64)
  ids: list[str] = []
  for start, shard in tqdm.tqdm(index.shards(), total=len(index.manifest["shards"]), desc="search", unit="shard",
                                disable=not metrics_lib.progress_enabled()):
    scores, rows = rank(q, _shard_encoded(shard), scorer, k=min(k, len(shard.ids)))
    ids.extend(shard.ids)
    merged_scores = np.concatenate([best_scores, scores], axis=1)
    merged_rows = np.concatenate([best_rows, rows + start], axis=1)
    top_scores, cols = top_k(merged_scores, k)
    best_scores, best_rows = top_scores, np.take_along_axis(merged_rows, cols, axis=1)
  return {qid: {ids[r]: float(s) for s, r in zip(best_scores[i], best_rows[i])} for i, qid in enumerate(qids)}


def _rerank(index: doc_index.DocIndex, q: Encoded, qids: list[str], first: dict[str, dict[str, float]], depth: int,
            scorer: str, k: int) -> dict[str, dict[str, float]]:
  """Scores each query's top `depth` first-stage candidates only; candidates missing from the index are counted."""
  where = index.locations
  run, missing = {}, 0
  for i, qid in enumerate(qids):
    ranked = sorted(first.get(qid, {}).items(), key=lambda item: (-item[1], item[0]))[:depth]
    candidates = [d for d, _ in ranked if d in where]
    missing += len(ranked) - len(candidates)
    if not candidates:
      run[qid] = {}
      continue
    tokens, mask, pooled = index.gather(candidates)
    docs = Encoded(tokens, mask, mask, pooled)
    scores, rows = rank(q.take(np.asarray([i])), docs, scorer, k=min(k, len(candidates)))
    run[qid] = {candidates[r]: float(s) for s, r in zip(scores[0], rows[0])}
  if missing:
    log.warning("rerank: %d first-stage candidates are not in the index %s; they were left out", missing, index.root)
  return run
