"""The benchmark's measurement knobs: one table of defaults, with a config's optional `bench` section on top.

Every knob has its default here and nowhere else; a config's `bench` section overrides some of them
(configs/bench_cpu.py and the hardware configs document theirs). `load_config` fills a config's missing knobs
before the command-line overrides are applied, so `--config.bench.KNOB=VALUE` works on any config, with or without
a `bench` section. This module imports no jax: the CLI loads configs before `jax.distributed` starts.
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from optical_jax.errors import UserError

BENCH_DEFAULTS = dict(
    steps=10,              # timed train steps of each variant (`--steps` overrides)
    warmup_steps=2,        # untimed steps of every variant after compilation
    max_rounds=10,         # timed steps are split into at most this many interleaved rounds
    num_batches=4,         # distinct synthetic batches cycled through (same shapes: no recompilation)
    min_real_frac=0.5,     # real lengths are uniform in [ceil(frac * L), L] (benchmarks/torch_reference's rule)
    ot_repeats=5,          # rounds of OT-only timings
    ot_calls_per_round=5,  # timed back-to-back calls of each OT-only loss per round (the per-pair POT loop: 1)
    ot_warmup_calls=1,     # untimed calls of an OT-only loss right before its timed ones (hot, as inside a step)
    loop_repeats=1,        # rounds that time the per-pair POT loop, one call each (--compare)
    torch_threads=(0, 1),  # torch thread counts the reference runs at (0 = its default); ratios use the fastest
    sweep_batch=(8, 16, 32),           # --sweep: global batch sizes
    sweep_student_len=(16, 32),        # --sweep: student lengths
    sweep_iterations=(10, 50, 100),    # --sweep: Sinkhorn iteration counts
    sweep_steps=3,                     # --sweep: timed steps per point and variant
)
_SWEEP_GRIDS = ("sweep_batch", "sweep_student_len", "sweep_iterations")


def _value(value):
  # Lists and tuples alike (ConfigDict, JSON and hand-written configs differ): tuples are hashable and compare equal.
  return tuple(value) if isinstance(value, (list, tuple)) else value


def bench_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The defaults updated with the config's `bench` section; UserError naming the knob when one is wrong."""
  settings = ml_collections.ConfigDict({k: _value(v) for k, v in BENCH_DEFAULTS.items()})
  user = config.get("bench") or {}
  for key, value in user.items():
    if key not in BENCH_DEFAULTS:
      raise UserError(f"config: unknown key bench.{key} (known: {', '.join(sorted(BENCH_DEFAULTS))})")
    settings[key] = _value(value)
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
    if not grid or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid):
      raise UserError(f"config: bench.{key} must be a non-empty tuple of integers >= 1, got {grid!r}")
  if settings.sweep_steps < 1:
    raise UserError(f"config: bench.sweep_steps must be >= 1, got {settings.sweep_steps}")
  return settings


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds every knob the config's `bench` section lacks (in place), so command-line overrides can reach it."""
  if config.get("bench") is None:
    config.bench = ml_collections.ConfigDict()
  for key, value in BENCH_DEFAULTS.items():
    if key not in config.bench:
      config.bench[key] = _value(value)
  return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`optical-jax bench`'s config: the file, every bench knob filled in, then the overrides; validated."""
  from optical_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  # The same steps as config_lib.load_config, plus the bench knobs before the overrides.
  config = with_defaults(config_lib.fill_optional_defaults(config_lib.load_config_file(spec)))
  config = config_lib.apply_overrides(config, overrides)
  config_lib.validate(config)
  bench_settings(config)  # a bad knob fails here, before any device work
  return config
