"""The training bitext of a config: its source read (tfds builders or files), optionally sampled down.

precompute-teacher and train both read it here, so they always see the same examples in the same order.
"""
from __future__ import annotations

import random

import ml_collections
from etils import epath

from optical_jax.data.report import DataReport
from optical_jax.data.tfds_bitext import load_bitext


def tfds_data_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.data.tfds_data_dir or epath.Path(workdir) / "tfds")


def load_training_bitext(config: ml_collections.ConfigDict, workdir, report: DataReport | None = None):
  """The training bitext; `data.max_train_pairs` > 0 keeps a seeded random sample of that many pairs.

  The sample depends only on (`data.sample_seed`, the source).
  """
  bitext = load_bitext(config.data.bitext, split="train", data_dir=tfds_data_dir(config, workdir),
                       strict=bool(config.data.strict), report=report)
  limit = config.data.max_train_pairs
  if limit and limit < len(bitext):
    rows = sorted(random.Random(config.data.sample_seed).sample(range(len(bitext)), limit))
    bitext = [bitext[i] for i in rows]
  return bitext
