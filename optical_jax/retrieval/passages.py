"""Long documents as overlapping passages, and passage scores back to document scores.

A document longer than `window` words becomes passages of `window` words every `stride` words (the last one ends
at the document's end), with ids `DOCID#i`; each is encoded and scored like a document. A document's score is then
MaxP, its best passage's score, or FirstP, its first passage's (only first passages are searched). Without
splitting, an encoder sees a document's first `eval.max_len_doc` tokens and nothing after them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from optical_jax.errors import UserError

AGGREGATES = ("maxp", "firstp")
SEPARATOR = "#"


def split(documents: Mapping[str, str], window: int, stride: int, aggregate: str = "maxp"
          ) -> tuple[dict[str, str], dict[str, str]]:
  """({passage id: text}, {passage id: document id}). window 0 = every document whole, under its own id."""
  if aggregate not in AGGREGATES:
    raise UserError(f"eval.doc_aggregate: must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
  if window <= 0:
    return dict(documents), {d: d for d in documents}
  if not 0 < stride <= window:
    raise UserError(f"eval.doc_stride must be in [1, eval.doc_window={window}], got {stride}")
  texts, parent = {}, {}
  for docid, text in documents.items():
    words = text.split()
    starts = list(range(0, max(len(words) - window, 0) + 1, stride))
    if starts[-1] + window < len(words):
      starts.append(len(words) - window)  # the tail the stride stepped over
    if aggregate == "firstp":
      starts = starts[:1]
    for i, start in enumerate(starts):
      pid = f"{docid}{SEPARATOR}{i}"
      texts[pid], parent[pid] = " ".join(words[start:start + window]), docid
  return texts, parent


def to_documents(ranked: Iterable[tuple[str, float]], parent: Mapping[str, str], k: int) -> list[tuple[str, float]]:
  """Passages ranked by score -> the top k documents, each at its best passage's score (MaxP; with FirstP each
  document has one passage, so this is that passage's score)."""
  out, seen = [], set()
  for pid, score in ranked:
    docid = parent[pid]
    if docid not in seen:
      seen.add(docid)
      out.append((docid, score))
      if len(out) == k:
        break
  return out
