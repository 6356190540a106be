"""PNG plots of a demo run: training curves of each trained student, and metric bars per system and collection."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only: no display on servers or in CI
  import matplotlib.pyplot as plt
  return plt


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                    keys: Sequence[str] = ("loss", "ot_loss", "mse_loss", "ot/effective_support")) -> str:
  """One panel per metric key present in any run's metrics.jsonl rows; one line per run. Returns the path."""
  plt = _pyplot()
  present = [k for k in keys if any(k in row for rows in runs.values() for row in rows)]
  fig, axes = plt.subplots(1, max(len(present), 1), figsize=(4.2 * max(len(present), 1), 3.2), squeeze=False)
  for ax, key in zip(axes[0], present):
    for name, rows in runs.items():
      points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=name, linewidth=1.2)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return os.fspath(path)


def metric_bars(systems: Mapping[str, Mapping[str, Mapping[str, float]]], collection: str, path: str | os.PathLike,
                metrics: Sequence[str] = ("mrr@10", "ndcg@10", "map", "recall@100")) -> str:
  """Grouped bars: one group per metric, one bar per SYSTEM_SCORER that ran on `collection`. Returns the path."""
  plt = _pyplot()
  names = [n for n, per in systems.items() if collection in per]
  metrics = [m for m in metrics if any(m in systems[n][collection] for n in names)]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) * max(len(names), 1) / 2), 3.6))
  width = 0.8 / max(len(names), 1)
  x = np.arange(len(metrics))
  for i, name in enumerate(names):
    values = [systems[name][collection].get(m, np.nan) for m in metrics]
    bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    for bar, v in zip(bars, values):
      if np.isfinite(v):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=6)
  ax.set_xticks(x, metrics)
  ax.set_ylim(0, 1.05)
  ax.set_title(collection)
  ax.legend(fontsize=7, ncol=2, loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return os.fspath(path)
