"""optical_jax.evaluate: bucketed MaxSim search against a numpy reference, and evaluation runs whose every figure is
recomputed from the written run and qrels files with pytrec_eval."""
import json
import os

import ml_collections
import numpy as np
import pytest
import pytrec_eval

from optical_jax import config as config_lib
from optical_jax import evaluate
from optical_jax.data import collections as collections_lib
from optical_jax.data import encoding
from optical_jax.errors import UserError
from optical_jax.retrieval import encode, evaluation, search, trec

PYTREC_MEASURES = {"map": "map", "ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "p@10": "P_10"}


def _maxsim_reference(q, qm, d, dm):
  qn = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  dn = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
  out = np.zeros((len(q), len(d)))
  for i in range(len(q)):
    for j in range(len(d)):
      sim = qn[i][qm[i]] @ dn[j][dm[j]].T
      out[i, j] = sim.max(axis=1).mean()
  return out


def _random_lengths(rng, n, length, start=0):
  mask = np.zeros((n, length), bool)
  for row, real in enumerate(rng.integers(1, length - start + 1, n)):
    mask[row, start:start + real] = True
  return mask


def test_packed_maxsim_equals_reference_and_search():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((21, 14, 8)).astype(np.float32)
  d = rng.standard_normal((300, 20, 8)).astype(np.float16)
  qm, dm = _random_lengths(rng, 21, 14, start=2), _random_lengths(rng, 300, 20, start=1)
  scores, index = search.packed_maxsim((q, qm), (d, dm), k=50, query_batch=8)
  ref = _maxsim_reference(q, qm, d.astype(np.float32), dm)
  assert scores.shape == index.shape == (21, 50)
  np.testing.assert_allclose(scores, np.take_along_axis(ref, index, 1), atol=2e-5)
  np.testing.assert_allclose(scores, -np.sort(-ref, axis=1)[:, :50], atol=2e-5)
  s_scores, s_index = search.search((q, qm), (d, dm), k=50, scorer="maxsim")
  np.testing.assert_allclose(scores, s_scores, atol=2e-5)
  assert (index[:, :5] == s_index[:, :5]).mean() > 0.95  # only float-rounding near-ties may swap
  # An empty document ranks last (-2 per token, as search); an empty query scores 0 everywhere.
  dm[3] = False
  qm[0] = False
  scores, index = search.packed_maxsim((q[:2], qm[:2]), (d[:7], dm[:7]), k=10)
  assert index.shape == (2, 7) and sorted(index[1]) == list(range(7))
  assert index[1, -1] == 3 and scores[1, -1] == pytest.approx(-2.0)
  assert (scores[0] == 0).all() and index[0].tolist() == list(range(7))


def test_top_k_breaks_ties_by_lower_index():
  scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5]], np.float32)
  s, i = search.top_k(scores, 4)
  assert i.tolist() == [[1, 3, 0, 2]] and s.tolist() == [scores[0, [1, 3, 0, 2]].tolist()]
  assert search.top_k(scores, 10)[1].tolist() == [[1, 3, 0, 2, 5, 4]]


def _collection(n=24, exclude_self=False):
  queries = {f"q{i}": f"swali {i} la mto" + " ya" * (i % 3) for i in range(n)}
  docs = {f"q{i}" if exclude_self else f"d{i}": f"question {i} on rivers" for i in range(n)}
  doc_ids = list(docs)
  qrels = {q: {doc_ids[(i + 1) % n]: 1, doc_ids[(i + 2) % n]: 2} if exclude_self else {doc_ids[i]: 1}
           for i, q in enumerate(queries)}
  english = {q: f"question {i} on a river" for i, q in enumerate(queries)}
  return collections_lib.EvalCollection("toy_xref" if exclude_self else "toy", "sw", queries, docs, qrels,
                                        english_queries=english, exclude_self=exclude_self)


def _recompute(out_dir, name, collection):
  """pytrec_eval over the files as written (an independent parser and implementation)."""
  qrels, run = {}, {}
  with open(os.path.join(out_dir, f"{collection}.qrels")) as f:
    for line in f:
      qid, _, docid, rel = line.split()
      qrels.setdefault(qid, {})[docid] = int(rel)
  with open(os.path.join(out_dir, name, f"{collection}.run")) as f:
    for line in f:
      qid, _, docid, _, score, _ = line.split()
      run.setdefault(qid, {})[docid] = float(score)
  full = pytrec_eval.RelevanceEvaluator(qrels, set(PYTREC_MEASURES.values())).evaluate(run)
  # MRR@10 is trec_eval's recip_rank over each query's top 10 (ties: docid descending, as trec_eval sorts).
  top10 = {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], [-ord(c) for c in kv[0]]))[:10])
           for q, docs in run.items()}
  rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
  out = {m: float(np.mean([full[q][key] for q in qrels])) for m, key in PYTREC_MEASURES.items()}
  out["mrr@10"] = float(np.mean([rr[q]["recip_rank"] for q in qrels]))
  return out, run


def assert_recomputable(out_dir, summary):
  """Every figure of a metrics.json / results.json equals pytrec_eval over its run and qrels files."""
  checked = 0
  for name, per in summary["systems"].items():
    for collection, metrics in per.items():
      expected, _ = _recompute(out_dir, name, collection)
      for metric, value in metrics.items():
        assert value == pytest.approx(expected[metric], abs=1e-6), (name, collection, metric)
        checked += 1
  assert checked
  return checked


@pytest.fixture(scope="module")
def encoders():
  teacher = encoding.load_encoder("random", random_dims={"hidden_size": 32}, seed=1)
  student = encoding.load_encoder("random", random_dims={"hidden_size": 32}, seed=2)
  return teacher, student


def test_evaluate_systems_writes_recomputable_runs(tmp_path, encoders):
  teacher, student = encoders
  systems = [evaluation.System("teacher_en", teacher, "", head=False, english=True),
             evaluation.System("student", student, "")]
  colls = [_collection(), _collection(exclude_self=True)]
  summary = evaluation.evaluate_systems(colls, systems, teacher, tmp_path, doc_prefix="", k=10, max_len_query=24,
                                      max_len_doc=24, batch_size=8, shard=False)
  assert set(summary["systems"]) == {"teacher_en_maxsim", "teacher_en_pooled", "student_maxsim", "student_pooled"}
  assert set(summary["systems"]["student_maxsim"]) == {"toy", "toy_xref"}
  assert json.loads((tmp_path / "metrics.json").read_text())["systems"] == summary["systems"]
  assert assert_recomputable(tmp_path, summary) == 4 * 2 * 5
  # Topical collection: the query's own document never appears in its ranking; every run has k documents.
  _, run = _recompute(tmp_path, "student_maxsim", "toy_xref")
  assert all(q not in docs and len(docs) == 10 for q, docs in run.items())
  # The pooled run is the cosine ranking of mean-pooled vectors (checked against numpy).
  enc = encode.encode_texts(student, list(colls[0].queries.values()), prefix="", max_len=24, batch_size=8)
  docs = encode.encode_texts(teacher, list(colls[0].documents.values()), prefix="", max_len=24, batch_size=8,
                               head=False)
  cos = enc.pooled @ docs.pooled.T
  run = trec.read_run(tmp_path / "student_pooled" / "toy.run")
  doc_ids = list(colls[0].documents)
  for row, qid in enumerate(colls[0].queries):
    best = doc_ids[int(np.argmax(cos[row]))]
    assert max(run[qid], key=run[qid].get) == best
    assert run[qid][best] == pytest.approx(float(cos[row].max()), abs=1e-5)


def test_long_documents_as_passages(tmp_path, encoders):
  """doc_window: runs hold document ids ranked by their best passage; a window longer than every document changes
  nothing; FirstP searches first passages only."""
  teacher, student = encoders
  systems = [evaluation.System("student", student, "")]
  c = _collection()
  kwargs = dict(doc_prefix="", k=10, max_len_query=24, max_len_doc=24, batch_size=8, shard=False)
  whole = evaluation.evaluate_systems([c], systems, teacher, tmp_path / "whole", **kwargs)
  wide = evaluation.evaluate_systems([c], systems, teacher, tmp_path / "wide", doc_window=1000, **kwargs)
  assert wide["systems"] == whole["systems"]
  split = evaluation.evaluate_systems([c], systems, teacher, tmp_path / "split", doc_window=1, doc_stride=1, **kwargs)
  assert split["collections"]["toy"]["passages"] > len(c.documents)
  for scorer in ("maxsim", "pooled"):
    run = trec.read_run(tmp_path / "split" / f"student_{scorer}" / "toy.run")
    assert all(set(docs) <= set(c.documents) and len(docs) == min(10, len(c.documents)) for docs in run.values())
  first = evaluation.evaluate_systems([c], systems, teacher, tmp_path / "first", doc_window=1, doc_stride=1,
                                      doc_aggregate="firstp", **kwargs)
  assert first["collections"]["toy"]["passages"] == len(c.documents)


def test_content_tokens_drop_specials_and_prefix(encoders):
  teacher, _ = encoders
  enc = encode.encode_texts(teacher, ["ab", "abcdef"], prefix="q: ", max_len=16, batch_size=4)
  # byte tokenizer: [CLS] q : space a b [SEP] -> content = the text's bytes only.
  assert enc.mask.sum(1).tolist() == [2 + 3 + 2, 2 + 3 + 6]
  assert enc.maxsim_mask.sum(1).tolist() == [2, 6]
  assert not enc.maxsim_mask[:, :4].any()
  every = encode.encode_texts(teacher, ["ab"], prefix="q: ", max_len=16, batch_size=4, maxsim_tokens="all")
  assert (every.maxsim_mask == every.mask).all()


def test_sharded_encoding_matches_single_device(encoders):
  import ml_collections as mlc
  from optical_jax import sharding
  _, student = encoders
  mesh = sharding.create_mesh(mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  texts = ["kwa maana", "jinsi hii mungu", "x"]
  one = encode.encode_texts(student, texts, prefix="", max_len=16, batch_size=4)
  many = encode.encode_texts(student, texts, prefix="", max_len=16, batch_size=4, mesh=mesh)
  assert (one.mask == many.mask).all()
  np.testing.assert_allclose(one.tokens.astype(np.float32), many.tokens.astype(np.float32), atol=2e-3)


def test_length_bucketed_encoding_equals_full_padding(encoders):
  """make_encode_fn(length_buckets=...): each batch runs cut to its bucket, and the real tokens do not change."""
  teacher, _ = encoders
  texts = ["ab", "abc", "abcdefghijklmnopqrstuvwxyz", "q", "hello world"]
  full = encoding.make_encode_fn(teacher, max_len=32, batch_size=2)(texts)
  bucketed = encoding.make_encode_fn(teacher, max_len=32, batch_size=2, length_buckets=(8, 16))(texts)
  np.testing.assert_array_equal(full[1], bucketed[1])
  real = full[1][..., None] > 0
  np.testing.assert_allclose(np.where(real, bucketed[0], 0), np.where(real, full[0], 0), atol=1e-5)
  assert bucketed[0].shape == full[0].shape


def test_config_helpers():
  config = config_lib.load_config("configs/tiny.py", ["loss.ot_weight=0.0", "loss.mse_weight=1.0"])
  assert config_lib.system_name(config) == "mse_distill"
  config.loss.ot_weight = 1.0
  assert config_lib.system_name(config) == "optical_mse"
  config.loss.mse_weight = 0.0
  assert config_lib.system_name(config) == "ot_only"
  config.loss.rank_weight = 1.0
  assert config_lib.system_name(config) == "optical"
  config.eval.mix = 0.5
  assert config_lib.system_name(config) == "optical_mix0.5"
  config.loss.ot_weight, config.eval.mix = 0.0, 1.0
  assert config_lib.system_name(config) == "contrastive"
  ev = evaluate.eval_config(config)
  assert ev.max_len_query == config.data.max_len_student and ev.max_len_doc == config.data.max_len_teacher
  assert ev.scorers == "maxsim,pooled"
  with pytest.raises(UserError, match="nothing to evaluate"):
    evaluate.load_collections(ev)
  with pytest.raises(UserError, match="eval.colections"):
    config_lib.load_config("configs/tiny.py", ["eval.colections=bible_sw_en"])
  with pytest.raises(UserError, match="QUERIES,DOCUMENTS,QRELS"):
    config_lib.load_config("configs/tiny.py", ["eval.files=a,b"])


def test_a_collection_with_its_own_document_length(tmp_path, encoders):
  """Documents are encoded at each collection's max_len_doc: long documents cut at 4 tokens score as they would in
  an evaluation at 4 tokens, beside a collection at the default length."""
  import dataclasses
  teacher, student = encoders
  systems = [evaluation.System("student", student, "")]
  long_docs = dataclasses.replace(_collection(), name="toy_long", max_len_doc=4,
                                  documents={f"L{i}": f"question {i} on rivers and seas" for i in range(24)},
                                  qrels={f"q{i}": {f"L{i}": 1} for i in range(24)})
  both = evaluation.evaluate_systems([_collection(), long_docs], systems, teacher, tmp_path / "both", k=10,
                                     max_len_query=24, max_len_doc=24, batch_size=8, shard=False)
  alone = evaluation.evaluate_systems([dataclasses.replace(long_docs, max_len_doc=0)], systems, teacher,
                                      tmp_path / "alone", k=10, max_len_query=24, max_len_doc=4, batch_size=8,
                                      shard=False)
  assert both["collections"]["toy_long"]["max_len_doc"] == 4 and both["collections"]["toy"]["max_len_doc"] == 24
  for scorer in ("maxsim", "pooled"):
    name = f"student_{scorer}"
    assert trec.read_run(tmp_path / "both" / name / "toy_long.run") == trec.read_run(
        tmp_path / "alone" / name / "toy_long.run")


def _beir_folder(root):
  (root / "qrels").mkdir(parents=True)
  (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"doc {i}"}) + "\n"
                                             for i in range(4)))
  (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                              for i in range(3)))
  (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t2\n")
  (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td3\t1\n")
  return root


def test_collections_from_beir_folders_and_named_files(tmp_path):
  """eval.collections takes BEIR folders (DIR, DIR@SPLIT); eval.files takes several [NAME=] triples."""
  folder = _beir_folder(tmp_path / "mini")
  (tmp_path / "q.tsv").write_text("a\tswali\n")
  (tmp_path / "d.jsonl").write_text(json.dumps({"id": "x", "text": "answer"}) + "\n")
  (tmp_path / "r.txt").write_text("a 0 x 1\n")
  triple = f"{tmp_path}/q.tsv,{tmp_path}/d.jsonl,{tmp_path}/r.txt"
  config = config_lib.load_config("configs/tiny.py", [f"eval.collections={folder},{folder}@dev",
                                                      f"eval.files=mine={triple};{triple}"])
  got = {c.name: c for c in evaluate.load_collections(config.eval)}
  assert list(got) == ["mini", "mini_dev", "mine", "d"]
  assert got["mini"].queries == {"q0": "query 0", "q1": "query 1"}  # only the split's judged queries
  assert got["mini"].qrels == {"q0": {"d0": 1}, "q1": {"d2": 2}} and got["mini"].documents["d2"] == "T2 doc 2"
  assert got["mini_dev"].qrels == {"q2": {"d3": 1}}
  assert got["mine"].qrels == {"a": {"x": 1}}
  for bad, message in (({"eval.collections": f"{tmp_path}/nope"}, "no such folder"),
                       ({"eval.collections": f"{folder}@train"}, "missing"),
                       ({"eval.files": f"{triple};{triple}"}, "two collections are named 'd'")):
    config = config_lib.load_config("configs/tiny.py", [f"{k}={v}" for k, v in bad.items()])
    with pytest.raises(UserError, match=message):
      evaluate.load_collections(config.eval)
  with pytest.raises(UserError, match=r"\[NAME=\]QUERIES,DOCUMENTS,QRELS"):
    config_lib.load_config("configs/tiny.py", [f"eval.files=mine={tmp_path}/q.tsv"])
