"""Real training rows: the bitext's student-side token ids joined by example id with the stored teacher tokens.

The store must have been built by the configured teacher, tokenizer and length (checked before the first step), and
must hold every training id: anything else stops the run with a message that says which.
"""
from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np
from etils import epath

from optical_jax.data import batch_spec as batch_spec_lib
from optical_jax.data import encoding, hard_negatives, pipeline, teacher_store, tokens
from optical_jax.data.bitext import load_training_sources, teacher_keys
from optical_jax.data.report import DataReport
from optical_jax.data.teacher import load_teacher, store_identity, store_root, target_prefix
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")


def _tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_token_type_ids=False,
                  return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def build(config: ml_collections.ConfigDict, workdir) -> batch_spec_lib.TrainingData:
  workdir = epath.Path(workdir)
  report = DataReport()
  training = load_training_sources(config, workdir, report)
  bitext = training.examples
  if jax.process_index() == 0:
    report.write(workdir / "data_report.json")
    log.info("bitext: %s", report.summary())
    if len(training.sources) > 1:
      log.info("bitext sources: %s", "; ".join(
          f"{s.spec} ({s.language or '?'}): {n} pairs, weight {s.weight:g}"
          for s, n in zip(training.sources, training.sizes)))
  root = store_root(config, workdir)
  if not (root / teacher_store.MANIFEST).exists():
    raise UserError(f"{root}: no teacher store; run `optical-jax precompute-teacher` with this config first")
  teacher = load_teacher(config)
  store = teacher_store.TeacherStore.open(root, expect=store_identity(config, teacher),
                                          verify=config.data.verify_store)
  known = set(store.ids)
  keys = teacher_keys(bitext)
  missing = [key for key in keys if key not in known]
  if missing:
    raise UserError(f"{root}: the teacher store lacks {len(missing)} training ids (first: {missing[0]!r}); "
                    "it was built for other bitext: rerun precompute-teacher into a new store")
  store_rows = np.asarray([store.index_of(key) for key in keys], np.int64)
  spec = batch_spec_lib.batch_spec(config, teacher_dtype=store.manifest.dtype)

  tokenizer = encoding.student_tokenizer(config)
  prefix, target = config.student.prefix, target_prefix(config)
  student_ids, student_mask = _tokenize(tokenizer, [prefix + ex.source for ex in bitext],
                                        config.data.max_len_student)
  # Per-example tables, indexed by example; each batch takes its rows.
  tables = {"student_ids": student_ids, "student_mask": student_mask}
  if "english_ids" in spec:
    # The English-side term runs the student on the English side too: tokenised like the teacher's input (same
    # prefix, the teacher's max length), but with the student's tokenizer; cut to the teacher's length bucket.
    tables["english_ids"], tables["english_mask"] = _tokenize(
        tokenizer, [target + ex.target for ex in bitext], config.data.max_len_teacher)
  student_skip = 1 + tokens.prefix_length(tokenizer, prefix)
  teacher_skip = 1 + tokens.prefix_length(teacher.tokenizer, target)
  english_skip = 1 + tokens.prefix_length(tokenizer, target)
  if "student_weights" in spec:
    # IDF over the training bitext, each side in its own vocabulary; the loss renormalises over the OT tokens.
    # The store holds the teacher's real tokens in tokenizer order: the same tokenization gives their ids.
    teacher_ids, teacher_id_mask = teacher.tokenize([ex.target for ex in bitext], config.data.max_len_teacher,
                                                    prefix=target)
    stored = np.arange(teacher_id_mask.shape[1])[None] < store.lengths[store_rows][:, None]
    if not np.array_equal(stored, teacher_id_mask > 0):
      bad = int(np.flatnonzero((stored != (teacher_id_mask > 0)).any(1))[0])
      raise UserError(f"{root}: stored teacher token counts differ from the teacher tokenizer's (first: "
                      f"{bitext[bad].id!r}); rebuild the store")
    # ot.idf_power sharpens (> 1) or flattens (< 1) the weighting; 1 is plain IDF.
    power = config.ot.idf_power
    tables["student_weights"] = tokens.idf_weights(student_ids, student_mask) ** power
    tables["teacher_weights"] = tokens.idf_weights(teacher_ids, teacher_id_mask) ** power
  del teacher  # Only its identity and tokenizer were needed: the teacher never runs while training.
  lookup = lambda rows: store.lookup_batch(store_rows[rows], dtype=store.dtype)
  negatives = None
  if "negative_tokens" in spec:
    negatives = hard_negatives.mine(lookup, len(bitext), config.loss.rank_hard_negatives)

  def load_rows(indices: np.ndarray) -> dict[str, np.ndarray]:
    stored_tokens, stored_mask = lookup(indices)
    batch = {key: table[indices] for key, table in tables.items()}
    batch.update(teacher_tokens=stored_tokens, teacher_mask=stored_mask)
    if negatives is not None:
      batch.update(hard_negatives.batch_rows(indices, negatives, lookup))
    if "student_ot_mask" in spec:
      for side, skip in (("student", student_skip), ("teacher", teacher_skip), ("english", english_skip),
                         ("negative", teacher_skip)):
        if f"{side}_ot_mask" in spec:
          batch[f"{side}_ot_mask"] = tokens.content_mask(batch[f"{side}_mask"], skip)
    return batch

  # The store keeps each example's real teacher token count, and its rows are zero-padded after them.
  return batch_spec_lib.TrainingData(
      load_rows, len(bitext), int(store.manifest.dim), spec,
      f"{config.data.bitext} ({len(bitext)} pairs) + teacher store {root}", tokenizer=tokenizer,
      student_lengths=pipeline.real_lengths(student_mask), teacher_lengths=store.lengths[store_rows].astype(np.int32),
      sources=tuple((size, source.weight) for size, source in zip(training.sizes, training.sources)),
      teacher_rows=store_rows,
      english_lengths=pipeline.real_lengths(tables["english_mask"]) if "english_mask" in tables else None)
