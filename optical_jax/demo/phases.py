"""The demo's phases: assets, the teacher store, training the students, evaluating every system; and their clock."""
from __future__ import annotations

import pathlib
import time
from typing import Any

import ml_collections

from optical_jax import assets
from optical_jax import evaluate
from optical_jax import export
from optical_jax import precompute
from optical_jax import train
from optical_jax.data.teacher import load_teacher
from optical_jax.demo.settings import CORPUS_PACKAGES, SETTINGS
from optical_jax.retrieval.evaluation import System


class Phases:
  """Prints one line per phase with its wall time, and keeps the times for results.json."""

  def __init__(self):
    self.started = time.perf_counter()
    self.seconds: dict[str, float] = {}
    self._current: tuple[str, float] | None = None

  def start(self, name: str, what: str) -> None:
    self.end()
    print(f"\n== [{time.perf_counter() - self.started:6.0f}s] {name}: {what}", flush=True)
    self._current = (name, time.perf_counter())

  def end(self) -> None:
    if self._current is not None:
      name, t0 = self._current
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
      self._current = None

  def total(self) -> float:
    return time.perf_counter() - self.started


def prepare_assets(setting: str) -> None:
  spec = SETTINGS[setting]
  if spec.synthetic:
    print("synthetic setting: no assets needed", flush=True)
    return
  for name, path in assets.prepare_assets(spec.assets).items():
    print(f"{name}: {path}", flush=True)
  assets.ensure_installed(list(CORPUS_PACKAGES))


def stop_if_interrupted(name: str, summary: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """A SIGTERM makes `train` save a checkpoint and return early: the demo then stops too (exit 0) rather than go on
  to the next phase with a half-trained student. Rerunning the same command resumes from that checkpoint."""
  done = summary.get("final_step", config.train.steps)
  if done < config.train.steps:
    print(f"\n{name}: stopped at step {done} of {config.train.steps} on request (checkpoint saved); run the same "
          f"command again to resume", flush=True)
    raise SystemExit(0)


def train_students(configs: dict[str, ml_collections.ConfigDict], workdir: pathlib.Path, phases: Phases
                   ) -> dict[str, dict[str, Any]]:
  first = next(iter(configs.values()))
  phases.start("teacher", f"teacher token states of the training pairs ({first.data.bitext})")
  precompute.precompute_teacher(first, str(workdir / "train" / next(iter(configs))))
  summaries = {}
  for name, config in configs.items():
    phases.start(f"train_{name}", f"{name}: {config.train.steps} steps x batch {config.train.batch_size}")
    t0 = time.perf_counter()
    summary = train.train(config, str(workdir / "train" / name))
    stop_if_interrupted(name, summary, config)
    summary["seconds"] = time.perf_counter() - t0
    summaries[name] = summary
  return summaries


def evaluate_all(configs: dict[str, ml_collections.ConfigDict], workdir: pathlib.Path) -> dict[str, Any]:
  first = next(iter(configs.values()))
  collections = evaluate.load_collections(first.eval)
  teacher = load_teacher(first)
  systems = evaluate.baseline_systems(first, teacher)
  steps = {}
  for name, config in configs.items():
    student, steps[name] = export.load_student(str(workdir / "train" / name), config.eval.mix)
    systems.append(System(name, student, config.student.prefix))
  summary = evaluate.run_evaluation(first, collections, systems, teacher, str(workdir / "eval"))
  summary["student_steps"] = steps
  return summary
