"""load_collection: TSV / JSONL / qrels, and errors with file:line."""
import json
import logging

import pytest

from optical_jax.errors import UserError
from optical_jax.retrieval.collection import load_collection

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
