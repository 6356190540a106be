"""TREC run / qrels files: round trips, ranking order, and errors naming file and line."""
import pytest
import pytrec_eval

from optical_jax.errors import UserError
from optical_jax.retrieval.trec import rank_documents, read_qrels, read_run, write_qrels, write_run


def test_run_round_trip_and_rank_order(tmp_path):
  run = {"q2": {"b": 0.5, "a": 0.5, "c": 0.1 + 0.2, "a10": 0.5, "a9": 0.5}, "q1": {"x": -1.5, "y": 1e-9}}
  path = tmp_path / "sub" / "run.trec"
  write_run(path, run, tag="mytag")
  assert read_run(path) == run  # repr() round-trips every double exactly
  lines = path.read_text().splitlines()
  assert lines[0] == "q1 Q0 y 1 1e-09 mytag"
  assert lines[1] == "q1 Q0 x 2 -1.5 mytag"
  q2 = [line.split() for line in lines[2:]]
  # Ties at 0.5 in trec_eval order: docid descending (byte order), ranks 1..k.
  assert [c[2] for c in q2] == ["b", "a9", "a10", "a", "c"]
  assert [int(c[3]) for c in q2] == [1, 2, 3, 4, 5]
  assert all(len(c) == 6 and c[1] == "Q0" and c[5] == "mytag" for c in q2)


def test_written_ranks_agree_with_trec_eval(tmp_path):
  # For every single relevant document among ties, recip_rank must be 1 / (its written rank).
  run = {"q": {d: 1.0 for d in ["d1", "d2", "d10", "d20", "e"]}}
  path = tmp_path / "run.trec"
  write_run(path, run, "t")
  for line in path.read_text().splitlines():
    _, _, docid, rank, _, _ = line.split()
    rr = pytrec_eval.RelevanceEvaluator({"q": {docid: 1}}, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert rr == pytest.approx(1 / int(rank))


def test_qrels_round_trip(tmp_path):
  qrels = {"q1": {"d1": 1, "d2": 0, "d3": -1}, "q2": {"d9": 3}}
  path = tmp_path / "qrels.txt"
  write_qrels(path, qrels)
  assert read_qrels(path) == qrels
  assert path.read_text().splitlines()[0] == "q1 0 d1 1"


def test_blank_lines_and_extra_whitespace_are_fine(tmp_path):
  path = tmp_path / "qrels"
  path.write_text("\nq1  0\td1  2\n\n   \nq1 0 d2 0\n")
  assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}}


def test_beir_qrels_with_and_without_header(tmp_path):
  path = tmp_path / "test.tsv"
  path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td9\t2\n")
  assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d9": 2}}
  path.write_text("q1\td1\t1\n")
  assert read_qrels(path) == {"q1": {"d1": 1}}


def test_rank_documents_order():
  assert rank_documents({"a": 1.0, "b": 2.0, "c": 1.0}) == [("b", 2.0), ("c", 1.0), ("a", 1.0)]


@pytest.mark.parametrize("content,line,match", [
    ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 0.4\n", 2, "6 columns"),
    ("q1 Q0 d1 1 0.5 tag\n\nq1 Q0 d2 x 0.4 tag\n", 3, "integer"),
    ("q1 Q0 d1 1 high tag\n", 1, "number"),
    ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d1 2 0.4 tag\n", 2, "twice"),
    ("q1 Q0 d1 1 nan tag\n", 1, "NaN"),
])
def test_malformed_run_lines(tmp_path, content, line, match):
  path = tmp_path / "bad.run"
  path.write_text(content)
  with pytest.raises(UserError, match=match) as err:
    read_run(path)
  assert f"{path}:{line}:" in str(err.value)


@pytest.mark.parametrize("content,line,match", [
    ("q1 0 d1 1\nq1 0 d2\n", 2, "4 columns like the first"),
    ("q1 d1\n", 1, r"4 columns \(TREC\) or 3 \(BEIR\)"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", 3, "3 columns like the first"),
    ("q1\td1\t1\nq1\td2\tyes\n", 2, "integer"),
    ("q1 0 d1 1\nq1 0 d2 0.5\n", 2, "integer"),
    ("q1 0 d1 1\nq1 0 d1 0\n", 2, "twice"),
])
def test_malformed_qrels_lines(tmp_path, content, line, match):
  path = tmp_path / "bad.qrels"
  path.write_text(content)
  with pytest.raises(UserError, match=match) as err:
    read_qrels(path)
  assert f"{path}:{line}:" in str(err.value)


def test_missing_and_binary_files(tmp_path):
  with pytest.raises(UserError, match="cannot open"):
    read_run(tmp_path / "nope.run")
  path = tmp_path / "binary"
  path.write_bytes(b"q1 0 d1 \xff\xfe\n")
  with pytest.raises(UserError, match="UTF-8"):
    read_qrels(path)


def test_unwritable_ids(tmp_path):
  with pytest.raises(UserError, match="whitespace"):
    write_run(tmp_path / "r", {"q 1": {"d": 1.0}}, "t")
  with pytest.raises(UserError, match="tag"):
    write_run(tmp_path / "r", {"q": {"d": 1.0}}, "my tag")
  with pytest.raises(UserError, match="NaN"):
    write_run(tmp_path / "r", {"q": {"d": float("nan")}}, "t")
