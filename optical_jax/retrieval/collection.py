"""A retrieval test collection (queries, documents, qrels) from files.

File formats:
- queries: TSV `qid<TAB>text`, or JSONL like documents;
- documents: JSONL, one object a line with an id ("id", "_id" or "docid"), "text" and optional "title" (BEIR style;
  the title is prepended to the text with a space), or TSV `docid<TAB>text`. JSONL is chosen for a `.jsonl`/`.json`
  file name or a first line starting with "{";
- qrels: TREC 4-column (see trec.py).
Every malformed line is a UserError naming the file and line.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from optical_jax.errors import UserError
from optical_jax.retrieval import trec

_ID_KEYS = ("id", "_id", "docid")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Collection:
  """queries {qid: text}, documents {docid: text}, qrels {qid: {docid: grade}}; dicts keep file order."""
  name: str
  queries: dict[str, str]
  documents: dict[str, str]
  qrels: dict[str, dict[str, int]]


def _lines(path: os.PathLike | str, what: str):
  """(line number, text without newline) of every non-blank line, as a UserError if the file cannot be read."""
  try:
    f = open(path, encoding="utf-8")
  except OSError as e:
    raise UserError(f"{path}: cannot open {what} file ({e.strerror})") from None
  with f:
    try:
      for lineno, line in enumerate(f, start=1):
        line = line.rstrip("\r\n")
        if line.strip():
          yield lineno, line
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: {what} file is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _is_jsonl(path: os.PathLike | str) -> bool:
  if os.fspath(path).endswith((".jsonl", ".json")):
    return True
  if os.fspath(path).endswith(".tsv"):
    return False
  for _, line in _lines(path, "input"):
    return line.lstrip().startswith("{")
  return False


def _read_tsv(path: os.PathLike | str, what: str) -> dict[str, str]:
  out: dict[str, str] = {}
  for lineno, line in _lines(path, what):
    cols = line.split("\t")
    if len(cols) != 2:
      raise UserError(f"{path}:{lineno}: {what} line needs 2 tab-separated columns (id, text), got {len(cols)}")
    _add(out, cols[0].strip(), cols[1].strip(), path, lineno, what)
  return out


def _read_jsonl(path: os.PathLike | str, what: str) -> dict[str, str]:
  out: dict[str, str] = {}
  for lineno, line in _lines(path, what):
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{lineno}: {what} line is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
      raise UserError(f"{path}:{lineno}: {what} line must be a JSON object")
    key = next((k for k in _ID_KEYS if k in obj), None)
    if key is None:
      raise UserError(f"{path}:{lineno}: {what} object has no id field (one of {', '.join(_ID_KEYS)})")
    text, title = obj.get("text"), obj.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
      raise UserError(f"{path}:{lineno}: {what} object needs a string \"text\" (and optional string \"title\")")
    _add(out, str(obj[key]).strip(), f"{title} {text}".strip() if title else text.strip(), path, lineno, what)
  return out


def _add(out: dict[str, str], key: str, text: str, path, lineno: int, what: str) -> None:
  if not key or any(c.isspace() for c in key):
    raise UserError(f"{path}:{lineno}: {what} id {key!r} is empty or contains whitespace")
  if key in out:
    raise UserError(f"{path}:{lineno}: {what} id {key!r} appears twice")
  out[key] = text


def read_texts(path: os.PathLike | str, what: str = "document") -> dict[str, str]:
  """{id: text} from a TSV or JSONL file (format by file name, else by the first line)."""
  texts = _read_jsonl(path, what) if _is_jsonl(path) else _read_tsv(path, what)
  if not texts:
    raise UserError(f"{path}: the {what} file has no entries")
  return texts


def load_collection(queries_tsv: os.PathLike | str, documents: os.PathLike | str, qrels_trec: os.PathLike | str, *,
                    name: str | None = None) -> Collection:
  """Reads queries, documents and qrels; warns about qrels that point at unknown queries or documents."""
  queries = read_texts(queries_tsv, "query")
  docs = read_texts(documents, "document")
  qrels = trec.read_qrels(qrels_trec)
  if not qrels:
    raise UserError(f"{qrels_trec}: no judgements in the qrels file")
  unknown_q = sorted(set(qrels) - set(queries))
  if unknown_q:
    log.warning("%s: %d qrels queries are not in %s (e.g. %r); they are not evaluated", qrels_trec,
                len(unknown_q), queries_tsv, unknown_q[0])
  unknown_d = {d for judged in qrels.values() for d in judged} - set(docs)
  if unknown_d:
    log.warning("%s: %d judged documents are not in %s; they can never be retrieved", qrels_trec,
                len(unknown_d), documents)
  if name is None:
    name = os.path.splitext(os.path.basename(os.fspath(documents)))[0]
  return Collection(name=name, queries=queries, documents=docs, qrels=qrels)
