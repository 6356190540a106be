"""The frozen teacher: loading it, and its identity (what a teacher store must have been built with).

precompute-teacher writes a store stamped with `teacher_identity`; training and evaluation open it expecting the
same identity, so a store built by another teacher, tokenizer or length is refused before the first step.
"""
from __future__ import annotations

import functools
import hashlib

import ml_collections
from etils import epath

from optical_jax.data import encoding


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


def teacher_identity(config: ml_collections.ConfigDict, encoder) -> dict:
  """What a store must have been built with to be usable: teacher weights, tokenizer, length, dim."""
  path = str(config.teacher.path)
  if path == "random":
    checksum = f"random:seed={config.seed}:dims={config.teacher.dim}"
    tokenizer = "byte-level"
  else:
    weights = epath.Path(path) / "model.safetensors"
    if not weights.exists():
      weights = epath.Path(path) / "pytorch_model.bin"
    checksum = _file_checksum(weights)
    tok_file = epath.Path(path) / "tokenizer.json"
    tokenizer = _file_checksum(tok_file) if tok_file.exists() else type(encoder.tokenizer).__name__
  return {"teacher": path, "teacher_checksum": checksum, "tokenizer": tokenizer,
          "max_len": int(config.data.max_len_teacher), "dim": int(encoder.config.hidden_size)}


def load_teacher(config: ml_collections.ConfigDict):
  """The frozen teacher encoder (cached per process: precompute, training data, export and evaluation all ask)."""
  path = str(config.teacher.path)
  version = None
  if path != "random":
    config_file = epath.Path(path) / "config.json"
    version = config_file.stat().mtime if config_file.exists() else None
  return _load_teacher(path, int(config.teacher.dim), int(config.seed) + 1, version)


@functools.lru_cache(maxsize=2)
def _load_teacher(path: str, dim: int, seed: int, version: float | None):
  del version  # only part of the cache key: a directory rewritten in place is loaded again
  return encoding.load_encoder(path, random_dims={"hidden_size": dim}, seed=seed)
