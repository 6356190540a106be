"""The teacher token-embedding store: the English side of the bitext, encoded once, offline, read while training.

Layout of a store directory (local path or gs:// URI, via etils.epath):
  shard-p{process:03d}-{index:05d}.array_record   ArrayRecord files (group_size 1: random access). Record i is
      msgpack [id, length, emb] with emb the [length, dim] real-token embeddings (no padding) as little-endian bytes in
      the store dtype; the LAST record is a footer {"ids": [...], "lengths": [...]} so a reader learns the ids of a
      shard without reading its embeddings.
  progress-p{process:03d}.json   per-process progress: identity of the run and the list of COMPLETE shards.
  manifest.json                  written by process 0 once every process is complete (StoreManifest).

Work split: process p of P encodes the contiguous block examples[p*N//P : (p+1)*N//P]; shards are concatenated in
(process, index) order, so the global index of an example is its position in `examples` whatever P is.

Resume: a shard is written to `<name>.tmp`, closed, hashed (sha256), renamed, and only then recorded in the progress
file (written via tmp + rename). A rerun keeps the recorded shards whose sha256 still matches, deletes every other
file of its process (half-written debris) and re-encodes from the first missing shard. Batches never cross shard
boundaries, so a resumed run makes exactly the batches of an uninterrupted one and (for a deterministic encode_fn)
byte-identical shards and manifest. Nothing time-dependent is stored.

Integrity: ArrayRecord (Riegeli) stores a hash per chunk and fails on read of a corrupted chunk, but not every byte
is covered (file header, zero padding to 64 KiB blocks); so the manifest has the sha256 and size of every shard,
checked by `TeacherStore.open(verify=True)`.

gs://: paths go through etils.epath and ArrayRecord's own GCS file support; only local paths are tested.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
from array_record.python import array_record_module
from etils import epath

from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float16": np.dtype("<f2"), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype("<f4")}
META_KEYS = ("teacher", "teacher_checksum", "tokenizer", "max_len", "dim", "dtype", "prefix")
# Pinned writer options: they are part of the bytes we promise to reproduce.
_WRITER_OPTIONS = "group_size:1,zstd:3,max_parallelism:1"
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # random access
_HASH_CHUNK = 8 << 20

EncodeFn = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class StoreManifest:
  teacher: str
  teacher_checksum: str
  tokenizer: str                 # tokenizer name / checksum
  max_len: int
  dim: int
  dtype: str                     # "float16" | "bfloat16" | "float32"
  prefix: str                    # prepended to every text before encode_fn (e.g. "passage: " for E5)
  num_examples: int
  shards: list[dict[str, Any]]   # {"name", "num_examples", "sha256", "size_bytes", "process"}, in global order
  format_version: int = FORMAT_VERSION
  complete: bool = False
  process_count: int = 1
  examples_per_shard: int = 0
  inputs_sha256: str = ""        # sha256 over all (id, text) pairs the store was built from

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> StoreManifest:
    d = json.loads(text)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def shard_name(process_index: int, index: int) -> str:
  return f"shard-p{process_index:03d}-{index:05d}.array_record"


def _progress_name(process_index: int) -> str:
  return f"progress-p{process_index:03d}.json"


def _sha256(path: epath.Path) -> tuple[str, int]:
  h, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_HASH_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return h.hexdigest(), size


def validate_meta(meta: dict[str, Any]) -> dict[str, Any]:
  """Checks and normalises the teacher description recorded in the store."""
  unknown = sorted(set(meta) - set(META_KEYS))
  if unknown:
    raise UserError(f"teacher store meta: unknown field {unknown[0]!r} (known: {', '.join(META_KEYS)})")
  out = {"prefix": "", **meta}
  for key in META_KEYS:
    if key not in out:
      raise UserError(f"teacher store meta: missing field {key!r}")
  for key in ("max_len", "dim"):
    if not isinstance(out[key], (int, np.integer)) or isinstance(out[key], bool) or out[key] <= 0:
      raise UserError(f"teacher store meta: {key} must be a positive int, got {out[key]!r}")
    out[key] = int(out[key])
  if out["dtype"] not in DTYPES:
    raise UserError(f"teacher store meta: dtype must be one of {sorted(DTYPES)}, got {out['dtype']!r}")
  for key in ("teacher", "teacher_checksum", "tokenizer", "prefix"):
    if not isinstance(out[key], str):
      raise UserError(f"teacher store meta: {key} must be a string, got {out[key]!r}")
  return out


def inputs_fingerprint(examples: Sequence[tuple[str, str]]) -> str:
  """sha256 over the (id, text) pairs; also rejects non-string and duplicate ids."""
  h, seen = hashlib.sha256(), set()
  for i, example in enumerate(examples):
    example_id, text = example
    if not isinstance(example_id, str) or not isinstance(text, str):
      raise UserError(f"teacher store input #{i}: id and text must be strings, got {example_id!r}, {type(text)}")
    if example_id in seen:
      raise UserError(f"teacher store input #{i}: duplicate id {example_id!r}")
    seen.add(example_id)
    h.update(msgpack.packb([example_id, text]))
  return h.hexdigest()


class TeacherStoreWriter:
  """Writes one process's shards, resuming from its progress file."""

  def __init__(self, root: epath.PathLike, *, process_index: int = 0, process_count: int = 1,
               examples_per_shard: int = 1024, meta: dict[str, Any], inputs_sha256: str = ""):
    if not 0 <= process_index < process_count:
      raise UserError(f"teacher store: process_index {process_index} not in [0, {process_count})")
    if examples_per_shard <= 0:
      raise UserError(f"teacher store: examples_per_shard must be positive, got {examples_per_shard}")
    self.root = epath.Path(root)
    self.process_index = process_index
    self.examples_per_shard = examples_per_shard
    self.meta = validate_meta(meta)
    self._dtype = DTYPES[self.meta["dtype"]]
    self._progress_path = self.root / _progress_name(process_index)
    self._progress = {
        "format_version": FORMAT_VERSION, "process_index": process_index, "process_count": process_count,
        "examples_per_shard": examples_per_shard, "inputs_sha256": inputs_sha256, "meta": self.meta,
        "shards": [], "complete": False}
    self.root.mkdir(parents=True, exist_ok=True)
    self._resume()
    self._writer = None
    self._ids: list[str] = []
    self._lengths: list[int] = []

  @property
  def num_complete(self) -> int:
    """Examples in committed shards: where this process resumes."""
    return sum(s["num_examples"] for s in self._progress["shards"])

  @property
  def complete(self) -> bool:
    return self._progress["complete"]

  def _resume(self) -> None:
    if self._progress_path.exists():
      old = json.loads(self._progress_path.read_text())
      for key, value in self._progress.items():
        if key in ("shards", "complete"):
          continue
        if key == "meta":
          for field, v in value.items():
            if old["meta"].get(field) != v:
              self._identity_error(f"meta.{field}", old["meta"].get(field), v)
        elif old.get(key) != value:
          self._identity_error(key, old.get(key), value)
      for entry in old["shards"]:  # keep the prefix of shards that are still intact
        path = self.root / entry["name"]
        if not path.exists() or _sha256(path) != (entry["sha256"], entry["size_bytes"]):
          logging.warning("teacher store: %s missing or changed; re-encoding from it", path)
          break
        self._progress["shards"].append(entry)
      else:
        self._progress["complete"] = old["complete"]
    keep = {e["name"] for e in self._progress["shards"]}
    for path in self.root.glob(f"shard-p{self.process_index:03d}-*"):
      if path.name not in keep:  # half-written or uncommitted debris of an earlier run
        path.unlink()

  def _identity_error(self, field: str, old: Any, new: Any) -> None:
    raise UserError(
        f"teacher store {self.root}: {self._progress_path.name} was started with {field}={old!r}, this run has "
        f"{new!r}; delete the store directory or use another data.teacher_store")

  def add(self, example_id: str, tokens: np.ndarray) -> None:
    """Appends one example's real-token embeddings [length, dim]; commits the shard when it is full."""
    if self.complete:
      raise RuntimeError("teacher store writer: add() after finish()")
    tokens = np.asarray(tokens, np.float32)
    max_len, dim = self.meta["max_len"], self.meta["dim"]
    if tokens.ndim != 2 or tokens.shape[1] != dim:
      raise UserError(f"teacher store: embeddings of id {example_id!r} have shape {tokens.shape}, want [length, {dim}]")
    length = tokens.shape[0]
    if length > max_len:
      raise UserError(f"teacher store: id {example_id!r} has {length} tokens, more than max_len={max_len}")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below, naming the id
      stored = tokens.astype(self._dtype)
    if not np.isfinite(stored.astype(np.float32)).all():
      raise UserError(f"teacher store: embeddings of id {example_id!r} are not finite in {self.meta['dtype']}")
    if self._writer is None:
      name = shard_name(self.process_index, len(self._progress["shards"])) + ".tmp"
      if _is_remote(self.root):
        # ArrayRecordWriter writes local files only: build the shard in a local temp dir, upload it on commit.
        self._local_dir = tempfile.TemporaryDirectory(prefix="teacher_store_")
        self._tmp_path = epath.Path(self._local_dir.name) / name
      else:
        self._tmp_path = self.root / name
      self._writer = array_record_module.ArrayRecordWriter(str(self._tmp_path), _WRITER_OPTIONS)
    self._writer.write(msgpack.packb([example_id, length, stored.tobytes()]))
    self._ids.append(example_id)
    self._lengths.append(length)
    if len(self._ids) == self.examples_per_shard:
      self._commit_shard()

  def _commit_shard(self) -> None:
    self._writer.write(msgpack.packb({"ids": self._ids, "lengths": self._lengths}))
    ok = self._writer.ok()
    writer, self._writer = self._writer, None  # a failed close (disk full) is not retried by close()
    writer.close()
    if not ok:
      raise OSError(f"teacher store: writing {self._tmp_path} failed")
    final = self.root / self._tmp_path.name.removesuffix(".tmp")
    sha, size = _sha256(self._tmp_path)
    if _is_remote(self.root):
      # Upload under the .tmp name, then rename: a kill mid-upload leaves debris the next run deletes, never a
      # shard that looks complete.
      remote_tmp = self.root / self._tmp_path.name
      remote_tmp.write_bytes(self._tmp_path.read_bytes())
      remote_tmp.rename(final)
      self._local_dir.cleanup()
    else:
      self._tmp_path.replace(final)
    self._progress["shards"].append({"name": final.name, "num_examples": len(self._ids), "sha256": sha,
                                     "size_bytes": size, "process": self.process_index})
    self._ids, self._lengths = [], []
    write_text_atomic(self._progress_path, json.dumps(self._progress, indent=2, sort_keys=True) + "\n")

  def finish(self) -> dict[str, Any]:
    """Commits the last (partial) shard and marks this process complete; returns its progress record."""
    if not self.complete:
      if self._writer is not None:
        self._commit_shard()
      self._progress["complete"] = True
      write_text_atomic(self._progress_path, json.dumps(self._progress, indent=2, sort_keys=True) + "\n")
    return self._progress

  def close(self) -> None:
    """Abandons an unfinished shard (its .tmp file is deleted by the next run)."""
    writer, self._writer = self._writer, None
    if writer is not None:
      try:
        writer.close()
      except RuntimeError:
        pass  # After a failed write (disk full) closing fails too; the first error is the one to report.


def _is_remote(path: epath.Path) -> bool:
  return "://" in str(path)


def _read_progress(root: epath.Path) -> list[dict[str, Any]]:
  return [json.loads(p.read_text()) for p in sorted(root.glob("progress-p*.json"))]


def _merge(root: epath.Path) -> StoreManifest | None:
  """The manifest if every process is complete, else None."""
  progress = _read_progress(root)
  if not progress:
    return None
  first = progress[0]
  for p in progress:
    for key in ("format_version", "process_count", "examples_per_shard", "inputs_sha256", "meta"):
      if p[key] != first[key]:
        raise UserError(f"teacher store {root}: progress-p{p['process_index']:03d}.json has {key}={p[key]!r}, "
                        f"progress-p{first['process_index']:03d}.json has {first[key]!r}; delete the store and rerun")
  count = first["process_count"]
  by_process = {p["process_index"]: p for p in progress}
  if set(by_process) - set(range(count)):
    raise UserError(f"teacher store {root}: progress files of processes {sorted(by_process)} for process_count={count}")
  if len(by_process) < count or not all(p["complete"] for p in progress):
    return None
  shards = [s for i in range(count) for s in by_process[i]["shards"]]
  return StoreManifest(**first["meta"], num_examples=sum(s["num_examples"] for s in shards), shards=shards,
                       format_version=first["format_version"], complete=True, process_count=count,
                       examples_per_shard=first["examples_per_shard"], inputs_sha256=first["inputs_sha256"])


def finalize(root: epath.PathLike) -> StoreManifest:
  """Merges the per-process progress files into manifest.json (call on one process after all have finished)."""
  root = epath.Path(root)
  manifest = _merge(root)
  if manifest is None:
    done = [p["process_index"] for p in _read_progress(root) if p["complete"]]
    raise UserError(f"teacher store {root}: not every process is complete (complete: {done}); rerun precompute")
  write_text_atomic(root / MANIFEST, manifest.to_json())
  return manifest


def precompute(root: epath.PathLike, examples: Sequence[tuple[str, str]], encode_fn: EncodeFn, *, batch_size: int,
               examples_per_shard: int = 1024, meta: dict[str, Any], process_index: int = 0,
               process_count: int = 1, progress: bool = True) -> StoreManifest:
  """Encodes this process's block of `examples` into the store at `root`, resuming an interrupted run.

  encode_fn(texts) -> (token embeddings [b, L, dim] float32, mask [b, L] or lengths [b]); texts are
  meta["prefix"] + text, in batches of at most batch_size that never cross a shard boundary. Masked-out positions
  are dropped and real tokens stored first (a left-padded output is read back right-padded).
  Process 0 writes manifest.json once every process's progress file is complete; until then (and on other
  processes) the returned manifest has complete=False and lists only this process's shards; `finalize` merges later.
  """
  root = epath.Path(root)
  meta = validate_meta(meta)
  if batch_size <= 0:
    raise UserError(f"teacher store: batch_size must be positive, got {batch_size}")
  n = len(examples)
  start, end = process_index * n // process_count, (process_index + 1) * n // process_count
  writer = TeacherStoreWriter(root, process_index=process_index, process_count=process_count,
                              examples_per_shard=examples_per_shard, meta=meta,
                              inputs_sha256=inputs_fingerprint(examples))
  pos = start + writer.num_complete
  bar = None
  if progress and pos < end:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=end - start, initial=pos - start, desc=f"teacher p{process_index}", unit="ex")
  try:
    while pos < end:
      shard_end = min(end, start + ((pos - start) // examples_per_shard + 1) * examples_per_shard)
      batch = examples[pos:min(pos + batch_size, shard_end)]
      embs, mask_or_lengths = encode_fn([meta["prefix"] + text for _, text in batch])
      for (example_id, _), tokens in zip(batch, _real_tokens(embs, mask_or_lengths, len(batch))):
        writer.add(example_id, tokens)
      pos += len(batch)
      if bar is not None:
        bar.update(len(batch))
    done = writer.finish()
  finally:
    writer.close()
    if bar is not None:
      bar.close()
  manifest = _merge(root)
  if manifest is not None and process_index == 0:
    write_text_atomic(root / MANIFEST, manifest.to_json())
    return manifest
  shards = done["shards"]
  return StoreManifest(**meta, num_examples=sum(s["num_examples"] for s in shards), shards=shards,
                       complete=False, process_count=process_count, examples_per_shard=examples_per_shard,
                       inputs_sha256=done["inputs_sha256"])


def _real_tokens(embs: Any, mask_or_lengths: Any, b: int) -> list[np.ndarray]:
  embs = np.asarray(embs, np.float32)
  second = np.asarray(mask_or_lengths)
  if embs.ndim != 3 or embs.shape[0] != b:
    raise UserError(f"teacher store: encode_fn returned embeddings of shape {embs.shape} for {b} texts, want [b, L, D]")
  if second.shape == (b,):
    return [embs[i, :int(second[i])] for i in range(b)]
  if second.shape == embs.shape[:2]:
    return [embs[i][second[i] != 0] for i in range(b)]
  raise UserError(f"teacher store: encode_fn returned mask/lengths of shape {second.shape}, want {embs.shape[:2]} "
                  f"or ({b},)")


class TeacherStore:
  """Random-access reader: ids -> zero-padded float32 token embeddings [n, max_len, dim] and int32 mask."""

  def __init__(self, root: epath.Path, manifest: StoreManifest):
    self.root, self.manifest = root, manifest
    self.max_len, self.dim, self.dtype = manifest.max_len, manifest.dim, DTYPES[manifest.dtype]
    self._readers: dict[int, Any] = {}
    self.ids: list[str] = []
    lengths: list[int] = []
    for s, entry in enumerate(manifest.shards):
      footer = msgpack.unpackb(self._read(s, [entry["num_examples"]])[0])
      if len(footer["ids"]) != entry["num_examples"]:
        raise UserError(f"teacher store {root}: shard {entry['name']} lists {len(footer['ids'])} ids, manifest says "
                        f"{entry['num_examples']}; rebuild the store")
      self.ids.extend(footer["ids"])
      lengths.extend(footer["lengths"])
    self.lengths = np.asarray(lengths, np.int32)
    self._index = {example_id: i for i, example_id in enumerate(self.ids)}
    self._offsets = np.cumsum([0] + [e["num_examples"] for e in manifest.shards])

  @classmethod
  def open(cls, root: epath.PathLike, *, expect: dict[str, Any] | None = None, verify: bool = True) -> TeacherStore:
    """Opens a complete store; `expect` fields must match the manifest; verify checks every shard's sha256."""
    root = epath.Path(root)
    path = root / MANIFEST
    if not path.exists():
      hint = "it is not complete (rerun precompute)" if list(root.glob("progress-p*.json")) else "no store there"
      raise UserError(f"teacher store {root}: {MANIFEST} missing: {hint}")
    try:
      manifest = StoreManifest.from_json(path.read_text())
    except (ValueError, TypeError) as e:
      raise UserError(f"teacher store {path}: unreadable manifest ({e})") from e
    if manifest.format_version != FORMAT_VERSION:
      raise UserError(f"teacher store {path}: format_version {manifest.format_version}, this code reads "
                      f"{FORMAT_VERSION}; rebuild the store")
    if not manifest.complete:
      raise UserError(f"teacher store {path}: store is not complete; rerun precompute")
    for field, want in (expect or {}).items():
      if field not in META_KEYS:
        raise UserError(f"teacher store: cannot check unknown field {field!r} (known: {', '.join(META_KEYS)})")
      have = getattr(manifest, field)
      if have != want:
        raise UserError(f"teacher store {root}: store built with another {field}: store has {have!r}, expected "
                        f"{want!r}; rebuild it (optical-jax precompute-teacher) or use another data.teacher_store")
    if verify:
      for entry in manifest.shards:
        shard = root / entry["name"]
        if not shard.exists():
          raise UserError(f"teacher store {root}: shard {entry['name']} is missing")
        sha, size = _sha256(shard)
        if size != entry["size_bytes"]:
          raise UserError(f"teacher store {root}: shard {entry['name']} has {size} bytes, manifest says "
                          f"{entry['size_bytes']} (truncated?); rebuild the store")
        if sha != entry["sha256"]:
          raise UserError(f"teacher store {root}: shard {entry['name']} sha256 mismatch (corrupted); rebuild the store")
    return cls(root, manifest)

  def _read(self, s: int, local: list[int]) -> list[bytes]:
    name = self.manifest.shards[s]["name"]
    try:
      if s not in self._readers:
        reader = array_record_module.ArrayRecordReader(str(self.root / name), _READER_OPTIONS)
        if not reader.ok() or reader.num_records() != self.manifest.shards[s]["num_examples"] + 1:
          raise UserError(f"teacher store {self.root}: shard {name} cannot be opened (truncated or corrupted); "
                          "rebuild the store")
        self._readers[s] = reader
      return self._readers[s].read(local)
    except RuntimeError as e:  # Riegeli chunk hash mismatch and other read failures
      raise UserError(f"teacher store {self.root}: shard {name} is corrupted ({e}); rebuild the store") from e

  def __len__(self) -> int:
    return len(self.ids)

  def index_of(self, example_id: str) -> int:
    try:
      return self._index[example_id]
    except KeyError:
      raise UserError(f"teacher store {self.root}: id {example_id!r} is not in the store") from None

  def get(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return self.lookup_batch([self.index_of(i) for i in ids])

  def lookup_batch(self, indices: Sequence[int] | np.ndarray, dtype: Any = np.float32
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n, max_len, dim] in `dtype` (the stored one: `self.dtype`), zero-padded; mask [n, max_len] int32)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"teacher store index out of range [0, {len(self)}): {indices.min()}..{indices.max()}")
    tokens = np.zeros((indices.size, self.max_len, self.dim), dtype)
    mask = np.zeros((indices.size, self.max_len), np.int32)
    shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
    for s in np.unique(shard_of):
      rows = np.flatnonzero(shard_of == s)
      records = self._read(int(s), (indices[rows] - self._offsets[s]).tolist())
      for row, record in zip(rows, records):
        example_id, length, data = msgpack.unpackb(record)
        if example_id != self.ids[indices[row]]:
          raise UserError(f"teacher store {self.root}: shard {self.manifest.shards[s]['name']} record for "
                          f"{self.ids[indices[row]]!r} holds {example_id!r}; rebuild the store")
        tokens[row, :length] = np.frombuffer(data, self.dtype).reshape(length, self.dim)
        mask[row, :length] = 1
    return tokens, mask

  def store_size_bytes(self) -> int:
    """Bytes of all shards (from the manifest)."""
    return sum(e["size_bytes"] for e in self.manifest.shards)

  def close(self) -> None:
    for reader in self._readers.values():
      reader.close()
    self._readers = {}

  def __enter__(self) -> TeacherStore:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getstate__(self) -> dict[str, Any]:  # readers are reopened lazily after pickling (data-loader workers)
    return {**self.__dict__, "_readers": {}}
