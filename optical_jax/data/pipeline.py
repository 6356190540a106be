"""Deterministic, resumable global batches: batch `step` is a pure function of (seed, step).

Grain's MapDataset gives random access to a seeded, per-epoch reshuffled stream of example indices, so the data
position saved in a checkpoint is just the step; a resumed run, or another process count, sees exactly the same
global batches. Each process materialises only its own rows and hands them to
`jax.make_array_from_process_local_data`.

Length buckets (`data.length_buckets`): rather than padding every batch to `data.max_len_student` /
`data.max_len_teacher`, a global batch is cut to the smallest of a few static lengths that holds all its real tokens,
so the train step compiles once per bucket and never again. The bucket depends only on the global batch's example
indices (through a per-example length table every process holds), so every process cuts its rows to the same length
and the batch stays a pure function of (seed, step). Examples are never reordered: only padding is removed, which
leaves the loss unchanged (the encoder's attention and the OT loss ignore pads exactly).

Length grouping (`data.length_group` = G > 1): a batch of randomly drawn examples almost always holds one long one,
so buckets alone rarely pay. Instead, every window of G consecutive global batches is pooled, sorted by length
bucket and cut again into G batches, whose order within the window is then shuffled (seeded by the window). Each
window still holds exactly the examples it held before, so epochs and source weights are kept over G batches, and
batch `step` is still a pure function of (seed, step).
"""
from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator, Sequence

import grain
import numpy as np

# Batch keys are cut along axis 1 by their side: "student_*" (ids, masks, OT masks, marginal weights) to the student
# bucket, "teacher_*" and "english_*" (the student run on the English side, tokenised to the teacher's length) to
# the teacher bucket. Any other key is passed through unchanged.
STUDENT_PREFIX, TEACHER_PREFIXES = "student_", ("teacher_", "english_")


# The step whose rows are being loaded, for loaders whose rows depend on it (data/augment.py): set by
# BatchStream.batch around load_rows, on the thread that loads, so it reaches through any wrapper of load_rows
# (dev_eval.hold_out). None outside the training stream (the dev set, hard-negative mining).
_LOADING_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("optical_jax_loading_step", default=None)


def loading_step() -> int | None:
  return _LOADING_STEP.get()


def batch_index_dataset(num_examples: int, global_batch_size: int, seed: int,
                        sources: Sequence[tuple[int, float]] = ()) -> grain.MapDataset:
  """Item `step` = the example indices of global batch `step` (reshuffled every epoch, never ends).

  `sources`: (size, weight) of consecutive blocks of the examples (several bitext sources). Each block is reshuffled
  on its own epochs and grain's weighted mix interleaves them, so a block's share of every batch follows its
  weight whatever its size (a small language is revisited more often, not drowned).
  """
  if num_examples < global_batch_size:
    raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
  if len(sources) <= 1:
    return (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(None)
            .batch(global_batch_size, drop_remainder=True))
  if sum(size for size, _ in sources) != num_examples:
    raise ValueError(f"source sizes {[size for size, _ in sources]} do not add up to {num_examples} examples")
  blocks, offset = [], 0
  for i, (size, _) in enumerate(sources):
    blocks.append(grain.MapDataset.range(size).shuffle(seed=seed + 7919 * i).repeat(None)
                  .map(functools.partial(_add, offset)))
    offset += size
  return (grain.MapDataset.mix(blocks, weights=[float(w) for _, w in sources])
          .batch(global_batch_size, drop_remainder=True))


def _add(offset: int, index: int) -> int:
  return index + offset


def real_lengths(mask: np.ndarray) -> np.ndarray:
  """[N] int: one past the last nonzero position of each row of a [N, L] mask (0 for an all-zero row).

  The last real position, not the count of real tokens, is what a cut must keep (a mask need not be a prefix).
  """
  nonzero = np.asarray(mask) != 0
  last = nonzero.shape[-1] - np.argmax(nonzero[:, ::-1], axis=-1)
  return np.where(nonzero.any(axis=-1), last, 0).astype(np.int32)


def teacher_buckets(student_buckets: Sequence[int], max_len_student: int, max_len_teacher: int) -> tuple[int, ...]:
  """The teacher length of each bucket: the student bucket scaled by max_len_teacher / max_len_student, rounded up.

  The last bucket is exactly max_len_teacher. One teacher length per student bucket (not a free pair) keeps the
  number of compiled shapes at the number of buckets.
  """
  return tuple(min(-(-int(b) * max_len_teacher // max_len_student), max_len_teacher) for b in student_buckets)


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """Static (student, teacher) lengths and every example's real lengths, to choose and cut each global batch."""

  student: tuple[int, ...]        # increasing; the last = data.max_len_student
  teacher: tuple[int, ...]        # teacher_buckets(student, ...); the last = data.max_len_teacher
  student_lengths: np.ndarray     # [N] real student length of every example (real_lengths of its student mask)
  teacher_lengths: np.ndarray     # [N] likewise for the teacher side
  english_lengths: np.ndarray | None = None  # [N] the English-side term's input, cut to the teacher bucket

  @classmethod
  def from_config(cls, data_config, student_lengths: np.ndarray | None, teacher_lengths: np.ndarray | None,
                  english_lengths: np.ndarray | None = None) -> LengthBuckets | None:
    """From `config.data` (length_buckets, max_len_*); None when bucketing is off (the key is missing or empty)."""
    buckets = tuple(int(b) for b in data_config.length_buckets)
    if not buckets:
      return None
    if student_lengths is None or teacher_lengths is None:
      raise ValueError("data.length_buckets needs per-example lengths from the data source")
    return cls(buckets, teacher_buckets(buckets, data_config.max_len_student, data_config.max_len_teacher),
               np.asarray(student_lengths), np.asarray(teacher_lengths),
               None if english_lengths is None else np.asarray(english_lengths))

  def _teacher_side(self, indices: np.ndarray) -> np.ndarray:
    """[n] the longest teacher-bucketed length of each example (teacher tokens, and the English input if any)."""
    lengths = self.teacher_lengths[indices]
    return lengths if self.english_lengths is None else np.maximum(lengths, self.english_lengths[indices])

  def keys(self, indices: np.ndarray) -> np.ndarray:
    """[n] int: the smallest bucket index that holds each example's real tokens, on both sides."""
    return np.maximum(np.searchsorted(self.student, self.student_lengths[indices]),
                      np.searchsorted(self.teacher, self._teacher_side(indices)))

  def pick(self, global_indices: np.ndarray) -> tuple[int, int]:
    """(student length, teacher length) of the smallest bucket holding every real token of the global batch."""
    longest_student = int(self.student_lengths[global_indices].max(initial=0))
    longest_teacher = int(self._teacher_side(global_indices).max(initial=0))
    # First bucket >= the longest real length, on each side; the batch takes the larger of the two.
    k = max(int(np.searchsorted(self.student, longest_student)), int(np.searchsorted(self.teacher, longest_teacher)))
    if k >= len(self.student):
      raise ValueError(f"a batch holds {longest_student} student / {longest_teacher} teacher tokens, more than the "
                       f"largest length bucket ({self.student[-1]} / {self.teacher[-1]})")
    return self.student[k], self.teacher[k]


def trim_batch(batch: dict[str, np.ndarray], student_len: int, teacher_len: int) -> dict[str, np.ndarray]:
  """Cuts every student_* / teacher_* / english_* array to its side's length along axis 1 (contiguous copies)."""
  out = {}
  for key, value in batch.items():
    length = (student_len if key.startswith(STUDENT_PREFIX) else
              teacher_len if key.startswith(TEACHER_PREFIXES) else None)
    if length is not None:
      # A real token past the cut would silently change the loss: the length table disagrees with the rows.
      if key.endswith("mask") and np.any(value[:, length:]):
        raise ValueError(f"{key}: real tokens past the length bucket {length}; per-example lengths are stale")
      value = value[:, :length]
    # Copy here, on the prefetch thread, rather than in the device transfer on the training thread.
    out[key] = np.ascontiguousarray(value)
  return out


class BatchStream:
  """Yields this process's rows of each global batch from `start_step` on, prefetching `prefetch` batches on threads.

  With `buckets`, every batch is cut to its global batch's length bucket (the same on every process).
  """

  def __init__(self, load_rows: Callable[[np.ndarray], dict[str, np.ndarray]], num_examples: int,
               global_batch_size: int, seed: int, rows: slice, prefetch: int = 2,
               buckets: LengthBuckets | None = None, sources: Sequence[tuple[int, float]] = (),
               length_group: int = 0):
    if length_group > 1 and buckets is None:
      raise ValueError("length grouping needs length buckets")
    self._indices = batch_index_dataset(num_examples, global_batch_size, seed, sources)
    self._group = length_group if length_group > 1 else 0
    self._seed = seed
    self._window: tuple[int, np.ndarray] | None = None
    self._load_rows = load_rows
    self._rows = rows
    self._prefetch = prefetch
    self._buckets = buckets

  def global_indices(self, step: int) -> np.ndarray:
    if not self._group:
      return np.asarray(self._indices[step])
    window, position = divmod(step, self._group)
    cached = self._window  # read once: prefetch threads may replace it
    if cached is None or cached[0] != window:
      cached = (window, self._grouped_window(window))
      self._window = cached
    return cached[1][position]

  def _grouped_window(self, window: int) -> np.ndarray:
    """[G, batch] example indices of window `window`: its G batches pooled, sorted by bucket, cut, shuffled."""
    pooled = np.concatenate([np.asarray(self._indices[window * self._group + i]) for i in range(self._group)])
    order = np.argsort(self._buckets.keys(pooled), kind="stable")
    batches = pooled[order].reshape(self._group, -1)
    return batches[np.random.default_rng([self._seed, window]).permutation(self._group)]

  def indices(self, step: int) -> np.ndarray:
    return self.global_indices(step)[self._rows]

  def bucket(self, step: int) -> tuple[int, int] | None:
    """(student, teacher) length of batch `step`, or None without bucketing (full padding)."""
    return None if self._buckets is None else self._buckets.pick(self.global_indices(step))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    global_indices = self.global_indices(step)
    token = _LOADING_STEP.set(step)
    try:
      rows = self._load_rows(global_indices[self._rows])
    finally:
      _LOADING_STEP.reset(token)
    if self._buckets is None:
      return rows
    # Chosen from the whole global batch, not this process's rows, so that every process cuts to the same length.
    return trim_batch(rows, *self._buckets.pick(global_indices))

  def iterate(self, start_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=self._prefetch) as pool:
      pending = {s: pool.submit(self.batch, s) for s in range(start_step, start_step + self._prefetch)}
      step = start_step
      while True:
        batch = pending.pop(step).result()
        pending[step + self._prefetch] = pool.submit(self.batch, step + self._prefetch)
        yield step, batch
        step += 1
