"""TREC run and qrels files: read and write the two plain-text formats trec_eval consumes.

Run line:   `qid Q0 docid rank score tag`  (6 whitespace-separated columns)
Qrels line: `qid iteration docid relevance` (4 columns; relevance is an integer grade, ≥1 = relevant)

Runs are written in trec_eval's own ranking order (score descending, ties by docid descending), so the rank column
agrees with how trec_eval (and `metrics.py`) will read the file back.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

from optical_jax.errors import UserError

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def rank_documents(doc_scores: Mapping[str, float]) -> list[tuple[str, float]]:
  """(docid, score) pairs in trec_eval order: score descending, then docid descending (byte order, like strcmp)."""
  items = sorted(doc_scores.items(), key=lambda kv: kv[0], reverse=True)
  # Python's sort is stable: the second sort keeps the docid-descending order within equal scores.
  items.sort(key=lambda kv: kv[1], reverse=True)
  return items


def _check_id(value: str, what: str, path: os.PathLike | str) -> None:
  if not value or any(c.isspace() for c in value):
    raise UserError(f"{path}: {what} {value!r} is empty or contains whitespace; TREC files cannot hold it")


def write_run(path: os.PathLike | str, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
  """Writes `run` ({qid: {docid: score}}) as a TREC run, queries in sorted order, ranks 1..k per query."""
  _check_id(tag, "run tag", path)
  lines = []
  for qid in sorted(run):
    _check_id(qid, "query id", path)
    for rank, (docid, score) in enumerate(rank_documents(run[qid]), start=1):
      _check_id(docid, "document id", path)
      score = float(score)
      if math.isnan(score):
        raise UserError(f"{path}: score of query {qid!r} document {docid!r} is NaN")
      # repr() is the shortest text that parses back to the same double: read_run(write_run(x)) == x.
      lines.append(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n")
  _write_lines(path, lines)


def write_qrels(path: os.PathLike | str, qrels: Mapping[str, Mapping[str, int]]) -> None:
  """Writes `qrels` ({qid: {docid: grade}}) in the 4-column TREC format, sorted by qid then docid."""
  lines = []
  for qid in sorted(qrels):
    _check_id(qid, "query id", path)
    for docid in sorted(qrels[qid]):
      _check_id(docid, "document id", path)
      lines.append(f"{qid} 0 {docid} {int(qrels[qid][docid])}\n")
  _write_lines(path, lines)


def _write_lines(path: os.PathLike | str, lines: list[str]) -> None:
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(lines)


def _fields(path: os.PathLike | str, ncols: int, what: str) -> Iterator[tuple[int, list[str]]]:
  """(line number, columns) of every non-blank line; a wrong column count is a UserError naming file and line."""
  try:
    f = open(path, encoding="utf-8")
  except OSError as e:
    raise UserError(f"{path}: cannot open {what} file ({e.strerror})") from None
  with f:
    try:
      for lineno, line in enumerate(f, start=1):
        cols = line.split()
        if not cols:
          continue
        if len(cols) != ncols:
          raise UserError(f"{path}:{lineno}: {what} line needs {ncols} columns, got {len(cols)}: {line.strip()[:80]!r}")
        yield lineno, cols
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: {what} file is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_run(path: os.PathLike | str) -> Run:
  """Reads a 6-column TREC run into {qid: {docid: score}}. The rank column is checked but not used (as trec_eval)."""
  run: Run = {}
  for lineno, (qid, _, docid, rank, score, _) in _fields(path, 6, "run"):
    try:
      int(rank)
      value = float(score)
    except ValueError:
      raise UserError(f"{path}:{lineno}: run rank must be an integer and score a number, "
                      f"got {rank!r} {score!r}") from None
    if math.isnan(value):
      raise UserError(f"{path}:{lineno}: run score is NaN")
    docs = run.setdefault(qid, {})
    if docid in docs:
      raise UserError(f"{path}:{lineno}: document {docid!r} appears twice for query {qid!r}")
    docs[docid] = value
  return run


def read_qrels(path: os.PathLike | str) -> Qrels:
  """Reads 4-column TREC qrels into {qid: {docid: grade}} (grades are integers; ≥1 counts as relevant)."""
  qrels: Qrels = {}
  for lineno, (qid, _, docid, rel) in _fields(path, 4, "qrels"):
    try:
      grade = int(rel)
    except ValueError:
      raise UserError(f"{path}:{lineno}: qrels relevance must be an integer, got {rel!r}") from None
    docs = qrels.setdefault(qid, {})
    if docid in docs:
      raise UserError(f"{path}:{lineno}: document {docid!r} is judged twice for query {qid!r}")
    docs[docid] = grade
  return qrels
