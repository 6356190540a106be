"""Training metrics: `DIR/metrics.jsonl`, TensorBoard event files (tensorboardX, no TensorFlow), a progress bar.

Only process 0 writes. Values arrive as device arrays and are read one step late by the loop, so logging never
stalls the dispatch of the next step.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any

import numpy as np
from etils import epath


def progress_enabled() -> bool:
  return sys.stderr.isatty() and not os.environ.get("CI")


class MetricWriter:
  def __init__(self, workdir: str | epath.Path, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / "metrics.jsonl"
    # Object stores (gs://) have no append: gcsfs silently turns "a" into "w". There the file is rewritten whole at
    # each logged step (small: one row per log step).
    self._local = isinstance(self._path, pathlib.PurePath) and not str(self._path).startswith(("gs://", "s3://"))
    if self._local:
      self._jsonl = self._path.open("a")
    else:
      self._rows = self._path.read_text().splitlines() if self._path.exists() else []
    if tensorboard and self._local:
      from tensorboardX import SummaryWriter  # Writes event files without TensorFlow.
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    line = json.dumps(row, sort_keys=True)
    if self._local:
      self._jsonl.write(line + "\n")
      self._jsonl.flush()
    else:
      self._rows.append(line)
      self._path.write_text("".join(r + "\n" for r in self._rows))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | epath.Path) -> list[dict[str, Any]]:
  path = epath.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
