"""What the training loop trains on: rows of (student ids, stored teacher tokens), and the student to train.

`config.data.bitext == "synthetic"` gives the SYNTHETIC generator (tests, configs/tiny.py); any other source is read
by the bitext readers and joined by id with the teacher store that `optical-jax precompute-teacher` wrote.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np
from etils import epath

from optical_jax.data import pipeline
from optical_jax.data import synthetic
from optical_jax.errors import UserError


@dataclasses.dataclass
class TrainingData:
  load_rows: Callable[[np.ndarray], dict[str, np.ndarray]]  # example indices → batch rows (numpy)
  num_examples: int
  teacher_dim: int
  batch_ranks: dict[str, int]
  description: str
  tokenizer: Any = None
  # [N] real student / teacher length of every example (pipeline.real_lengths): what length bucketing chooses from.
  student_lengths: np.ndarray | None = None
  teacher_lengths: np.ndarray | None = None


def build(config: ml_collections.ConfigDict, workdir: epath.Path) -> TrainingData:
  if config.data.bitext == "synthetic":
    corpus = synthetic.make_synthetic_bitext(
        num_examples=config.data.num_examples, vocab_size=config.student.vocab_size,
        max_len_student=config.data.max_len_student, max_len_teacher=config.data.max_len_teacher,
        teacher_dim=config.teacher.dim, seed=config.seed)
    ranks = {k: v.ndim for k, v in corpus.batch(np.arange(1)).items()}
    return TrainingData(corpus.batch, len(corpus), config.teacher.dim, ranks,
                        f"SYNTHETIC bitext ({len(corpus)} generated pairs)",
                        student_lengths=pipeline.real_lengths(corpus.student_mask),
                        teacher_lengths=pipeline.real_lengths(corpus.teacher_mask))
  from optical_jax.data import store_source  # The real path needs the teacher store; import it only then.
  return store_source.build(config, workdir)


def student_config(config: ml_collections.ConfigDict, teacher_dim: int):
  from optical_jax.models import EncoderConfig
  s = config.student
  projection = s.get("projection_dim", 0)
  return EncoderConfig(
      model_type=s.model_type, vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
      num_heads=s.num_heads, intermediate_size=s.intermediate_size,
      max_position_embeddings=s.get("max_position_embeddings", 512),
      pad_token_id=synthetic.PAD_ID if config.data.bitext == "synthetic" else s.get("pad_token_id", 0),
      projection_dim=projection, normalize=bool(s.get("normalize", False)), dtype=s.get("dtype", "float32"))


def build_student(config: ml_collections.ConfigDict, data: TrainingData):
  """The student module and, for a pretrained init, its parameters (host arrays)."""
  from optical_jax import models
  if config.student.init == "random":
    encoder_config = student_config(config, data.teacher_dim)
    init_params = None
  else:
    encoder = models.from_pretrained(config.student.init, projection_dim=config.student.get("projection_dim", 0),
                                     normalize=bool(config.student.get("normalize", False)),
                                     dtype=config.student.get("dtype", "float32"))
    encoder_config, init_params = encoder.config, encoder.params
  out_dim = encoder_config.projection_dim or encoder_config.hidden_size
  if out_dim != data.teacher_dim:
    raise UserError(
        f"config: the student's output dim is {out_dim} but the teacher's tokens have dim {data.teacher_dim}; "
        f"set student.projection_dim={data.teacher_dim}")
  return models.BertEncoder(encoder_config), init_params
