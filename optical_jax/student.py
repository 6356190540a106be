"""The student encoder, built one way for training, export, evaluation and the benchmark.

`student.init="random"` builds a BERT / XLM-R encoder from the `student.*` dims (with the byte-level tokenizer on
text, none on SYNTHETIC ids); an HF directory loads its architecture, weights, tokenizer and the fields an export
carries along (pooler, source config), cut to its first `student.keep_layers` layers if that is set. A projection
head (`student.projection_dim`) starts fresh.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from optical_jax import models
from optical_jax import sharding as sharding_lib
from optical_jax import train_step as train_step_lib
from optical_jax.data import encoding
from optical_jax.errors import UserError


@dataclasses.dataclass
class Student:
  module: models.BertEncoder
  pretrained_params: Any  # host arrays of a pretrained init, None for a random one
  tokenizer: Any          # None for SYNTHETIC token ids
  extra: dict | None      # what an export carries along (models.Encoder.extra)

  @property
  def output_dim(self) -> int:
    return self.module.config.projection_dim or self.module.config.hidden_size


def random_config(config: ml_collections.ConfigDict) -> models.EncoderConfig:
  s = config.student
  return models.EncoderConfig(
      model_type=s.model_type, vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
      num_heads=s.num_heads, intermediate_size=s.intermediate_size, max_position_embeddings=s.max_position_embeddings,
      pad_token_id=s.pad_token_id, projection_dim=s.projection_dim, normalize=s.normalize, dtype=s.dtype)


def build_student(config: ml_collections.ConfigDict) -> Student:
  s = config.student
  if s.init == "random":
    tokenizer = None if config.data.bitext == "synthetic" else encoding.student_tokenizer(config)
    return Student(models.BertEncoder(random_config(config)), None, tokenizer, None)
  encoder = models.from_pretrained(s.init, projection_dim=s.projection_dim, normalize=s.normalize, dtype=s.dtype,
                                   keep_layers=s.keep_layers)
  return Student(models.BertEncoder(encoder.config), encoder.params, encoder.tokenizer, encoder.extra)


def check_output_dim(student: Student, teacher_dim: int) -> None:
  if student.output_dim != teacher_dim:
    raise UserError(
        f"config: the student's output dim is {student.output_dim} but the teacher's tokens have dim {teacher_dim}; "
        f"set student.projection_dim={teacher_dim}")


def initial_encoder(config: ml_collections.ConfigDict, student: Student | None = None) -> models.Encoder:
  """The student as training starts (step 0, params on the host): the zero_shot baseline.

  `student`: the config's `build_student`, when the caller has built it already (it reads the weights from disk).
  """
  student = student or build_student(config)
  if student.pretrained_params is not None and not config.student.projection_dim:
    params = student.pretrained_params  # nothing fresh to initialise
  else:
    # The same initialisation as training's (train_step.create_train_state, seed `config.seed`), on one device.
    mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
    state, _ = train_step_lib.create_train_state(student.module, optax.identity(), config, mesh,
                                                 jax.random.key(config.seed), init_params=student.pretrained_params)
    params = jax.device_get(state.params)
  return models.Encoder(module=student.module, params=params, tokenizer=student.tokenizer,
                        config=student.module.config, extra=student.extra)
