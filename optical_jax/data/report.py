"""What happened to the bitext input: lines read, examples kept, lines skipped and why.

One `DataReport` follows a run's data from the readers (optical_jax.data.readers) and the tfds builders
(optical_jax.data.tfds_bitext) to `DIR/data_report.json` and a one-line terminal summary. Nothing is dropped without
being counted here: `lines_read == yielded + sum(skipped.values())` always holds (a detected TSV header is not data
and is counted in `header_lines` instead).
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

from etils import epath

# Why a line is skipped. `blank_line` is benign (it carries no data) and never raises in strict mode.
REASONS = (
    "empty_side",       # source or target is empty after stripping whitespace
    "missing_column",   # TSV line with too few columns; JSONL object without "source" or "target"
    "extra_column",     # TSV line with more columns than the header / first line
    "invalid_utf8",     # bytes that are not UTF-8 (or a JSON lone-surrogate escape)
    "duplicate_id",     # id already seen in this file
    "over_length",      # source or target longer than max_chars characters
    "bad_json",         # JSONL line that is not a JSON object, or a field of the wrong type
    "blank_line",       # empty or whitespace-only line
    "corpus_filter",    # tfds builds: dropped by the corpus module (e.g. quran.py's unrepairable mojibake)
)
BENIGN_REASONS = frozenset({"blank_line"})
REPORT_FILENAME = "data_report.json"


@dataclasses.dataclass
class DataReport:
  """Counts per skip reason, the first few bad lines (file:line) and totals, over every source read."""
  max_examples_per_reason: int = 3
  sources: list[str] = dataclasses.field(default_factory=list)
  lines_read: int = 0
  header_lines: int = 0
  yielded: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def add_source(self, name: str) -> None:
    self.sources.append(str(name))

  def record_skip(self, reason: str, file: str, line: int | None, detail: str = "", count: int = 1) -> None:
    """Counts `count` skipped lines; keeps the location (never the text) while few of that reason are kept."""
    if reason not in REASONS:
      raise ValueError(f"unknown skip reason {reason!r}; known: {', '.join(REASONS)}")
    if count <= 0:
      return
    if self.skipped[reason] < self.max_examples_per_reason:
      self.examples.append(dict(file=str(file), line=line, reason=reason, detail=detail, count=count))
    self.skipped[reason] += count

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  @property
  def balanced(self) -> bool:
    """The accounting invariant: every line read was either yielded or skipped for a counted reason."""
    return self.lines_read == self.yielded + self.total_skipped

  def to_dict(self) -> dict[str, Any]:
    return dict(
        sources=list(self.sources),
        lines_read=self.lines_read,
        header_lines=self.header_lines,
        yielded=self.yielded,
        skipped_total=self.total_skipped,
        skipped={r: self.skipped[r] for r in REASONS if self.skipped[r]},
        examples=list(self.examples),
    )

  def write(self, path: epath.PathLike) -> epath.Path:
    """Writes the report as JSON. `path` is a directory (-> DIR/data_report.json) or a file ending in .json."""
    path = epath.Path(path)
    if path.suffix != ".json":
      path = path / REPORT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path

  def summary(self) -> str:
    """One short line for the terminal, e.g. `bitext: 3 lines read from 1 source, 2 kept, 1 skipped (...)`."""
    n_src = len(self.sources)
    text = (f"bitext: {self.lines_read} lines read from {n_src} source{'s' if n_src != 1 else ''}, "
            f"{self.yielded} kept, {self.total_skipped} skipped")
    if self.total_skipped:
      reasons = ", ".join(f"{r} {self.skipped[r]}" for r in REASONS if self.skipped[r])
      text += f" ({reasons})"
      bad = [e for e in self.examples if e["reason"] not in BENIGN_REASONS] or self.examples
      if bad:
        first = bad[0]
        where = f"{first['file']}:{first['line']}" if first["line"] is not None else first["file"]
        text += f"; first: {where} {first['reason']}"
    return text
