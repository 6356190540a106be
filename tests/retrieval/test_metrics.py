"""metrics.evaluate_run against pytrec_eval (trec_eval 9) and hand-computed values."""
import math
import random

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings, strategies as st

from optical_jax.errors import UserError
from optical_jax.retrieval import metrics
from optical_jax.retrieval.metrics import evaluate_run, parse_metric
from optical_jax.retrieval.trec import rank_documents

# Uncut nDCG is checked against ndcg_cut.1000 (the same thing for < 1000 judged and retrieved documents): pytrec_eval's
# own "ndcg" can loop forever (seen after a query judged only with negative grades), so it is never called here.
OURS_TO_TREC = {"map": "map", "ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "p@10": "P_10",
                "mrr": "recip_rank", "ndcg": "ndcg_cut_1000"}
TREC_MEASURES = {"map", "ndcg_cut.10", "recip_rank", "recall.100", "P.10", "ndcg_cut.1000"}
METRICS = ("map", "ndcg@10", "mrr@10", "recall@100", "p@10", "mrr", "ndcg")


def _truncate(run, depth):
  return {q: dict(rank_documents(docs)[:depth]) for q, docs in run.items()}


def _assert_matches_pytrec_eval(qrels, run):
  mean, per_query = evaluate_run(qrels, run, METRICS)
  reference = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
  top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_truncate(run, 10))
  counted = {q for q, judged in qrels.items() if any(g >= 1 for g in judged.values())}
  assert set(per_query) == counted
  # pytrec_eval only reports queries that are in the run: compare on the queries in both.
  for qid in counted & set(run):
    for ours, theirs in OURS_TO_TREC.items():
      assert per_query[qid][ours] == pytest.approx(reference[qid][theirs], abs=1e-6), (qid, ours)
    assert per_query[qid]["mrr@10"] == pytest.approx(top10[qid]["recip_rank"], abs=1e-6), qid
  # Our convention: counted queries missing from the run score 0 and stay in the mean (trec_eval -c).
  for qid in counted - set(run):
    assert all(v == 0.0 for v in per_query[qid].values())
  if counted:
    total = sum(reference[q][OURS_TO_TREC["map"]] for q in counted & set(run))
    assert mean["map"] == pytest.approx(total / len(counted), abs=1e-9)


def _random_case(rng: random.Random, num_queries=12, num_docs=40):
  doc_ids = [f"d{i}" for i in range(num_docs)]  # "d10" < "d9" lexically: exercises trec_eval's docid tie order
  qrels, run = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    judged = rng.sample(doc_ids, rng.randint(1, 15))
    qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
    if rng.random() < 0.15:
      continue  # missing from the run
    retrieved = rng.sample(doc_ids, rng.randint(1, num_docs))
    # Few distinct scores -> many ties.
    run[qid] = {d: float(rng.choice([0.1, 0.25, 0.5, 0.75, 1.0, rng.random()])) for d in retrieved}
  qrels["q_no_relevant"] = {"d1": 0, "d2": -1}
  run["q_no_relevant"] = {"d1": 1.0}
  run["q_not_judged"] = {"d3": 1.0}
  return qrels, run


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_match_pytrec_eval(seed):
  qrels, run = _random_case(random.Random(seed))
  _assert_matches_pytrec_eval(qrels, run)


def test_more_than_100_retrieved_and_long_rankings():
  rng = random.Random(7)
  docs = [f"doc{i:04d}" for i in range(300)]
  qrels = {"q": {d: rng.choice([0, 1, 2]) for d in rng.sample(docs, 120)}}
  run = {"q": {d: rng.random() for d in docs}}
  _assert_matches_pytrec_eval(qrels, run)


def test_hand_computed_example():
  # Ties at 1.0 rank c, b, a (docid descending); rel: c=2, b=0, a=1, d=1 -> relevant at ranks 1, 3, 4.
  qrels = {"q": {"a": 1, "b": 0, "c": 2, "d": 1}}
  run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}}
  _, per_query = evaluate_run(qrels, run, ("map", "mrr@10", "p@10", "recall@100", "ndcg@10", "mrr@2"))
  pq = per_query["q"]
  assert pq["map"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
  assert pq["mrr@10"] == 1.0
  assert pq["p@10"] == pytest.approx(0.3)
  assert pq["recall@100"] == 1.0
  dcg = 2 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(5)
  idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
  assert pq["ndcg@10"] == pytest.approx(dcg / idcg)


def test_mrr_cutoff_and_missing_query_convention():
  qrels = {"q1": {"x": 1}, "q2": {"y": 1}, "q3": {"z": 0}}
  run = {"q1": {f"n{i}": 20.0 - i for i in range(12)} | {"x": 0.5}}  # x at rank 13
  mean, per_query = evaluate_run(qrels, run, ("mrr@10", "mrr"))
  assert set(per_query) == {"q1", "q2"}  # q3 has no relevant document: skipped
  assert per_query["q1"]["mrr@10"] == 0.0
  assert per_query["q1"]["mrr"] == pytest.approx(1 / 13)
  assert per_query["q2"] == {"mrr@10": 0.0, "mrr": 0.0}
  assert mean["mrr"] == pytest.approx(1 / 13 / 2)


def test_no_counted_queries_gives_nan():
  mean, per_query = evaluate_run({"q": {"d": 0}}, {"q": {"d": 1.0}}, ("map",))
  assert per_query == {} and np.isnan(mean["map"])


@pytest.mark.parametrize("name", ["mapp", "ndcg@0", "p", "recall", "ndcg@-3", "bleu@4"])
def test_bad_metric_names(name):
  with pytest.raises(UserError, match="metric"):
    parse_metric(name)


def test_metric_name_parsing():
  assert parse_metric("nDCG@10").kind == "ndcg" and parse_metric("nDCG@10").cutoff == 10
  assert parse_metric("map").cutoff is None


_ids = st.sampled_from([f"d{i}" for i in range(12)] + ["a", "b", "a9", "a10"])
_qrels = st.dictionaries(st.sampled_from(["q1", "q2", "q3"]), st.dictionaries(_ids, st.integers(-1, 3), min_size=1),
                         min_size=1)
_runs = st.dictionaries(st.sampled_from(["q1", "q2", "q3", "q4"]),
                        st.dictionaries(_ids, st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.25]), min_size=1))


@settings(max_examples=60, deadline=None)
@given(qrels=_qrels, run=_runs)
def test_property_matches_pytrec_eval(qrels, run):
  _assert_matches_pytrec_eval(qrels, run)


@settings(max_examples=40, deadline=None)
@given(qrels=_qrels)
def test_property_ideal_run_scores_one(qrels):
  # Ranking every judged document by its grade is ideal: nDCG = 1; MAP = MRR = 1 (relevant ones come first).
  run = {q: {d: float(g) for d, g in judged.items()} for q, judged in qrels.items()}
  _, per_query = evaluate_run(qrels, run, ("map", "ndcg@10", "mrr@10", "ndcg"))
  for values in per_query.values():
    for v in values.values():
      assert v == pytest.approx(1.0)


def test_paired_difference_against_a_hand_computed_example():
  qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
  run_a = {"q1": {"d1": 2.0, "x": 1.0}, "q2": {"x": 2.0, "d2": 1.0}, "q3": {"d3": 1.0}}   # RR 1, 1/2, 1
  run_b = {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"d2": 1.0}, "q3": {"x": 3.0, "y": 2.0, "d3": 1.0}}  # 1/2, 1, 1/3
  _, per_a = metrics.evaluate_run(qrels, run_a, ["mrr@10"])
  _, per_b = metrics.evaluate_run(qrels, run_b, ["mrr@10"])
  diffs = np.array([0.5, -0.5, 2 / 3])
  got = metrics.paired_difference(per_a, per_b, "mrr@10")
  assert got["diff"] == pytest.approx(diffs.mean())
  assert got["se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))
  assert (got["n"], got["wins"], got["losses"]) == (3, 2, 1)
  with pytest.raises(ValueError, match="different queries"):
    metrics.paired_difference(per_a, {"q1": per_b["q1"]}, "mrr@10")
