"""Cross-lingual retrieval evaluation of retrieval systems, and `optical-jax evaluate --config CFG --workdir DIR`.

A *system* encodes queries (an encoder, a text prefix, and whether it reads the low-resource query or its English
translation); every system searches the same English documents, encoded once by the teacher (`passage_prefix`).
Each system is scored two ways: `maxsim` (ColBERT late interaction over token vectors; by default over content
tokens only, i.e. without <s>/[CLS], the prefix pieces and </s>/[SEP] on either side) and `pooled` (cosine of the
mean of all real token vectors: the standard E5 / sentence-transformers pooling). A result is named
SYSTEM_SCORER, e.g. `optical_maxsim`.

Written to OUT (= DIR/eval for the CLI): `COLLECTION.qrels`, `SYSTEM_SCORER/COLLECTION.run` (TREC, top k),
`metrics.json` = {"systems": {SYSTEM_SCORER: {COLLECTION: {METRIC: value}}}, "collections": {...}, ...}. Every
metric is computed from the run file's scores as written (retrieval.metrics, equal to trec_eval), so it can be
recomputed from the run and qrels files alone.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from optical_jax import metrics as train_metrics
from optical_jax.data import collections as collections_lib
from optical_jax.errors import UserError
from optical_jax.retrieval import metrics as metrics_lib
from optical_jax.retrieval.search import EMPTY_DOC_SCORE
from optical_jax.retrieval.search import search as retrieval_search
from optical_jax.retrieval import trec

log = logging.getLogger("optical_jax")

SCORERS = {"maxsim": "maxsim", "pooled": "cosine"}  # our name -> retrieval.search scorer
METRICS = metrics_lib.DEFAULT_METRICS  # map, ndcg@10, mrr@10, recall@100, p@10
_WIDTH = 16  # encoding batches are cut to a multiple of this many tokens


@dataclasses.dataclass
class System:
  """How one retrieval system encodes queries."""
  name: str
  encoder: Any  # models.Encoder
  prefix: str = ""
  head: bool = True  # apply the encoder's projection head (a student trained through one)
  english: bool = False  # read the collection's English translation of each query (teacher_en)


@dataclasses.dataclass
class Encoded:
  """Token vectors [n, L, D] float16, all-real-token mask, MaxSim-token mask, pooled [n, D] float32 (unit)."""
  tokens: np.ndarray
  mask: np.ndarray
  maxsim_mask: np.ndarray
  pooled: np.ndarray

  def take(self, rows: np.ndarray) -> Encoded:
    return Encoded(self.tokens[rows], self.mask[rows], self.maxsim_mask[rows], self.pooled[rows])


def _progress() -> bool:
  return train_metrics.progress_enabled()


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
  from optical_jax.data import store_source
  from optical_jax.retrieval import pool_embeddings
  if maxsim_tokens not in ("content", "all"):
    raise UserError(f"config: eval.maxsim_tokens must be 'content' or 'all', got {maxsim_tokens!r}")
  params, put = encoder.params, lambda x: x
  if mesh is not None:
    from optical_jax import sharding as sharding_lib
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
  with tqdm.tqdm(total=n, desc=desc, unit="text", disable=not _progress(), leave=False) as bar:
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
    skip = 1 + store_source.prefix_length(encoder.tokenizer, prefix)
    maxsim_mask = store_source.content_mask(mask.astype(np.int32), skip).astype(bool)
  else:
    maxsim_mask = mask
  return Encoded(tokens, mask, maxsim_mask, pooled)


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
    return retrieval_search((queries.tokens, queries.maxsim_mask), (docs.tokens, docs.maxsim_mask), k=k,
                            scorer="maxsim", mesh=mesh)
  if scorer == "pooled":
    return retrieval_search(queries.pooled, docs.pooled, k=k, scorer="cosine", mesh=mesh)
  raise UserError(f"config: unknown scorer {scorer!r}; use {', '.join(SCORERS)}")


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
                     shard: bool = True) -> dict[str, Any]:
  """Runs every system on every collection; writes runs, qrels and metrics.json into out_dir; returns metrics.

  With several devices and `shard`, encoding batches and document chunks are split over all of them.
  """
  for s in scorers:
    if s not in SCORERS:
      raise UserError(f"config: unknown scorer {s!r}; use {', '.join(SCORERS)}")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  mesh = None
  if shard and jax.device_count() > 1:
    from optical_jax import sharding as sharding_lib
    mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  started = time.perf_counter()
  docs = _all_documents(collections)
  doc_ids = list(docs)
  doc_row = {d: i for i, d in enumerate(doc_ids)}
  log.info("encoding %d English documents with the teacher", len(doc_ids))
  doc_enc = encode_texts(doc_encoder, [docs[d] for d in doc_ids], prefix=doc_prefix, max_len=max_len_doc,
                         batch_size=batch_size, head=False, maxsim_tokens=maxsim_tokens, mesh=mesh,
                         desc="documents (teacher)")
  for c in collections:
    trec.write_qrels(os.path.join(out_dir, f"{c.name}.qrels"), c.qrels)

  results: dict[str, dict[str, dict[str, float]]] = {}
  timings: dict[str, float] = {}
  for system in systems:
    t0 = time.perf_counter()
    texts = sorted({t for c in collections if _query_texts(system, c) for t in _query_texts(system, c).values()})
    if not texts:
      continue
    enc = encode_texts(system.encoder, texts, prefix=system.prefix, max_len=max_len_query, batch_size=batch_size,
                       head=system.head, maxsim_tokens=maxsim_tokens, mesh=mesh, desc=f"queries ({system.name})")
    text_row = {t: i for i, t in enumerate(texts)}
    jobs = [(c, s) for c in collections if _query_texts(system, c) for s in scorers]
    for c, scorer in tqdm.tqdm(jobs, desc=f"search ({system.name})", disable=not _progress(), leave=False):
      query_texts = _query_texts(system, c)
      qids = list(query_texts)
      q = enc.take(np.asarray([text_row[query_texts[qid]] for qid in qids]))
      rows = np.asarray([doc_row[d] for d in c.documents])
      scores, index = rank(q, doc_enc.take(rows), scorer, k=k + int(c.exclude_self), mesh=mesh)
      run = {}
      for qid, s_row, i_row in zip(qids, scores, index):
        ranked = [(doc_ids[rows[i]], float(s)) for s, i in zip(s_row, i_row)]
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
                               "language": c.language, "description": c.description} for c in collections},
      "scorers": list(scorers), "maxsim_tokens": maxsim_tokens, "k": k, "metrics": list(metrics),
      "seconds": {"total": time.perf_counter() - started, **timings},
  }
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary


# ------------------------------------------------------------------------------------------ config -> systems


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.eval with defaults filled in (configs without an eval section evaluate files only)."""
  defaults = dict(system="", collections="", files="", num_verses=1000, num_topical=300, num_quran=0, seed=0,
                  max_len_query=config.data.max_len_student, max_len_doc=config.data.max_len_teacher,
                  batch_size=64, k=100, scorers="maxsim,pooled", maxsim_tokens="content",
                  baselines="teacher_en,zero_shot")
  given = config.get("eval") or ml_collections.ConfigDict()
  out = ml_collections.ConfigDict(defaults)
  for key in given:
    if key not in defaults:
      raise UserError(f"config: unknown key eval.{key}; known: {', '.join(sorted(defaults))}")
    out[key] = given[key]
  return out


def _split(text: str) -> list[str]:
  return [t.strip() for t in str(text).split(",") if t.strip()]


def load_collections(ev: ml_collections.ConfigDict) -> list[collections_lib.EvalCollection]:
  out = collections_lib.build(_split(ev.collections), num_verses=ev.num_verses, num_topical=ev.num_topical,
                              num_quran=ev.num_quran, seed=ev.seed) if _split(ev.collections) else []
  if ev.files:
    paths = _split(ev.files)
    if len(paths) != 3:
      raise UserError(f"config: eval.files must be 'QUERIES,DOCUMENTS,QRELS', got {ev.files!r}")
    out.append(collections_lib.file_collection(*paths))
  if not out:
    raise UserError("config: nothing to evaluate: set eval.collections and/or eval.files")
  return out


def system_name(config: ml_collections.ConfigDict) -> str:
  """The trained student's name: eval.system, else from the loss weights (optical / mse_distill / optical_mse)."""
  given = eval_config(config).system
  if given:
    return given
  loss = config.get("loss") or ml_collections.ConfigDict(dict(ot_weight=1.0, mse_weight=0.0))
  ot, mse = float(loss.get("ot_weight", 1.0)), float(loss.get("mse_weight", 0.0))
  return "optical_mse" if ot and mse else ("mse_distill" if mse else "optical")


def initial_student(config: ml_collections.ConfigDict, workdir):
  """The student as training starts (step 0): the zero_shot baseline."""
  from optical_jax import models
  if config.student.init != "random" and not config.student.get("projection_dim", 0):
    return models.from_pretrained(config.student.init, dtype=config.student.get("dtype", "float32"))
  from optical_jax import sharding as sharding_lib
  from optical_jax import train_step as train_step_lib
  from optical_jax.data import training_data
  data = training_data.build(config, workdir)
  model, init_params = training_data.build_student(config, data)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  state, _ = train_step_lib.create_train_state(model, train_step_lib.make_optimizer(config), config, mesh,
                                               jax.random.key(config.seed), init_params=init_params)
  tokenizer = data.tokenizer
  if config.student.init != "random":
    tokenizer = tokenizer or models.from_pretrained(config.student.init).tokenizer
  return models.Encoder(module=model, params=jax.device_get(state.params), tokenizer=tokenizer, config=model.config)


def baseline_systems(config: ml_collections.ConfigDict, teacher, workdir) -> list[System]:
  """eval.baselines: teacher_en (teacher, English queries), teacher_lr (teacher, low-resource queries), zero_shot."""
  out = []
  for name in _split(eval_config(config).baselines):
    if name == "teacher_en":
      out.append(System("teacher_en", teacher, config.teacher.query_prefix, head=False, english=True))
    elif name == "teacher_lr":
      out.append(System("teacher_lr", teacher, config.teacher.query_prefix, head=False))
    elif name == "zero_shot":
      out.append(System("zero_shot", initial_student(config, workdir), config.student.get("prefix", "")))
    else:
      raise UserError(f"config: unknown eval.baselines entry {name!r}; use teacher_en, teacher_lr, zero_shot")
  return out


def run_evaluation(config: ml_collections.ConfigDict, collections, systems: Sequence[System], teacher,
                   out_dir) -> dict[str, Any]:
  ev = eval_config(config)
  return evaluate_systems(collections, systems, teacher, out_dir, doc_prefix=config.teacher.get("passage_prefix", ""),
                          scorers=_split(ev.scorers), k=ev.k, max_len_query=ev.max_len_query,
                          max_len_doc=ev.max_len_doc, batch_size=ev.batch_size, maxsim_tokens=ev.maxsim_tokens)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, baselines: bool = True) -> dict[str, Any]:
  """`optical-jax evaluate`: the workdir's trained student (+ baselines) on the configured collections."""
  from optical_jax import export, precompute
  ev = eval_config(config)
  collections = load_collections(ev)
  student, step = export.load_student(workdir)
  teacher = precompute.load_teacher(config)
  systems = baseline_systems(config, teacher, workdir) if baselines else []
  systems.append(System(system_name(config), student, config.student.get("prefix", "")))
  summary = run_evaluation(config, collections, systems, teacher, os.path.join(workdir, "eval"))
  summary["student_step"] = step
  with open(os.path.join(workdir, "eval", "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  print(format_table(summary))
  return summary


def format_table(summary: dict[str, Any], metrics: Sequence[str] = ("mrr@10", "ndcg@10", "map", "recall@100"),
                 markdown: bool = False) -> str:
  """SYSTEM_SCORER rows x (collection, metric) columns; '-' where a system was not run on a collection."""
  collections = list(summary["collections"])
  header = ["system"] + [f"{c} {m}" for c in collections for m in metrics]
  rows = []
  for name, per in summary["systems"].items():
    cells = [f"{per[c][m]:.3f}" if c in per and m in per[c] else "-" for c in collections for m in metrics]
    rows.append([name] + cells)
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
  return "\n".join([fmt(header)] + [fmt(r) for r in rows])
