"""Deterministic, resumable global batches: batch `step` is a pure function of (seed, step).

Grain's MapDataset gives random access to a seeded, per-epoch reshuffled stream of example indices, so the data
position saved in a checkpoint is just the step; a resumed run, or another process count, sees exactly the same
global batches. Each process materialises only its own rows and hands them to
`jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterator

import grain
import numpy as np


def batch_index_dataset(num_examples: int, global_batch_size: int, seed: int) -> grain.MapDataset:
  """Item `step` = the example indices of global batch `step` (reshuffled every epoch, never ends)."""
  if num_examples < global_batch_size:
    raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
  return (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(None)
          .batch(global_batch_size, drop_remainder=True))


class BatchStream:
  """Yields this process's rows of each global batch from `start_step` on, prefetching `prefetch` batches on threads."""

  def __init__(self, load_rows: Callable[[np.ndarray], dict[str, np.ndarray]], num_examples: int,
               global_batch_size: int, seed: int, rows: slice, prefetch: int = 2):
    self._indices = batch_index_dataset(num_examples, global_batch_size, seed)
    self._load_rows = load_rows
    self._rows = rows
    self._prefetch = prefetch

  def indices(self, step: int) -> np.ndarray:
    return np.asarray(self._indices[step])[self._rows]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self._load_rows(self.indices(step))

  def iterate(self, start_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=self._prefetch) as pool:
      pending = {s: pool.submit(self.batch, s) for s in range(start_step, start_step + self._prefetch)}
      step = start_step
      while True:
        batch = pending.pop(step).result()
        pending[step + self._prefetch] = pool.submit(self.batch, step + self._prefetch)
        yield step, batch
        step += 1
