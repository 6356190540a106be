"""`optical-jax precompute-teacher`: the teacher, run once over the English side of the training bitext.

Each process encodes its block of the examples in jitted, sharded batches and writes its own shards; a killed run,
rerun, continues from its last complete shard (data/teacher_store.py).
"""
from __future__ import annotations

import logging
import time

import jax
import ml_collections
from etils import epath

from optical_jax import metrics as metrics_lib
from optical_jax import sharding as sharding_lib
from optical_jax.data import encoding, pipeline, teacher_store
from optical_jax.data.bitext import load_training_bitext, teacher_keys
from optical_jax.data.report import DataReport
from optical_jax.data.teacher import load_teacher, store_identity, store_root, teacher_head

log = logging.getLogger("optical_jax")


def precompute_teacher(config: ml_collections.ConfigDict, workdir: str) -> teacher_store.StoreManifest:
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  report = DataReport()
  bitext = load_training_bitext(config, workdir, report)
  if jax.process_index() == 0:
    report.write(workdir / "data_report.json")
    log.info("bitext: %s", report.summary())
  # One row per distinct English text (data/bitext.teacher_keys): sources with a common English side share it.
  examples = [(ex.id, ex.target) for ex, key in zip(bitext, teacher_keys(bitext)) if key == ex.id]
  buckets = tuple(int(b) for b in config.data.length_buckets)
  if buckets:
    # Similar lengths in each batch, so most batches run at a short bucket; the store is read by id, not position.
    examples.sort(key=lambda example: len(example[1]))
  teacher = load_teacher(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  encode_fn = encoding.make_encode_fn(teacher, max_len=config.data.max_len_teacher, mesh=mesh,
                                      batch_size=config.data.teacher_batch_size, head=teacher_head(teacher),
                                      length_buckets=pipeline.teacher_buckets(buckets, config.data.max_len_student,
                                                                              config.data.max_len_teacher))
  meta = dict(store_identity(config, teacher), dtype=config.data.teacher_dtype)
  root = store_root(config, workdir)
  started = time.perf_counter()
  manifest = teacher_store.precompute(
      root, examples, encode_fn, batch_size=config.data.teacher_batch_size,
      examples_per_shard=config.data.examples_per_shard, meta=meta,
      process_index=jax.process_index(), process_count=jax.process_count(),
      progress=metrics_lib.progress_enabled())
  if manifest.complete:
    size = sum(s["size_bytes"] for s in manifest.shards)
    log.info("teacher store %s: %d examples, %d shards, %.1f MB, %.1f s", root, manifest.num_examples,
             len(manifest.shards), size / 1e6, time.perf_counter() - started)
  return manifest
