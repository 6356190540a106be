"""metrics.evaluate_run against ir_measures, per query (abs 1e-6), on a hand-made and on hypothesis-made fixtures.

ir_measures routes each measure to a provider: AP, RR, nDCG@K, R@K and P@K go to pytrec_eval (trec_eval 9), RR@K to
its copy of the MS MARCO script, Judged@K to its own python code. The two python providers sort equal scores by docid
ascending, trec_eval (and we) by docid descending, so those two measures are compared on a tie-free copy of the run
that keeps our order (`_untie`); the trec_eval-backed ones are compared on the run as it is, ties and all.
"""
import random

import ir_measures
import pytest
from hypothesis import given, settings, strategies as st

from optical_jax.errors import UserError
from optical_jax.retrieval.metrics import evaluate_run, parse_metric
from optical_jax.retrieval.trec import rank_documents

# Our metric name -> ir_measures measure (map is uncut AP; relevant means grade >= 1 in both, ir_measures' rel=1).
OURS_TO_IR_MEASURES = {
    "map": "AP",
    "ndcg@10": "nDCG@10",
    "ndcg@20": "nDCG@20",
    "mrr@10": "RR@10",
    "mrr": "RR",
    "recall@100": "R@100",
    "recall@1000": "R@1000",
    "p@10": "P@10",
    "judged@10": "Judged@10",
}
METRICS = tuple(OURS_TO_IR_MEASURES)
# Computed by ir_measures' own providers, whose tie order is docid ascending (see the module docstring).
TIE_SENSITIVE = {"mrr@10", "judged@10"}
TOL = 1e-6


def _ir_measures_per_query(qrels, run, metrics=METRICS):
  names = {ir_measures.parse_measure(OURS_TO_IR_MEASURES[m]): m for m in metrics}
  out = {}
  for metric in ir_measures.iter_calc(list(names), qrels, run):
    out.setdefault(metric.query_id, {})[names[metric.measure]] = metric.value
  return out


def _untie(run):
  # Strictly decreasing scores in our (= trec_eval's) order: every tie rule then sees the same ranking.
  return {q: {d: float(len(docs) - i) for i, (d, _) in enumerate(rank_documents(docs))} for q, docs in run.items()}


def _counted(qrels):
  return {q for q, judged in qrels.items() if any(g >= 1 for g in judged.values())}


def _assert_matches_ir_measures(qrels, run):
  mean, per_query = evaluate_run(qrels, run, METRICS)
  theirs = _ir_measures_per_query(qrels, run)
  theirs_untied = _ir_measures_per_query(qrels, _untie(run))
  counted = _counted(qrels)
  assert set(per_query) == counted
  # ir_measures reports every qrels query, with 0 (the measures' DEFAULT) for those missing from the run, as we do.
  assert set(theirs) == set(qrels)
  for qid in counted:
    for m in METRICS:
      expected = (theirs_untied if m in TIE_SENSITIVE else theirs)[qid][m]
      assert per_query[qid][m] == pytest.approx(expected, abs=TOL), (qid, m)
  # Convention difference: queries without a relevant document are left out by us (trec_eval -c style) but reported
  # by ir_measures: 0 on the relevance metrics, their judged fraction on Judged@K.
  for qid in set(qrels) - counted:
    assert all(v == 0.0 for m, v in theirs[qid].items() if m != "judged@10"), qid
  if counted:
    for m in METRICS:
      source = theirs_untied if m in TIE_SENSITIVE else theirs
      assert mean[m] == pytest.approx(sum(source[q][m] for q in counted) / len(counted), abs=TOL), m
  if counted == set(qrels):
    # With no relevant-less query the two query sets coincide, so ir_measures' own means are ours too.
    aggregate = ir_measures.calc_aggregate([ir_measures.parse_measure(OURS_TO_IR_MEASURES[m]) for m in METRICS],
                                           qrels, _untie(run))
    for m in METRICS:
      assert mean[m] == pytest.approx(aggregate[ir_measures.parse_measure(OURS_TO_IR_MEASURES[m])], abs=TOL), m


def _hand_made():
  unjudged = [f"u{i:03d}" for i in range(130)]
  qrels = {
      # Graded, one negative grade, judged-non-relevant and unjudged documents; relevant ones at ranks 1, 3, 12, 15,
      # 19 and 125 (past R@100, within R@1000 and nDCG@20 > nDCG@10 territory).
      "q_graded": {"g3": 3, "g2": 2, "g1a": 1, "g1b": 1, "g1c": 2, "g_far": 1, "n0a": 0, "n0b": 0, "neg": -1,
                   "never_retrieved": 2},
      # Ties in score across relevant, judged-non-relevant and unjudged documents, with docids whose byte order
      # differs from their numeric order ("a10" < "a9").
      "q_ties": {"a9": 1, "a10": 0, "b": 2, "c": 0, "e": 1},
      # Fewer than 10 retrieved: Judged@10 divides by 3, P@10 by 10.
      "q_short": {"x": 1, "y": 0},
      # In the qrels, not in the run: 0 on every metric for both.
      "q_missing": {"m1": 1, "m2": 2},
      # No relevant document: skipped by us, reported by ir_measures.
      "q_no_relevant": {"z1": 0, "z2": -1},
  }
  ranked = (["g3", "u000", "g2", "n0a", "u001", "neg", "u002", "u003", "u004", "n0b", "u005", "g1a", "u006", "u007",
             "g1b", "u008", "u009", "u010", "g1c"] + unjudged[11:116] + ["g_far"] + unjudged[116:])
  run = {
      "q_graded": {d: 1000.0 - i for i, d in enumerate(ranked)},
      "q_ties": {"a9": 2.0, "a10": 2.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.5, "f": 0.5, "g": 0.5, "h": 0.25,
                 "i": 0.25, "j": 0.1, "k": 0.1},
      "q_short": {"x": 0.3, "y": 0.2, "w": 0.1},
      "q_no_relevant": {"z1": 2.0, "z3": 1.0, "z2": 0.5},
      "q_not_in_qrels": {"x": 1.0},
  }
  return qrels, run


def test_hand_made_fixture_matches_ir_measures():
  qrels, run = _hand_made()
  _assert_matches_ir_measures(qrels, run)


def test_hand_made_fixture_values():
  qrels, run = _hand_made()
  _, per_query = evaluate_run(qrels, run, METRICS)
  graded, short = per_query["q_graded"], per_query["q_short"]
  # Top 10 of q_graded holds g3, g2, n0a, neg, n0b (judged) and five unjudged documents.
  assert graded["judged@10"] == pytest.approx(0.5)
  assert graded["recall@100"] == pytest.approx(5 / 7) and graded["recall@1000"] == pytest.approx(6 / 7)
  assert graded["ndcg@20"] > graded["ndcg@10"]
  assert short["judged@10"] == pytest.approx(2 / 3) and short["p@10"] == pytest.approx(0.1)
  assert set(per_query["q_missing"].values()) == {0.0}
  assert "q_no_relevant" not in per_query
  theirs = _ir_measures_per_query(qrels, run)
  assert theirs["q_no_relevant"]["judged@10"] == pytest.approx(2 / 3)
  assert theirs["q_no_relevant"]["map"] == 0.0


def test_tie_rule_ours_is_trec_evals_not_ir_measures_python_providers():
  # Equal scores: we (and trec_eval) rank z, b, a (docid descending); ir_measures' RR@K and Judged@K rank a, b, z.
  qrels = {"q": {"a": 1, "b": 0}}
  run = {"q": {"a": 1.0, "b": 1.0, "z": 1.0}}
  _, per_query = evaluate_run(qrels, run, ("mrr@10", "mrr", "judged@1"))
  assert per_query["q"] == {"mrr@10": pytest.approx(1 / 3), "mrr": pytest.approx(1 / 3), "judged@1": 0.0}
  theirs = {str(m.measure): m.value for m in ir_measures.iter_calc(
      [ir_measures.RR, ir_measures.RR @ 10, ir_measures.Judged @ 1], qrels, run)}
  assert theirs["RR"] == pytest.approx(1 / 3)  # trec_eval-backed: agrees with us
  assert theirs["RR@10"] == 1.0 and theirs["Judged@1"] == 1.0  # docid ascending
  assert _ir_measures_per_query(qrels, _untie(run), ("mrr@10",))["q"]["mrr@10"] == pytest.approx(1 / 3)


def test_judged_counts_any_grade_and_divides_by_the_retrieved_depth():
  qrels = {"q": {"a": 1, "b": 0, "c": -1, "d": 2}}
  run = {"q": {"x": 4.0, "a": 3.0, "b": 2.0, "c": 1.0}}
  _, per_query = evaluate_run(qrels, run, ("judged@1", "judged@2", "judged@4", "judged@10"))
  assert per_query["q"] == {"judged@1": 0.0, "judged@2": 0.5, "judged@4": 0.75, "judged@10": 0.75}
  _, per_query = evaluate_run(qrels, {}, ("judged@10",))
  assert per_query["q"]["judged@10"] == 0.0  # nothing retrieved (ir_measures would divide by zero on an empty list)


def test_new_metric_names_parse():
  assert parse_metric("Judged@10").kind == "judged" and parse_metric("judged@10").cutoff == 10
  assert parse_metric("nDCG@20").cutoff == 20 and parse_metric("recall@1000").cutoff == 1000
  with pytest.raises(UserError, match="needs a cutoff"):
    parse_metric("judged")
  with pytest.raises(UserError, match="judged@K"):
    parse_metric("judged@0")


_ids = st.sampled_from([f"d{i}" for i in range(25)] + ["a", "b", "a9", "a10"])
_scores = st.one_of(st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.25]), st.floats(-5, 5, allow_nan=False, width=32))
_qrels = st.dictionaries(st.sampled_from(["q1", "q2", "q3", "q4"]),
                         st.dictionaries(_ids, st.integers(-1, 3), min_size=1, max_size=12), min_size=1)
# min_size=1: a query retrieving nothing makes ir_measures' Judged@K divide by zero.
_runs = st.dictionaries(st.sampled_from(["q1", "q2", "q3", "q4", "q5"]),
                        st.dictionaries(_ids, _scores, min_size=1, max_size=29))


@settings(max_examples=25, deadline=None)
@given(qrels=_qrels, run=_runs)
def test_property_matches_ir_measures(qrels, run):
  _assert_matches_ir_measures(qrels, run)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_docs=st.integers(1, 1200))
def test_property_long_rankings_match_ir_measures(seed, num_docs):
  # Deep rankings (up to 1200 retrieved) for the cutoffs the small fixture cannot reach: nDCG@20, R@100 vs R@1000.
  rng = random.Random(seed)
  docs = [f"doc{i}" for i in range(num_docs + 50)]
  qrels, run = {}, {}
  for q in range(3):
    judged = rng.sample(docs, rng.randint(1, 40))
    qrels[f"q{q}"] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
    run[f"q{q}"] = {d: rng.choice([rng.random(), 0.5]) for d in rng.sample(docs, num_docs)}
  _assert_matches_ir_measures(qrels, run)
