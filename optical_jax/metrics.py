"""Training metrics: `DIR/metrics.jsonl`, TensorBoard event files (tensorboardX, no TensorFlow), a progress bar, and
optionally Weights & Biases (`train.wandb`: offline into `DIR/wandb` unless WANDB_MODE says otherwise).

Only process 0 writes. Values arrive as device arrays and are read one step late by the loop, so logging never
stalls the dispatch of the next step.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import sys
from typing import Any

import numpy as np
from etils import epath

from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic


_TB_UNSAFE = re.compile(r"[^\w./-]")


def progress_enabled() -> bool:
  return sys.stderr.isatty() and not os.environ.get("CI")


def require_wandb():
  """The wandb module, or a UserError saying how to install it (checked before a run builds its data)."""
  try:
    import wandb  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("train.wandb=True needs the wandb package: pip install 'optical-jax[wandb]'") from None
  return wandb


def wandb_run_id(workdir: str | epath.Path) -> str:
  """The same W&B run id for every run in `workdir`, so that a resumed run continues the same W&B run."""
  path = str(workdir) if "://" in str(workdir) else str(pathlib.Path(workdir).resolve())
  return hashlib.sha256(path.encode()).hexdigest()[:16]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = list(value) if isinstance(value, tuple) else value
  return out


class MetricWriter:
  def __init__(self, workdir: str | epath.Path, *, enabled: bool = True, tensorboard: bool = True,
               wandb_project: str = "", run_config: dict[str, Any] | None = None):
    """`wandb_project` "" = no W&B; else the W&B run gets `run_config` (nested dicts, flattened to "a.b" keys)."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._wandb = None
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
    if wandb_project:
      wandb = require_wandb()
      mode = os.environ.get("WANDB_MODE", "offline")
      try:
        self._wandb = wandb.init(
            project=wandb_project, name=workdir.name, id=wandb_run_id(workdir), resume="allow",
            # wandb writes through the local filesystem only: a gs:// workdir's run goes to WANDB_DIR or ./wandb.
            dir=str(workdir) if self._local else None, config=_flatten(run_config or {}), mode=mode,
            # Its console capture would wrap our stdout, whose last line is the CLI's JSON summary.
            settings=wandb.Settings(console="off"))
      except wandb.errors.Error as e:  # e.g. WANDB_MODE=online without an API key
        raise UserError(f"train.wandb: W&B could not start a run (WANDB_MODE={mode}): {e}; WANDB_MODE=offline needs "
                        "no account") from None

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in values.items():
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None and math.isfinite(v):
        # TensorBoard tags allow [\w./-]: say "dev_mrr_at_10" rather than have tensorboardX log a rename each time.
        self._tb.add_scalar(_TB_UNSAFE.sub("_", k.replace("@", "_at_")), v, int(step))
    if self._wandb is not None:
      self._wandb.log(values, step=int(step))  # non-finite ones too: a diverging loss should show there as well
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
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def truncate_after(workdir: epath.Path, last_step: int) -> None:
  """Drops metric rows a killed run logged after its last checkpoint, so the resumed run does not repeat them."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
  write_text_atomic(path, "".join(line + "\n" for line in keep))


def read_metrics(workdir: str | epath.Path) -> list[dict[str, Any]]:
  path = epath.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
