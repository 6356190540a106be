"""A document index on disk: the teacher's token vectors of a corpus, encoded once, searched many times.

Layout of INDEX/:
  manifest.json                      identity (teacher, checksum, prefix, max_len, maxsim_tokens, dim), the shard list
                                     with sha256 of every file, and `complete` once every shard is written.
  progress-p{process:03d}.json       per-process list of complete shards (resume; several hosts).
  shard-{i:05d}.tokens.npy           [T, D] float16: the MaxSim tokens of the shard's documents, one after another
  shard-{i:05d}.offsets.npy          [n + 1] int64: document j's tokens are rows offsets[j] .. offsets[j + 1]
  shard-{i:05d}.pooled.npy           [n, D] float32: unit mean-pooled vectors (over every real token), as evaluation
                                     computes them, so an evaluation reading the index scores what re-encoding would
  shard-{i:05d}.ids.json             [n] document ids

The .npy files are opened memory-mapped, so a search holds one shard (plus the running top k) in RAM at a time.
Shard i is written by process i mod process_count; a shard is written under a temporary name and renamed when
complete, so an interrupted run, rerun, continues after its last complete shard.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic

FORMAT_VERSION = 2  # 2: pooled vectors in float32
MANIFEST = "manifest.json"
FILES = ("tokens", "offsets", "pooled", "ids")
IDENTITY = ("teacher", "teacher_checksum", "prefix", "max_len", "maxsim_tokens", "dim")


def _name(shard: int, part: str) -> str:
  return f"shard-{shard:05d}.{part}.{'json' if part == 'ids' else 'npy'}"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass
class Shard:
  ids: list[str]
  tokens: np.ndarray   # [T, D] float16 (memory-mapped)
  offsets: np.ndarray  # [n + 1] int64
  pooled: np.ndarray   # [n, D] float32

  def padded(self, rows: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([n, L, D] float32 tokens, [n, L] bool mask) of the given rows (all by default), L = the longest."""
    rows = range(len(self.ids)) if rows is None else rows
    counts = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
    length = max(counts, default=0) or 1
    out = np.zeros((len(counts), length, self.tokens.shape[1]), np.float32)
    mask = np.zeros((len(counts), length), bool)
    for i, (r, c) in enumerate(zip(rows, counts)):
      out[i, :c] = self.tokens[self.offsets[r]:self.offsets[r] + c]
      mask[i, :c] = True
    return out, mask


def build(root: str, documents: Sequence[tuple[str, str]], encode_fn: Callable[[list[str]], Any], *,
          identity: dict[str, Any], docs_per_shard: int, process_index: int = 0, process_count: int = 1,
          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Encodes this process's shards of `documents` ([(id, text)]) into `root`; returns the manifest.

  encode_fn(texts) -> retrieval.encode.Encoded. A rerun skips the shards a previous run completed; an index built
  with another identity or other documents is refused. The manifest is complete once every process's shards are.
  """
  os.makedirs(root, exist_ok=True)
  fingerprint = hashlib.sha256(json.dumps([list(d) for d in documents]).encode()).hexdigest()
  expect = {"format_version": FORMAT_VERSION, **{k: identity[k] for k in IDENTITY}, "documents_sha256": fingerprint,
            "num_docs": len(documents), "docs_per_shard": docs_per_shard, "process_count": process_count}
  progress_path = os.path.join(root, f"progress-p{process_index:03d}.json")
  done = {}
  if os.path.exists(progress_path):
    old = json.loads(open(progress_path, encoding="utf-8").read())
    for key, value in expect.items():
      if old.get(key) != value:
        raise UserError(f"{root}: the index was started with {key}={old.get(key)!r}, this run has {value!r}; "
                        "write to a new --out")
    done = {int(k): v for k, v in old["shards"].items()}
  num_shards = -(-len(documents) // docs_per_shard)
  for shard in range(process_index, num_shards, process_count):
    if shard in done:
      if progress:
        progress(min(docs_per_shard, len(documents) - shard * docs_per_shard))
      continue
    chunk = documents[shard * docs_per_shard:(shard + 1) * docs_per_shard]
    enc = encode_fn([text for _, text in chunk])
    real = enc.maxsim_mask
    counts = real.sum(1)
    arrays = {"tokens": enc.tokens[real].astype(np.float16),
              "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
              "pooled": enc.pooled.astype(np.float32)}
    files = {}
    for part in FILES:
      path = os.path.join(root, _name(shard, part))
      tmp = path + ".tmp"
      if part == "ids":
        with open(tmp, "w", encoding="utf-8") as f:
          json.dump([doc_id for doc_id, _ in chunk], f)
      else:
        with open(tmp, "wb") as f:
          np.save(f, arrays[part])
      os.replace(tmp, path)
      files[part] = _sha256(path)
    done[shard] = {"num_docs": len(chunk), "num_tokens": int(counts.sum()), "sha256": files}
    write_text_atomic(progress_path, json.dumps({**expect, "shards": {str(k): v for k, v in sorted(done.items())}},
                                                indent=1) + "\n")
    if progress:
      progress(len(chunk))
  return _merge(root, expect, num_shards)


def _merge(root: str, expect: dict[str, Any], num_shards: int) -> dict[str, Any]:
  shards = {}
  for p in range(expect["process_count"]):
    path = os.path.join(root, f"progress-p{p:03d}.json")
    if os.path.exists(path):
      shards.update({int(k): v for k, v in json.loads(open(path, encoding="utf-8").read())["shards"].items()})
  manifest = {**expect, "complete": len(shards) == num_shards,
              "shards": [{"index": i, **shards[i]} for i in sorted(shards)]}
  if manifest["complete"]:
    write_text_atomic(os.path.join(root, MANIFEST), json.dumps(manifest, indent=1) + "\n")
  return manifest


class DocIndex:
  """A complete index, opened read-only: its identity, and its shards one at a time (memory-mapped)."""

  def __init__(self, root: str, *, verify: bool = False):
    self.root = root
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
      raise UserError(f"{root}: no {MANIFEST}: not an index, or its build has not finished (rerun `optical-jax index`)")
    self.manifest = json.loads(open(path, encoding="utf-8").read())
    if self.manifest.get("format_version") != FORMAT_VERSION:
      raise UserError(f"{root}: index format {self.manifest.get('format_version')!r}, this version reads "
                      f"{FORMAT_VERSION}")
    if verify:
      for shard in self.manifest["shards"]:
        for part, digest in shard["sha256"].items():
          if _sha256(os.path.join(root, _name(shard["index"], part))) != digest:
            raise UserError(f"{root}/{_name(shard['index'], part)}: sha256 differs from the manifest's: rebuild")

  @functools.cached_property
  def locations(self) -> dict[str, tuple[int, int]]:
    """document id -> (shard index, row in the shard)."""
    where = {}
    for info in self.manifest["shards"]:
      path = os.path.join(self.root, _name(info["index"], "ids"))
      for row, doc_id in enumerate(json.loads(open(path, encoding="utf-8").read())):
        where[doc_id] = (info["index"], row)
    return where

  def gather(self, doc_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([n, L, D] float16 MaxSim tokens, [n, L] bool mask, [n, D] float32 pooled) of these documents, in this
    order; L = the longest. Reads one shard at a time."""
    where = [self.locations[d] for d in doc_ids]
    counts = np.zeros(len(doc_ids), np.int64)
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for i, (shard, row) in enumerate(where):
      by_shard.setdefault(shard, []).append((i, row))
    shards = {}
    for shard in by_shard:
      shards[shard] = self.shard(shard, ids=False)  # `locations` already placed every row
      for i, row in by_shard[shard]:
        counts[i] = shards[shard].offsets[row + 1] - shards[shard].offsets[row]
    dim = int(self.manifest["dim"])
    tokens = np.zeros((len(doc_ids), max(int(counts.max(initial=0)), 1), dim), np.float16)
    pooled = np.zeros((len(doc_ids), dim), np.float32)
    for shard, rows in by_shard.items():
      s = shards.pop(shard)  # one shard's memory map open at a time
      for i, row in rows:
        tokens[i, :counts[i]] = s.tokens[s.offsets[row]:s.offsets[row] + counts[i]]
        pooled[i] = s.pooled[row]
    mask = np.arange(tokens.shape[1])[None, :] < counts[:, None]
    return tokens, mask, pooled

  @property
  def num_docs(self) -> int:
    return int(self.manifest["num_docs"])

  def shard(self, index: int, *, ids: bool = True) -> Shard:
    """Shard `index`, memory-mapped; `ids=False` leaves its id list empty (callers that know the rows already)."""
    part = lambda p: os.path.join(self.root, _name(index, p))
    try:
      return Shard(ids=json.loads(open(part("ids"), encoding="utf-8").read()) if ids else [],
                   tokens=np.load(part("tokens"), mmap_mode="r"), offsets=np.load(part("offsets")),
                   pooled=np.load(part("pooled"), mmap_mode="r"))
    except (OSError, ValueError) as e:
      raise UserError(f"{self.root}: shard {index} unreadable ({e}); rebuild the index") from None

  def shards(self) -> Iterator[tuple[int, Shard]]:
    """(global row of its first document, shard), in document order."""
    start = 0
    for info in self.manifest["shards"]:
      yield start, self.shard(info["index"])
      start += info["num_docs"]


def gather_from(indexes: Sequence[DocIndex], doc_ids: Sequence[str]
                ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[DocIndex]] | None:
  """`DocIndex.gather` over several indexes (e.g. one per collection): each document is read from the first index
  that holds it. Returns ((tokens, mask, pooled), the indexes read), or None when some document is in none of them
  (or there is no document to read)."""
  if not doc_ids:
    return None
  owner: dict[DocIndex, list[int]] = {}
  for i, doc_id in enumerate(doc_ids):
    index = next((x for x in indexes if doc_id in x.locations), None)
    if index is None:
      return None
    owner.setdefault(index, []).append(i)
  parts = {index: index.gather([doc_ids[i] for i in rows]) for index, rows in owner.items()}
  length = max(tokens.shape[1] for tokens, _, _ in parts.values())
  dim = next(iter(parts.values()))[0].shape[2]
  tokens = np.zeros((len(doc_ids), length, dim), np.float16)
  mask = np.zeros((len(doc_ids), length), bool)
  pooled = np.zeros((len(doc_ids), dim), np.float32)
  for index, rows in owner.items():
    part_tokens, part_mask, part_pooled = parts.pop(index)
    tokens[rows, :part_tokens.shape[1]] = part_tokens
    mask[rows, :part_mask.shape[1]] = part_mask
    pooled[rows] = part_pooled
  return (tokens, mask, pooled), list(owner)
