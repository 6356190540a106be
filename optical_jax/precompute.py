"""`optical-jax precompute-teacher`: the teacher, run once over the English side of the training bitext.

Each process encodes its block of the examples in jitted, sharded batches and writes its own shards; a killed run,
rerun, continues from its last complete shard (data/teacher_store.py).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import random
import time

import jax
import ml_collections
from etils import epath

from optical_jax import metrics as metrics_lib
from optical_jax import sharding as sharding_lib
from optical_jax.data import encoding, teacher_store
from optical_jax.data.report import DataReport
from optical_jax.data.tfds_bitext import load_bitext
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")


def store_root(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.data.teacher_store or epath.Path(workdir) / "teacher_store")


def tfds_data_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.data.get("tfds_data_dir") or epath.Path(workdir) / "tfds")


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


def load_training_bitext(config: ml_collections.ConfigDict, workdir, report: DataReport | None = None):
  """The training bitext; `data.max_train_pairs` > 0 keeps a seeded random sample of that many pairs.

  The sample depends only on (`data.sample_seed`, the source), so precompute-teacher and train, which both call
  this, always see the same examples in the same order.
  """
  bitext = load_bitext(config.data.bitext, split="train", data_dir=tfds_data_dir(config, workdir),
                       strict=bool(config.data.strict), report=report)
  limit = int(config.data.get("max_train_pairs", 0) or 0)
  if limit < 0:
    raise UserError(f"config: data.max_train_pairs must be >= 0, got {limit}")
  if limit and limit < len(bitext):
    rows = sorted(random.Random(int(config.data.get("sample_seed", 0))).sample(range(len(bitext)), limit))
    bitext = [bitext[i] for i in rows]
  return bitext


def precompute_teacher(config: ml_collections.ConfigDict, workdir: str) -> teacher_store.StoreManifest:
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report = DataReport()
  bitext = load_training_bitext(config, workdir, report)
  if jax.process_index() == 0:
    report.write(workdir / "data_report.json")
    log.info("bitext: %s", report.summary())
  examples = [(ex.id, ex.target) for ex in bitext]
  teacher = load_teacher(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  encode_fn = encoding.make_encode_fn(teacher, max_len=config.data.max_len_teacher, mesh=mesh,
                                      batch_size=config.data.get("teacher_batch_size", 64))
  meta = dict(teacher_identity(config, teacher), dtype=config.data.get("teacher_dtype", "float16"),
              prefix=config.teacher.query_prefix)
  root = store_root(config, workdir)
  started = time.perf_counter()
  manifest = teacher_store.precompute(
      root, examples, encode_fn, batch_size=config.data.get("teacher_batch_size", 64),
      examples_per_shard=config.data.get("examples_per_shard", 4096), meta=meta,
      process_index=jax.process_index(), process_count=jax.process_count(),
      progress=metrics_lib.progress_enabled())
  if manifest.complete:
    size = sum(s["size_bytes"] for s in manifest.shards)
    log.info("teacher store %s: %d examples, %d shards, %.1f MB, %.1f s", root, manifest.num_examples,
             len(manifest.shards), size / 1e6, time.perf_counter() - started)
  return manifest
