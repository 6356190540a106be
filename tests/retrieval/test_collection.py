"""load_collection (TSV / JSONL / qrels, errors with file:line) and evaluate_system end to end on generated data."""
import json
import logging
import zlib

import numpy as np
import pytest
import pytrec_eval

from optical_jax.errors import UserError
from optical_jax.retrieval import Collection, build_index, evaluate_system, load_collection, read_run
from optical_jax.retrieval.search import EMPTY_DOC_SCORE

D = 16


def word_encoder(texts):
  """One token per word, a fixed random vector per word: shared words give cosine 1 (a stand-in encoder)."""
  length = max(len(t.split()) for t in texts)
  embs = np.zeros((len(texts), length, D), np.float32)
  mask = np.zeros((len(texts), length), bool)
  for i, text in enumerate(texts):
    for j, word in enumerate(text.lower().split()):
      embs[i, j] = np.random.default_rng(zlib.crc32(word.encode())).normal(size=D)
      mask[i, j] = True
  return embs, mask


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


@pytest.fixture
def files(tmp_path):
  queries = _write(tmp_path / "queries.tsv", ["q1\tsimba lion king", "q2\tbanana bread recipe", "q3\tmwezi mkali"])
  docs = _write(tmp_path / "docs.jsonl", [
      json.dumps({"id": "d1", "title": "Lion", "text": "the lion is king"}),
      json.dumps({"_id": "d2", "text": "bake banana bread"}),
      json.dumps({"docid": 3, "text": "a bright moon", "title": ""}),
      json.dumps({"id": "d4", "text": "bread and butter"}),
      json.dumps({"id": "d5", "text": "moon landing"}),
  ])
  qrels = _write(tmp_path / "qrels.txt", ["q1 0 d1 2", "q2 0 d2 1", "q2 0 d4 0", "q3 0 3 1", "q3 0 d5 1"])
  return queries, docs, qrels


def test_load_collection_jsonl(files):
  collection = load_collection(*files, name="toy")
  assert collection.name == "toy"
  assert collection.queries == {"q1": "simba lion king", "q2": "banana bread recipe", "q3": "mwezi mkali"}
  assert collection.documents["d1"] == "Lion the lion is king"  # title prepended
  assert collection.documents["3"] == "a bright moon"
  assert list(collection.documents) == ["d1", "d2", "3", "d4", "d5"]
  assert collection.qrels["q2"] == {"d2": 1, "d4": 0}
  assert load_collection(*files).name == "docs"


def test_load_collection_tsv_documents_and_jsonl_queries(tmp_path, files):
  docs = _write(tmp_path / "docs.txt", ["d1\tthe lion is king", "d2\tbake banana bread"])  # TSV sniffed
  queries = _write(tmp_path / "q.jsonl", [json.dumps({"_id": "q1", "text": "lion"})])
  collection = load_collection(queries, docs, files[2])
  assert collection.documents == {"d1": "the lion is king", "d2": "bake banana bread"}
  assert collection.queries == {"q1": "lion"}


def test_unknown_qrels_entries_warn(files, tmp_path, caplog):
  qrels = _write(tmp_path / "more.qrels", ["q1 0 d1 1", "q9 0 d1 1", "q1 0 d99 1"])
  with caplog.at_level(logging.WARNING):
    load_collection(files[0], files[1], qrels)
  assert "1 qrels queries are not in" in caplog.text and "1 judged documents are not in" in caplog.text


@pytest.mark.parametrize("name,lines,line,match", [
    ("d.tsv", ["d1\tfine", "d2 no tab here"], 2, "2 tab-separated"),
    ("d.tsv", ["d1\tfine", "d2\ttoo\tmany"], 2, "2 tab-separated"),
    ("d.tsv", ["d1\tfine", "", "d1\tagain"], 3, "twice"),
    ("d.tsv", ["\tno id"], 1, "empty"),
    ("d.jsonl", ['{"id": "d1", "text": "ok"}', '{"id": "d2", "text": '], 2, "not valid JSON"),
    ("d.jsonl", ['{"id": "d1", "text": "ok"}', '["a list"]'], 2, "JSON object"),
    ("d.jsonl", ['{"name": "d1", "text": "ok"}'], 1, "no id field"),
    ("d.jsonl", ['{"id": "d1", "text": 5}'], 1, "string"),
    ("d.jsonl", ['{"id": "d 1", "text": "x"}'], 1, "whitespace"),
])
def test_malformed_document_lines(tmp_path, files, name, lines, line, match):
  path = _write(tmp_path / name, lines)
  with pytest.raises(UserError, match=match) as err:
    load_collection(files[0], path, files[2])
  assert f"{path}:{line}:" in str(err.value)


def test_malformed_query_and_qrels_files(tmp_path, files):
  bad_queries = _write(tmp_path / "bad_q.tsv", ["q1\tok", "q2"])
  with pytest.raises(UserError, match=f"{bad_queries}:2:"):
    load_collection(bad_queries, files[1], files[2])
  bad_qrels = _write(tmp_path / "bad.qrels", ["q1 0 d1 1", "q1 0 d2 yes"])
  with pytest.raises(UserError, match=f"{bad_qrels}:2:"):
    load_collection(files[0], files[1], bad_qrels)
  empty = _write(tmp_path / "empty.tsv", [])
  with pytest.raises(UserError, match="query file has no entries"):
    load_collection(empty, files[1], files[2])
  with pytest.raises(UserError, match="cannot open"):
    load_collection(tmp_path / "missing.tsv", files[1], files[2])


def _pytrec_mean(qrels, run_path, measure):
  run = read_run(run_path)
  per_query = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
  counted = [q for q, judged in qrels.items() if any(g >= 1 for g in judged.values())]
  return sum(per_query.get(q, {measure: 0.0})[measure] for q in counted) / len(counted)


@pytest.mark.parametrize("scorer", ["maxsim", "cosine"])
def test_evaluate_system_end_to_end(files, tmp_path, scorer, monkeypatch):
  monkeypatch.setenv("CI", "1")
  collection = load_collection(*files)
  index = build_index(word_encoder, list(collection.documents.values()), list(collection.documents), max_len=8,
                      batch_size=2)
  run_path = tmp_path / "runs" / f"{scorer}.trec"
  mean, run = evaluate_system(word_encoder, index, collection, scorer=scorer, k=3, out_run=run_path, tag="toy",
                              batch_size=2, doc_chunk=2)
  assert set(run) == {"q1", "q2", "q3"} and all(len(docs) == 3 for docs in run.values())
  assert read_run(run_path) == run
  assert all(line.split()[5] == "toy" for line in run_path.read_text().splitlines())
  # Shared words make the judged documents win: q1 -> d1, q2 -> d2 first.
  assert max(run["q1"], key=run["q1"].get) == "d1" and max(run["q2"], key=run["q2"].get) == "d2"
  if scorer == "maxsim":  # q1 "simba lion king" vs d1 "Lion the lion is king": 2 of 3 query words match exactly
    assert run["q1"]["d1"] > 2 / 3 - 0.2 and run["q1"]["d1"] > EMPTY_DOC_SCORE
  for ours, theirs in [("map", "map"), ("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("p@10", "P_10")]:
    assert mean[ours] == pytest.approx(_pytrec_mean(collection.qrels, run_path, theirs), abs=1e-6)


def test_evaluate_system_ignores_qrels_of_other_queries():
  index = build_index(word_encoder, ["red apple", "green pear"], ["a", "p"], max_len=4, batch_size=2)
  collection = Collection(name="c", queries={"q1": "apple"}, documents={"a": "red apple", "p": "green pear"},
                          qrels={"q1": {"a": 1}, "q_other": {"p": 1}})
  mean, run = evaluate_system(word_encoder, index, collection, scorer="maxsim", k=2, metrics=("mrr@10",))
  assert mean == {"mrr@10": 1.0}  # q_other would count as 0 if it were not dropped
  assert list(run["q1"]) == ["a", "p"]
