"""SYNTHETIC bitext with a learnable token alignment, for tests and `configs/tiny.py`.

Not real data: every use of it is labelled synthetic. Each "low-resource" token id stands for one concept; the
"teacher" side of a pair holds the concepts' fixed embeddings in a locally shuffled order, with filler tokens
(function words with no counterpart) inserted and a little noise. A student can drive the OT alignment cost down only
by learning, for each token id, an embedding close to its concept's teacher embedding: the alignment is learnable,
and reordering makes it a transport problem rather than a position-wise regression.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
FIRST_CONTENT_ID = 3
NUM_FILLERS = 8


@dataclasses.dataclass(frozen=True)
class SyntheticBitext:
  """A deterministic SYNTHETIC corpus held in memory as padded arrays; `len()` examples, random access by index."""

  student_ids: np.ndarray      # [N, Ls] int32, [CLS] content [SEP] then PAD_ID
  student_mask: np.ndarray     # [N, Ls] int32
  teacher_tokens: np.ndarray   # [N, Lt, D] float16 (as a teacher store would hold them)
  teacher_mask: np.ndarray     # [N, Lt] int32
  ids: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.ids)

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    return {
        "student_ids": self.student_ids[indices],
        "student_mask": self.student_mask[indices],
        "teacher_tokens": self.teacher_tokens[indices],
        "teacher_mask": self.teacher_mask[indices],
    }


def make_synthetic_bitext(*, num_examples: int, vocab_size: int, max_len_student: int, max_len_teacher: int,
                          teacher_dim: int, seed: int = 0) -> SyntheticBitext:
  if vocab_size <= FIRST_CONTENT_ID + 1:
    raise ValueError(f"vocab_size must exceed {FIRST_CONTENT_ID + 1} for synthetic data")
  rng = np.random.default_rng(seed)
  num_concepts = vocab_size - FIRST_CONTENT_ID
  concepts = rng.normal(size=(num_concepts, teacher_dim))
  concepts /= np.linalg.norm(concepts, axis=-1, keepdims=True)
  fillers = rng.normal(size=(NUM_FILLERS, teacher_dim))
  fillers /= np.linalg.norm(fillers, axis=-1, keepdims=True)

  ls, lt = max_len_student, max_len_teacher
  student_ids = np.full((num_examples, ls), PAD_ID, np.int32)
  student_mask = np.zeros((num_examples, ls), np.int32)
  teacher_tokens = np.zeros((num_examples, lt, teacher_dim), np.float32)
  teacher_mask = np.zeros((num_examples, lt), np.int32)
  max_content = min(ls - 2, lt)
  for i in range(num_examples):
    n = int(rng.integers(min(3, max_content), max_content + 1))
    content = rng.integers(FIRST_CONTENT_ID, vocab_size, size=n)
    student_ids[i, :n + 2] = np.concatenate([[CLS_ID], content, [SEP_ID]])
    student_mask[i, :n + 2] = 1
    order = np.arange(n)
    for j in range(n - 1):  # local reordering: adjacent swaps
      if rng.random() < 0.3:
        order[j], order[j + 1] = order[j + 1], order[j]
    vectors = [concepts[content[k] - FIRST_CONTENT_ID] for k in order]
    for _ in range(int(rng.integers(0, lt - n + 1)) // 2):  # function words with no counterpart
      vectors.insert(int(rng.integers(0, len(vectors) + 1)), fillers[int(rng.integers(0, NUM_FILLERS))])
    m = len(vectors)
    teacher_tokens[i, :m] = np.asarray(vectors) + 0.05 * rng.normal(size=(m, teacher_dim))
    teacher_mask[i, :m] = 1
  return SyntheticBitext(student_ids, student_mask, teacher_tokens.astype(np.float16), teacher_mask,
                         tuple(f"synthetic:{i}" for i in range(num_examples)))
