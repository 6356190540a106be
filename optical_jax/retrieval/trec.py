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
  for lineno, cols in _any_fields(path, what):
    if len(cols) != ncols:
      raise UserError(f"{path}:{lineno}: {what} line needs {ncols} columns, got {len(cols)}: {' '.join(cols)[:80]!r}")
    yield lineno, cols


def _any_fields(path: os.PathLike | str, what: str) -> Iterator[tuple[int, list[str]]]:
  """(line number, whitespace-separated columns) of every non-blank line."""
  try:
    f = open(path, encoding="utf-8")
  except OSError as e:
    raise UserError(f"{path}: cannot open {what} file ({e.strerror})") from None
  with f:
    try:
      for lineno, line in enumerate(f, start=1):
        cols = line.split()
        if cols:
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
  """Reads qrels into {qid: {docid: grade}} (grades are integers; >= 1 counts as relevant).

  TREC: 4 columns `qid iteration docid grade`. BEIR: 3 tab-separated columns `query-id corpus-id score`, with an
  optional header line. The first line decides which; every later line must have the same column count.
  """
  qrels: Qrels = {}
  columns = None
  for lineno, cols in _any_fields(path, "qrels"):
    if columns is None:
      columns = len(cols)
      if columns not in (3, 4):
        raise UserError(f"{path}:{lineno}: qrels line needs 4 columns (TREC) or 3 (BEIR), got {len(cols)}")
      if columns == 3 and not _is_int(cols[2]):
        continue  # the BEIR header (query-id corpus-id score)
    if len(cols) != columns:
      raise UserError(f"{path}:{lineno}: qrels line needs {columns} columns like the first, got {len(cols)}")
    qid, docid, rel = (cols[0], cols[1], cols[2]) if columns == 3 else (cols[0], cols[2], cols[3])
    if not _is_int(rel):
      raise UserError(f"{path}:{lineno}: qrels relevance must be an integer, got {rel!r}")
    docs = qrels.setdefault(qid, {})
    if docid in docs:
      raise UserError(f"{path}:{lineno}: document {docid!r} is judged twice for query {qid!r}")
    docs[docid] = int(rel)
  return qrels


def _is_int(text: str) -> bool:
  try:
    int(text)
  except ValueError:
    return False
  return True
