"""The one definition of a training batch: its keys, their ranks and dtypes, and which config turns each on.

The stored-teacher loader, the synthetic generator, the benchmark's on-device batches and the train step's
shardings all derive from `batch_spec(config)`, so a new key (or a dtype change) is made here once.
Axis 0 is the batch; axis 1 is the token axis of the key's side, which length bucketing cuts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
  rank: int
  dtype: str
  doc: str


def batch_spec(config: ml_collections.ConfigDict, *, teacher_dtype: str | None = None) -> dict[str, Field]:
  """Key -> Field of every array in this config's training batches; `teacher_dtype`: the store's, if known."""
  int32 = "int32"
  spec = {
      "student_ids": Field(2, int32, "[B, Ls] low-resource token ids"),
      "student_mask": Field(2, int32, "[B, Ls] 1 on real tokens"),
      # Stored in the teacher store's dtype and cast in the loss: float16 halves host memory and transfers.
      "teacher_tokens": Field(3, teacher_dtype or config.data.teacher_dtype, "[B, Lt, D] teacher token states"),
      "teacher_mask": Field(2, int32, "[B, Lt] 1 on real tokens"),
  }
  english = bool(config.loss.english_weight or config.loss.english_mse_weight)
  if english:
    spec["english_ids"] = Field(2, int32, "[B, Lt] the English side in the student's tokenizer")
    spec["english_mask"] = Field(2, int32, "[B, Lt]")
  if config.ot.tokens == "content":
    spec["student_ot_mask"] = Field(2, int32, "[B, Ls] tokens in the OT problem (no special / prefix tokens)")
    spec["teacher_ot_mask"] = Field(2, int32, "[B, Lt]")
    if english:
      spec["english_ot_mask"] = Field(2, int32, "[B, Lt]")
  hard = config.loss.rank_hard_negatives if config.loss.rank_weight else 0
  if hard:
    # Each example's `hard` mined negatives, example-major: rows i*hard ... i*hard + hard - 1 belong to example i.
    # Never trimmed to a length bucket (they are other examples, padded to data.max_len_teacher).
    spec["example_index"] = Field(1, int32, "[B] training-set index of each example")
    spec["negative_index"] = Field(1, int32, "[B*H] training-set index of each hard negative")
    spec["negative_tokens"] = Field(3, teacher_dtype or config.data.teacher_dtype, "[B*H, Lt, D] their teacher states")
    spec["negative_mask"] = Field(2, int32, "[B*H, Lt] 1 on real tokens")
    if config.ot.tokens == "content":
      spec["negative_ot_mask"] = Field(2, int32, "[B*H, Lt] the tokens MaxSim scores")
  if config.ot.marginals == "idf":
    spec["student_weights"] = Field(2, "float32", "[B, Ls] IDF marginal weights (0 on pads)")
    spec["teacher_weights"] = Field(2, "float32", "[B, Lt]")
  return spec


def check_rows(rows: dict[str, np.ndarray], spec: dict[str, Field], source: str) -> None:
  """A loader's rows must match the spec key for key, rank for rank, dtype for dtype (else a bug, not user input)."""
  if set(rows) != set(spec):
    raise ValueError(f"{source}: batch keys {sorted(rows)} differ from the spec's {sorted(spec)}")
  for key, field in spec.items():
    value = rows[key]
    if value.ndim != field.rank or value.dtype != np.dtype(field.dtype):
      raise ValueError(f"{source}: {key} is {value.dtype}[{value.ndim}D], the spec says {field.dtype}[{field.rank}D]")


@dataclasses.dataclass
class TrainingData:
  """What the training loop trains on: rows by example index, matching `spec`."""
  load_rows: Callable[[np.ndarray], dict[str, np.ndarray]]  # example indices → batch rows (numpy)
  num_examples: int
  teacher_dim: int
  spec: dict[str, Field]
  description: str
  tokenizer: Any = None
  # [N] real student / teacher length of every example (pipeline.real_lengths): what length bucketing chooses from.
  student_lengths: np.ndarray | None = None
  teacher_lengths: np.ndarray | None = None
  english_lengths: np.ndarray | None = None  # [N] of the English-side input, when the loss has an English term
  # (size, weight) of each bitext source, in example order (several sources: pipeline.batch_index_dataset).
  sources: tuple[tuple[int, float], ...] = ()
  # [N] teacher-store row of every example: examples that share an English text share a row (and a dev hold-out).
  teacher_rows: np.ndarray | None = None
  dev: Any = None  # dev_eval.DevSet of the held-out pairs (data.dev_pairs), or None
