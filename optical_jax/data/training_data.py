"""What the training loop trains on: `data.bitext == "synthetic"` gives the SYNTHETIC generator (tests,
configs/tiny.py); any other source is read by the bitext readers and joined by id with the teacher store that
`optical-jax precompute-teacher` wrote (data/store_join.py).
"""
from __future__ import annotations

import ml_collections
from etils import epath

from optical_jax.data import pipeline, store_join, synthetic
from optical_jax.data.batch_spec import TrainingData, batch_spec


def build(config: ml_collections.ConfigDict, workdir: epath.Path) -> TrainingData:
  if config.data.bitext != "synthetic":
    return store_join.build(config, workdir)
  corpus = synthetic.make_synthetic_bitext(
      num_examples=config.data.num_examples, vocab_size=config.student.vocab_size,
      max_len_student=config.data.max_len_student, max_len_teacher=config.data.max_len_teacher,
      teacher_dim=config.teacher.dim, seed=config.seed)
  spec = batch_spec(config)
  dtype = spec["teacher_tokens"].dtype

  def load_rows(indices):
    rows = corpus.batch(indices)
    rows["teacher_tokens"] = rows["teacher_tokens"].astype(dtype)
    return rows

  return TrainingData(load_rows, len(corpus), config.teacher.dim, spec,
                      f"SYNTHETIC bitext ({len(corpus)} generated pairs)",
                      student_lengths=pipeline.real_lengths(corpus.student_mask),
                      teacher_lengths=pipeline.real_lengths(corpus.teacher_mask))
