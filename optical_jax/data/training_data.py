"""What the training loop trains on: `data.bitext == "synthetic"` gives the SYNTHETIC generator (tests,
configs/tiny.py); any other source is read by the bitext readers and joined by id with the teacher store that
`optical-jax precompute-teacher` wrote (data/store_join.py).
"""
from __future__ import annotations

import logging

import ml_collections
import numpy as np
from etils import epath

from optical_jax import dev_eval
from optical_jax.data import augment, bitext, hard_negatives, pipeline, store_join, synthetic, tokens
from optical_jax.data.batch_spec import TrainingData, batch_spec


def build(config: ml_collections.ConfigDict, workdir: epath.Path) -> TrainingData:
  """The training rows, without the dev pairs (`data.dev_pairs`), which come back in `.dev`."""
  lexicon = augment.load_lexicon(config)  # before the data: a bad lexicon stops the run at once
  data = store_join.build(config, workdir) if config.data.bitext != "synthetic" else _synthetic(config)
  data = augment.apply(config, workdir, data, lexicon)  # before the hold-out: dev rows keep their clean text
  synthetic_sources = [s.spec for s in bitext.parse_sources(config.data.bitext) if s.synthetic]
  if synthetic_sources:
    logging.getLogger("optical_jax").info("synthetic bitext sources (flagged [synthetic]): %s",
                                          ", ".join(synthetic_sources))
  return dev_eval.hold_out(data, config.data.dev_pairs, config.data.sample_seed)


def _synthetic(config: ml_collections.ConfigDict) -> TrainingData:
  corpus = synthetic.make_synthetic_bitext(
      num_examples=config.data.num_examples, vocab_size=config.student.vocab_size,
      max_len_student=config.data.max_len_student, max_len_teacher=config.data.max_len_teacher,
      teacher_dim=config.teacher.dim, seed=config.seed)
  spec = batch_spec(config)
  dtype = spec["teacher_tokens"].dtype
  # The generator's teacher side has no special tokens and no ids: its OT tokens are all its real tokens, and its
  # IDF marginal is uniform. The student side is [CLS] ids [SEP], like a tokenizer's.
  student_weights = tokens.idf_weights(corpus.student_ids, corpus.student_mask) ** config.ot.idf_power

  lookup = lambda rows: (corpus.teacher_tokens[rows].astype(dtype), corpus.teacher_mask[rows])
  negatives = None
  if "negative_tokens" in spec:
    negatives = hard_negatives.mine(lookup, len(corpus), config.loss.rank_hard_negatives)

  def load_rows(indices):
    rows = corpus.batch(indices)
    rows["teacher_tokens"] = rows["teacher_tokens"].astype(dtype)
    if negatives is not None:
      rows.update(hard_negatives.batch_rows(indices, negatives, lookup))
    if "student_ot_mask" in spec:
      rows["student_ot_mask"] = tokens.content_mask(rows["student_mask"], 1)
      rows["teacher_ot_mask"] = rows["teacher_mask"]
      if negatives is not None:
        rows["negative_ot_mask"] = rows["negative_mask"]
    if "student_weights" in spec:
      rows["student_weights"] = student_weights[indices]
      rows["teacher_weights"] = rows["teacher_mask"].astype(np.float32)
    return rows

  return TrainingData(load_rows, len(corpus), config.teacher.dim, spec,
                      f"SYNTHETIC bitext ({len(corpus)} generated pairs)",
                      student_lengths=pipeline.real_lengths(corpus.student_mask),
                      teacher_lengths=pipeline.real_lengths(corpus.teacher_mask))
