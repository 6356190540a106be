"""The benchmark's measurement knobs: their defaults are the `bench.*` keys of config_schema.py, like every key.

`bench_settings(config)` checks the rules across knobs (ranges, non-empty grids) on a conformed config, so that a
bad knob fails before any device work. This module imports no jax: the CLI loads configs before
`jax.distributed` starts.
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from optical_jax import config as config_lib
from optical_jax.errors import UserError

_SWEEP_GRIDS = ("sweep_batch", "sweep_student_len", "sweep_iterations")


def bench_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config's `bench` section, checked; UserError naming the knob when one is out of range."""
  settings = config.bench
  if settings.steps < 1:
    raise UserError(f"config: bench.steps must be >= 1, got {settings.steps}")
  if settings.warmup_steps < 0 or settings.num_batches < 1 or settings.max_rounds < 1 or settings.ot_repeats < 1:
    raise UserError("config: bench.warmup_steps must be >= 0 and bench.num_batches, bench.max_rounds, "
                    "bench.ot_repeats >= 1")
  if settings.ot_warmup_calls < 0 or settings.ot_calls_per_round < 1:
    raise UserError("config: bench.ot_warmup_calls must be >= 0 and bench.ot_calls_per_round >= 1")
  if settings.loop_repeats < 1 or not settings.torch_threads or min(settings.torch_threads) < 0:
    raise UserError("config: bench.loop_repeats must be >= 1 and bench.torch_threads a non-empty list of thread "
                    "counts >= 0 (0 = torch's default)")
  if not 0.0 < settings.min_real_frac <= 1.0:
    raise UserError(f"config: bench.min_real_frac must be in (0, 1], got {settings.min_real_frac}")
  for key in _SWEEP_GRIDS:
    grid = settings[key]
    if not grid or min(grid) < 1:
      raise UserError(f"config: bench.{key} must be a non-empty tuple of integers >= 1, got {grid!r}")
  if settings.sweep_steps < 1:
    raise UserError(f"config: bench.sweep_steps must be >= 1, got {settings.sweep_steps}")
  return settings


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`optical-jax bench`'s config: config.load_config, plus the knobs' cross-checks."""
  config = config_lib.load_config(spec, overrides)
  bench_settings(config)
  return config
