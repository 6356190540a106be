"""Bitext file readers (TSV and JSONL, local paths or URIs such as gs://) that count every line they skip.

Accepted formats (chosen by file suffix; `.gz` on top is decompressed):

* TSV (`.tsv`, `.txt`): `source<TAB>target` or `id<TAB>source<TAB>target`, one pair per line, UTF-8, no quoting
  (a tab or newline cannot occur inside a text). An optional first line naming the columns (`source target`,
  `id source target`, in any order, case-insensitive) is detected as a header and sets the column order. Without a
  header the first line with 2 or 3 columns fixes the layout for the whole file.
* JSONL (`.jsonl`, `.ndjson`): one JSON object per line with string keys `"source"` (low-resource text) and
  `"target"` (English), and optionally `"id"` (string or integer). Other keys are ignored.

Ids default to `<basename>:<line>` (1-based physical line number). Texts are stripped of surrounding whitespace.
Bad lines are skipped and counted in a `DataReport` under one reason each (see optical_jax.data.report.REASONS);
with `strict=True` the first bad line raises `UserError("FILE:LINE: reason: detail")` instead (blank lines are
only counted, never raised on). Remote URIs go through etils.epath, which without TensorFlow uses fsspec: gs://
needs the `gcsfs` package (a missing one is reported as a UserError).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator

from etils import epath

from optical_jax.data.report import BENIGN_REASONS, DataReport
from optical_jax.errors import UserError

DEFAULT_MAX_CHARS = 10_000
TSV_SUFFIXES = (".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_COLUMN_NAMES = frozenset({"id", "source", "target"})
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class BitextExample:
  """One aligned pair: `source` is the low-resource side, `target` the English side."""
  id: str
  source: str
  target: str


class _BadLine(Exception):
  """Internal: a line to skip, with its reason (a DataReport reason) and a short detail (never the text)."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason, self.detail = reason, detail


def check_example(ex: BitextExample, *, max_chars: int | None, seen_ids: set[str]) -> tuple[str, str] | None:
  """Checks an already-parsed pair; returns (reason, detail) if it must be skipped, else records its id.

  Shared by the file readers and the tfds builders so both apply the same rules.
  """
  for side in ("source", "target"):
    if not getattr(ex, side):
      return "empty_side", f"{side} is empty"
  if max_chars is not None:
    for side in ("source", "target"):
      n = len(getattr(ex, side))
      if n > max_chars:
        return "over_length", f"{side} has {n} characters > max_chars={max_chars}"
  if ex.id in seen_ids:
    return "duplicate_id", f"id {ex.id!r} already seen"
  seen_ids.add(ex.id)
  return None


def detect_format(path: epath.PathLike) -> str:
  """'tsv' or 'jsonl' from the file suffix (ignoring a trailing .gz); UserError otherwise."""
  name = epath.Path(path).name.lower()
  if name.endswith(".gz"):
    name = name[:-3]
  if name.endswith(TSV_SUFFIXES):
    return "tsv"
  if name.endswith(JSONL_SUFFIXES):
    return "jsonl"
  raise UserError(f"{path}: unknown bitext file type; expected one of "
                  f"{', '.join(TSV_SUFFIXES + JSONL_SUFFIXES)} (optionally .gz)")


def _raw_lines(path: epath.Path) -> Iterator[bytes]:
  """Physical lines as bytes without the line ending; binary so a bad byte spoils one line, not the file."""
  try:
    f = path.open("rb")
  except OSError as e:
    raise UserError(f"{path}: cannot open bitext file: {e}") from e
  with f:
    stream = gzip.GzipFile(fileobj=f) if path.name.lower().endswith(".gz") else f
    try:
      for i, raw in enumerate(stream):
        if i == 0 and raw.startswith(_BOM):
          raw = raw[len(_BOM):]
        if raw.endswith(b"\n"):
          raw = raw[:-1]
        if raw.endswith(b"\r"):
          raw = raw[:-1]
        yield raw
    except (OSError, EOFError) as e:  # e.g. a truncated or non-gzip .gz file
      raise UserError(f"{path}: cannot read bitext file: {e}") from e


def _decode(raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _BadLine("invalid_utf8", f"byte 0x{raw[e.start]:02x} at offset {e.start} is not UTF-8") from None


def _header_columns(line: str) -> tuple[str, ...] | None:
  """The column order if `line` is a header naming id/source/target, else None."""
  names = tuple(f.strip().lower() for f in line.split("\t"))
  if set(names) <= _COLUMN_NAMES and {"source", "target"} <= set(names) and len(set(names)) == len(names):
    return names
  return None


def _columns(n: int) -> str:
  return f"{n} column{'s' if n != 1 else ''}"


class _TsvParser:
  """Turns decoded TSV lines into BitextExamples; remembers the column layout from the header or first line."""

  def __init__(self):
    self.columns: tuple[str, ...] | None = None

  def header(self, line: str) -> bool:
    self.columns = _header_columns(line)
    return self.columns is not None

  def parse(self, line: str, default_id: str) -> BitextExample:
    fields = line.split("\t")
    if self.columns is None:
      if len(fields) == 1:
        raise _BadLine("missing_column", "1 column, expected 2 (source, target) or 3 (id, source, target)")
      if len(fields) > 3:
        raise _BadLine("extra_column", f"{_columns(len(fields))}, expected 2 or 3")
      self.columns = ("source", "target") if len(fields) == 2 else ("id", "source", "target")
    if len(fields) != len(self.columns):
      reason = "missing_column" if len(fields) < len(self.columns) else "extra_column"
      raise _BadLine(reason, f"{_columns(len(fields))}, expected {len(self.columns)} ({', '.join(self.columns)})")
    row = {name: value.strip() for name, value in zip(self.columns, fields)}
    return BitextExample(id=row.get("id") or default_id, source=row["source"], target=row["target"])


def _parse_jsonl(line: str, default_id: str) -> BitextExample:
  try:
    obj = json.loads(line)
  except (ValueError, RecursionError) as e:
    raise _BadLine("bad_json", f"not valid JSON: {str(e)[:80]}") from None
  if not isinstance(obj, dict):
    raise _BadLine("bad_json", f"a JSON {type(obj).__name__}, expected an object")
  texts = {}
  for key in ("source", "target"):
    value = obj.get(key)
    if value is None:
      raise _BadLine("missing_column", f'no "{key}" key')
    if not isinstance(value, str):
      raise _BadLine("bad_json", f'"{key}" is a {type(value).__name__}, expected a string')
    texts[key] = value.strip()
  ex_id = obj.get("id")
  if ex_id is None or ex_id == "":
    ex_id = default_id
  elif isinstance(ex_id, int) and not isinstance(ex_id, bool):
    ex_id = str(ex_id)
  elif not isinstance(ex_id, str):
    raise _BadLine("bad_json", f'"id" is a {type(ex_id).__name__}, expected a string or integer')
  for key, value in (("id", ex_id), *texts.items()):
    try:  # JSON escapes can smuggle in lone surrogates that no UTF-8 writer downstream accepts
      value.encode("utf-8")
    except UnicodeEncodeError:
      raise _BadLine("invalid_utf8", f'"{key}" holds a lone surrogate escape') from None
  return BitextExample(id=ex_id.strip() or default_id, source=texts["source"], target=texts["target"])


def read_bitext(path_or_uri: epath.PathLike, *, strict: bool = False, max_chars: int | None = DEFAULT_MAX_CHARS,
                report: DataReport | None = None, file_format: str | None = None) -> Iterator[BitextExample]:
  """Yields the valid pairs of one TSV/JSONL bitext file, counting each skipped line in `report`.

  Args:
    path_or_uri: local path or any URI etils.epath can open (gs://, s3://, ...).
    strict: raise UserError("FILE:LINE: reason: detail") at the first bad line instead of skipping it.
    max_chars: longest allowed source/target in characters (None = no limit); longer pairs are `over_length`.
    report: where counts go (a fresh one is used if None).
    file_format: "tsv" | "jsonl"; None = from the suffix.
  """
  path = epath.Path(path_or_uri)
  fmt = file_format or detect_format(path)
  if fmt not in ("tsv", "jsonl"):
    raise UserError(f"{path}: file_format must be 'tsv' or 'jsonl', got {fmt!r}")
  try:
    exists, is_dir = path.exists(), path.is_dir()
  except (ImportError, OSError) as e:  # e.g. gs:// without gcsfs installed, or no credentials
    raise UserError(f"{path}: cannot access bitext file: {e}") from e
  if not exists:
    raise UserError(f"{path}: bitext file not found")
  if is_dir:
    raise UserError(f"{path}: is a directory, expected a bitext file")
  report = DataReport() if report is None else report
  report.add_source(path)
  # A separate generator so that the checks above raise at the call, not at the first next().
  return _read_lines(path, fmt, strict=strict, max_chars=max_chars, report=report)


def _read_lines(path: epath.Path, fmt: str, *, strict: bool, max_chars: int | None,
                report: DataReport) -> Iterator[BitextExample]:
  tsv = _TsvParser() if fmt == "tsv" else None
  seen_ids: set[str] = set()
  first_content = True
  for lineno, raw in enumerate(_raw_lines(path), start=1):
    try:
      line = _decode(raw)
      if not line.strip():
        raise _BadLine("blank_line", "blank line")
      if tsv is not None and first_content:
        first_content = False
        if tsv.header(line):
          report.header_lines += 1
          continue
      first_content = False
      default_id = f"{path.name}:{lineno}"
      ex = tsv.parse(line, default_id) if tsv is not None else _parse_jsonl(line, default_id)
      bad = check_example(ex, max_chars=max_chars, seen_ids=seen_ids)
      if bad is not None:
        raise _BadLine(*bad)
    except _BadLine as bad_line:
      report.lines_read += 1
      report.record_skip(bad_line.reason, str(path), lineno, bad_line.detail)
      if strict and bad_line.reason not in BENIGN_REASONS:
        raise UserError(f"{path}:{lineno}: {bad_line.reason}: {bad_line.detail}") from None
      continue
    report.lines_read += 1
    report.yielded += 1
    yield ex

