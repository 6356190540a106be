"""The frozen teacher: loading it, and its identity (what a teacher store must have been built with).

precompute-teacher writes a store stamped with `teacher_identity`; training and evaluation open it expecting the
same identity, so a store built by another teacher, tokenizer or length is refused before the first step.

A teacher is an HF directory (its last hidden states, e.g. mE5) or a ColBERT checkpoint (PyLate / sentence-
transformers layout, or Stanford ColBERT; models.from_pretrained): then its linear head projects every token
vector it gives (store, evaluation documents, index, teacher_en / teacher_lr queries; `teacher_head`), and the
store's dim, the index's and the one the student must project to (student.projection_dim) are its out_features.
Its [Q] / [D] markers are not prepended for you: set teacher.query_prefix / teacher.passage_prefix to the prefixes
the checkpoint declares ("[Q] " / "[D] " for PyLate, "[unused0] " / "[unused1] " for Stanford ColBERT, followed by
any prompt); a warning says when they differ. ColBERT's [MASK] query expansion and punctuation skiplist are not
reproduced.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging

import ml_collections
from etils import epath

from optical_jax.data import encoding

log = logging.getLogger("optical_jax")


def store_root(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  """The teacher store directory: `data.teacher_store`, else WORKDIR/teacher_store."""
  return epath.Path(config.data.teacher_store or epath.Path(workdir) / "teacher_store")


def _file_checksum(path: epath.Path) -> str:
  stat = path.stat()
  return _checksum(str(path), stat.length, stat.mtime)


@functools.lru_cache(maxsize=16)
def _checksum(path: str, size: int, mtime: float) -> str:
  # Keyed on size and mtime too: a file rewritten in place is hashed again. (A 470 MB teacher takes seconds to hash,
  # and one demo process checks the store's teacher several times.)
  del size, mtime
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(8 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def teacher_head(encoder) -> bool:
  """Whether the teacher's token vectors go through its projection head: exactly when it has one (a ColBERT
  checkpoint's linear head); a plain HF teacher gives its last hidden states."""
  return bool(encoder.config.projection_dim)


def teacher_dim(encoder) -> int:
  """The width of the teacher's token vectors (the store's, the index's, the student's output)."""
  return encoder.config.projection_dim if teacher_head(encoder) else encoder.config.hidden_size


def teacher_identity(config: ml_collections.ConfigDict, encoder) -> dict:
  """What a store must have been built with to be usable: teacher weights, tokenizer, length, dim."""
  path = str(config.teacher.path)
  if path == "random":
    checksum = f"random:seed={config.seed}:dims={config.teacher.dim}"
    tokenizer = "byte-level"
  else:
    root = epath.Path(encoder.extra.get("model_dir", path))  # a sentence-transformers layout may use a subfolder
    weights = root / "model.safetensors"
    if not weights.exists():
      weights = root / "pytorch_model.bin"
    checksum = _file_checksum(weights)
    colbert = encoder.extra.get("colbert")
    if colbert:
      # The head and the marker tokens are part of the teacher: a store built before its Dense was retrained, or
      # with other markers, must not match. (A plain teacher keeps its weights' checksum, so old stores still do.)
      parts = {"weights": checksum, "head": [_file_checksum(epath.Path(f)) for f in colbert["head_files"]],
               "markers": colbert["markers"]}
      checksum = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    tok_file = root / "tokenizer.json"
    tokenizer = _file_checksum(tok_file) if tok_file.exists() else type(encoder.tokenizer).__name__
  return {"teacher": path, "teacher_checksum": checksum, "tokenizer": tokenizer,
          "max_len": int(config.data.max_len_teacher), "dim": teacher_dim(encoder)}


def target_prefix(config: ml_collections.ConfigDict) -> str:
  """The text prefix of the stored English targets (teacher.targets): query-mode or passage-mode teacher tokens."""
  return config.teacher.passage_prefix if config.teacher.targets == "passage" else config.teacher.query_prefix


def store_identity(config: ml_collections.ConfigDict, encoder) -> dict:
  """teacher_identity plus the targets' prefix: a store of query-mode targets must not serve a passage-mode run."""
  return dict(teacher_identity(config, encoder), prefix=target_prefix(config))


def load_teacher(config: ml_collections.ConfigDict):
  """The frozen teacher encoder (cached per process: precompute, training data, export and evaluation all ask)."""
  path = str(config.teacher.path)
  version = None
  if path != "random":
    files = [epath.Path(path) / name for name in ("config.json", "modules.json")]
    version = tuple(f.stat().mtime for f in files if f.exists())
  teacher = _load_teacher(path, int(config.teacher.dim), int(config.seed) + 1, version)
  if path != "random":
    colbert = teacher.extra.get("colbert")
    declared = (colbert["format"], colbert["query_prefix"], colbert["document_prefix"]) if colbert else None
    _advise(path, teacher_dim(teacher), int(config.teacher.dim), str(config.teacher.query_prefix),
            str(config.teacher.passage_prefix), declared)
  return teacher


@functools.lru_cache(maxsize=8)
def _advise(path: str, dim: int, config_dim: int, query_prefix: str, passage_prefix: str,
            declared: tuple[str, str, str] | None) -> None:
  # Once per setting (every command loads the teacher several times); advice only: the config is the user's.
  if dim != config_dim:
    log.warning("teacher %s gives %d-dim token vectors but teacher.dim=%d: set teacher.dim=%d (and "
                "student.projection_dim=%d, the width the student must project to)", path, dim, config_dim, dim, dim)
  if declared is None:
    return
  fmt, query, document = declared
  for key, texts, wanted, ours in (("query", "queries", query, query_prefix),
                                   ("passage", "documents", document, passage_prefix)):
    if wanted != ours:
      log.warning("teacher %s is a %s ColBERT checkpoint that encodes %s with the prefix %r, but "
                  "teacher.%s_prefix=%r: set --config.teacher.%s_prefix=%r to encode them as it was trained", path,
                  fmt, texts, wanted, key, ours, key, wanted)


@functools.lru_cache(maxsize=2)
def _load_teacher(path: str, dim: int, seed: int, version: tuple | None):
  del version  # only part of the cache key: a directory rewritten in place is loaded again
  return encoding.load_encoder(path, random_dims={"hidden_size": dim}, seed=seed)
