"""Ranking metrics with trec_eval semantics, written in numpy/python (pytrec_eval and ir_measures are only the test
references: tests/retrieval/test_metrics.py, tests/retrieval/test_metrics_ir_measures.py).

Metric names: "map", "map@K", "ndcg", "ndcg@K", "mrr", "mrr@K", "recall@K", "p@K", "judged@K" (K a positive integer),
e.g. ndcg@20, recall@1000, judged@10.
trec_eval equivalents: map, map_cut.K, ndcg, ndcg_cut.K, recip_rank, (recip_rank on the top K), recall.K, P.K; judged@K
has none (it would be P.K at a relevance level below every grade, which pytrec_eval cannot take) and follows
ir_measures' Judged@K.
ir_measures names: AP, AP@K, nDCG, nDCG@K, RR, RR@K, R@K, P@K, Judged@K.

Semantics (checked against pytrec_eval, which wraps trec_eval 9):
- Ranking: score descending, ties by docid descending in byte order (trec_eval sorts by sim, then strcmp(docno) desc;
  e.g. equal scores rank "c" > "b" > "a9" > "a10"). The rank column of a run file is ignored, as in trec_eval.
- A document is relevant when its grade is ≥ 1; unjudged documents are non-relevant.
- nDCG uses the grade itself as the gain (negative grades count 0) and the discount log2(rank + 1); the ideal ranking
  is every judged document sorted by gain, cut at the same depth. MAP and MRR use the whole ranking; MRR@K only the
  top K. P@K divides by K even when fewer than K documents were retrieved.
- Judged@K (as ir_measures): the fraction of the top K retrieved documents that have any qrels entry for the query,
  whatever its grade (0 and negative included). Unlike P@K it divides by min(K, number retrieved), so a short ranking
  of judged documents scores 1; nothing retrieved scores 0 (where ir_measures would divide by zero).
- Ties under ir_measures: its trec_eval-backed measures (AP, nDCG, RR, R@K, P@K) break ties as above, but its own
  RR@K (MS MARCO code) and Judged@K sort equal scores by docid ascending, so on tied scores they can disagree with
  ours and with trec_eval; rankings without ties agree.
- Which queries count (our convention, = `trec_eval -c`): every query in the qrels with at least one relevant
  document. Queries in the qrels with no relevant document are skipped (trec_eval would report them as 0).
  Queries in the qrels but missing from the run score 0 on every metric (plain trec_eval and pytrec_eval leave them
  out of the mean; ir_measures reports them as 0, like us). Queries in the run but not in the qrels are ignored. The
  mean is over the counted queries, so it differs from ir_measures' mean when the qrels hold queries without a
  relevant document (ir_measures counts those: 0 on most metrics, but Judged@K can be above 0).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from optical_jax.errors import UserError
from optical_jax.retrieval import significance
from optical_jax.retrieval.trec import rank_documents

DEFAULT_METRICS = ("map", "ndcg@10", "mrr@10", "recall@100", "p@10")

_NAME = re.compile(r"^(map|ndcg|mrr|recall|p|judged)(?:@([1-9][0-9]*))?$")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """A parsed metric name: kind in {map, ndcg, mrr, recall, p, judged}; cutoff None = the whole ranking."""
  name: str
  kind: str
  cutoff: int | None


def parse_metric(name: str) -> MetricSpec:
  """'ndcg@10' -> MetricSpec('ndcg@10', 'ndcg', 10). Unknown names raise UserError."""
  m = _NAME.match(name.strip().lower())
  if not m:
    raise UserError(f"unknown metric {name!r}; use map, map@K, ndcg, ndcg@K, mrr, mrr@K, recall@K, p@K or judged@K "
                    f"(e.g. ndcg@20, recall@1000, judged@10)")
  kind, cutoff = m.group(1), m.group(2)
  if kind in ("recall", "p", "judged") and cutoff is None:
    raise UserError(f"metric {name!r} needs a cutoff, e.g. {kind}@10")
  return MetricSpec(name, kind, int(cutoff) if cutoff else None)


def _dcg(gains: np.ndarray) -> float:
  return float(np.sum(gains / np.log2(np.arange(2, gains.size + 2))))


def _query_metrics(judged: Mapping[str, int], doc_scores: Mapping[str, float],
                   specs: Sequence[MetricSpec]) -> dict[str, float]:
  ranked = [docid for docid, _ in rank_documents(doc_scores)]
  grades = np.array([judged.get(d, 0) for d in ranked], dtype=np.float64)
  relevant = grades >= 1
  num_rel = sum(1 for g in judged.values() if g >= 1)
  ideal = np.sort(np.maximum(np.array(list(judged.values()), dtype=np.float64), 0.0))[::-1]
  hits = np.cumsum(relevant)
  out = {}
  for spec in specs:
    k = len(ranked) if spec.cutoff is None else spec.cutoff
    if spec.kind == "map":
      ranks = np.nonzero(relevant[:k])[0]
      out[spec.name] = float(np.sum(hits[ranks] / (ranks + 1)) / num_rel)
    elif spec.kind == "ndcg":
      # Uncut nDCG's ideal ranking holds every judged document, however few were retrieved.
      idcg = _dcg(ideal if spec.cutoff is None else ideal[:k])
      out[spec.name] = _dcg(np.maximum(grades[:k], 0.0)) / idcg
    elif spec.kind == "mrr":
      first = np.nonzero(relevant[:k])[0]
      out[spec.name] = 1.0 / float(first[0] + 1) if first.size else 0.0
    elif spec.kind == "recall":
      out[spec.name] = float(np.sum(relevant[:k])) / num_rel
    elif spec.kind == "p":
      out[spec.name] = float(np.sum(relevant[:k])) / k
    elif spec.kind == "judged":
      top = ranked[:k]
      out[spec.name] = sum(d in judged for d in top) / len(top) if top else 0.0
  return out


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Scores `run` ({qid: {docid: score}}) against `qrels` ({qid: {docid: grade}}).

  Returns (mean, per_query): mean[metric] over the counted queries (see the module docstring: every qrels query with
  a relevant document; ones missing from the run score 0), per_query[qid][metric] for those same queries.
  With no counted query the means are NaN.
  """
  specs = [parse_metric(m) for m in metrics]
  per_query: dict[str, dict[str, float]] = {}
  for qid in sorted(qrels):
    judged = qrels[qid]
    if not any(g >= 1 for g in judged.values()):
      continue
    doc_scores = {d: float(s) for d, s in run.get(qid, {}).items() if not math.isnan(float(s))}
    per_query[qid] = _query_metrics(judged, doc_scores, specs)
  mean = {s.name: (float(np.mean([pq[s.name] for pq in per_query.values()])) if per_query else float("nan"))
          for s in specs}
  return mean, per_query


def paired_difference(per_query_a: Mapping[str, Mapping[str, float]], per_query_b: Mapping[str, Mapping[str, float]],
                      metric: str) -> dict[str, float]:
  """System a minus system b on one metric, paired by query: the mean difference, its standard error, and the
  two-sided p-values of a paired t-test and of a randomisation test (retrieval/significance.py).

  Two students evaluated on the same queries differ by far less than either metric's spread over queries, so the
  unpaired means say little about which is better; the per-query differences do. Both must count the same queries
  (`evaluate_run`'s per_query of one qrels).
  """
  if set(per_query_a) != set(per_query_b):
    raise ValueError(f"paired_difference: the two systems count different queries "
                     f"({len(per_query_a)} vs {len(per_query_b)})")
  queries = sorted(per_query_a)
  a = np.asarray([per_query_a[q][metric] for q in queries], np.float64)
  b = np.asarray([per_query_b[q][metric] for q in queries], np.float64)
  diffs = a - b
  n = len(diffs)
  se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  return {"diff": float(np.mean(diffs)) if n else float("nan"), "se": se, "n": n,
          "wins": int(np.sum(diffs > 0)), "losses": int(np.sum(diffs < 0)), **significance.paired_tests(a, b)}
