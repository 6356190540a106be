"""The training loop: init or resume, step, log, checkpoint, stop cleanly on SIGTERM.

Resuming is the default: rerunning the same command on the same workdir continues from the newest checkpoint and,
because batches are a pure function of (seed, step), ends with the same student an uninterrupted run gives. With
`train.best_metric`, the params of the best dev evaluation so far are kept in WORKDIR/best besides (a resumed run
takes up the best it had: checkpointing.BestCheckpoint).

Multi-process runs (distributed.py): every process runs this same loop on its rows of each global batch; process 0
alone writes config.json and metrics; every process takes part in each checkpoint save. A SIGTERM on any process
stops all of them at one agreed step, after one checkpoint there. An error in one process ends it at once, and
jax then ends the others, rather than leaving them blocked in a collective.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from optical_jax import checkpointing
from optical_jax import config as config_lib
from optical_jax import dev_eval
from optical_jax import distributed
from optical_jax import metrics as metrics_lib
from optical_jax import preemption
from optical_jax import sharding as sharding_lib
from optical_jax import student as student_lib
from optical_jax import train_step as train_step_lib
from optical_jax.data import pipeline
from optical_jax.data import training_data
from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic

log = logging.getLogger("optical_jax")


def _write_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  path = workdir / "config.json"
  new = config_lib.to_json(config)
  if path.exists() and path.read_text() != new:
    old, cur = json.loads(path.read_text()), json.loads(new)
    changed = sorted(_diff_keys(old, cur))
    log.warning("workdir config differs from this run's in %s; continuing with this run's", ", ".join(changed))
  write_text_atomic(path, new)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [k for key in set(a) | set(b) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
  return [] if a == b else [prefix.rstrip(".")]


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool | None = None) -> dict[str, Any]:
  """Trains (or resumes) the student in `workdir`; returns a summary with the final step and loss."""
  try:
    return _train(config, workdir, progress=progress)
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() > 1:
      distributed.exit_now(e, None)  # Raising would leave the other processes blocked in a collective.
    raise


class StepClock:
  """Step time = wall time between two logged steps / steps between them, compilation left out.

  The clock starts after the first step. A later step that compiles a new batch shape (a length bucket) is left out
  of its interval: the interval so far is closed before it (its steps all finish before the compile starts), and the
  compiling step's wall time and count are dropped.
  """

  def __init__(self, start: int):
    self.time, self.step = time.perf_counter(), start
    self.shapes: list[tuple[int, int]] = []  # (student, teacher) batch lengths in the order first seen
    self._compile_start = 0.0

  def is_new_shape(self, shape: tuple[int, int]) -> bool:
    if shape in self.shapes:
      return False
    self.shapes.append(shape)
    return True

  def compiling(self) -> None:
    """Right before the step that compiles (after the interval so far was closed)."""
    self._compile_start = time.perf_counter()

  def compiled(self, first: bool, done: int) -> None:
    """After the compiling step finished (its outputs are ready)."""
    now = time.perf_counter()
    if first:
      self.time, self.step = now, done
    else:
      self.time, self.step = self.time + (now - self._compile_start), self.step + 1

  def seconds_per_step(self, step: int) -> float:
    """Mean step time since the last call (or the start), then restarts the interval at `step`."""
    now = time.perf_counter()
    seconds = (now - self.time) / (step - self.step) if step > self.step else float("nan")
    self.time, self.step = now, step
    return seconds


def _train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool | None) -> dict[str, Any]:
  workdir = epath.Path(workdir)
  config = distributed.agree_on_config(config)
  is_lead = jax.process_index() == 0
  mesh = sharding_lib.create_mesh(config.mesh)
  config_lib.validate(config, num_devices=mesh.size)
  if config.train.wandb and is_lead:
    metrics_lib.require_wandb()  # now, rather than after the data is built
  if is_lead:
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(workdir, config)
  distributed.barrier("optical_jax.workdir")

  data = training_data.build(config, workdir)
  student = student_lib.build_student(config)
  student_lib.check_output_dim(student, data.teacher_dim)
  tx = train_step_lib.make_optimizer(config)
  state, state_shardings = train_step_lib.create_train_state(
      student.module, tx, config, mesh, jax.random.key(config.seed), init_params=student.pretrained_params)

  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  start = 0
  restored = checkpointer.restore_latest(state, state_shardings)  # An unreadable newest step falls back to older.
  if restored is not None:
    start, state, meta = restored
    if meta.get("seed") != config.seed:
      raise UserError(f"{workdir}: checkpoint was trained with seed {meta.get('seed')}, config.seed is {config.seed}")
    log.info("resumed from step %d", start)
  if is_lead:
    metrics_lib.truncate_after(workdir, start)
  best = None
  if config.train.best_metric:
    best = checkpointing.BestCheckpoint(workdir / "best", config.train.best_metric, config.train.best_mode)
    if best.start(resumed=restored is not None) is not None:
      log.info("best %s so far: %.4f at step %d", best.metric, best.record["value"], best.record["step"])

  total_steps = config.train.steps
  rows = sharding_lib.process_batch_slice(config.train.batch_size, mesh)
  buckets = pipeline.LengthBuckets.from_config(config.data, data.student_lengths, data.teacher_lengths,
                                               data.english_lengths)
  if buckets is not None:
    log.info("length buckets: student %s, teacher %s (one compile each)", buckets.student, buckets.teacher)
  stream = pipeline.BatchStream(data.load_rows, data.num_examples, config.train.batch_size, config.seed, rows,
                                buckets=buckets, sources=data.sources, length_group=config.data.length_group)
  dev_fn = None
  if config.train.eval_every and data.dev is not None:
    dev_fn = dev_eval.make_dev_eval(student.module, data.dev, mesh)
  step_fn = train_step_lib.jit_train_step(student.module, tx, config, mesh, state_shardings, data.spec)
  writer = metrics_lib.MetricWriter(
      workdir, enabled=is_lead, wandb_project=config.train.wandb_project if config.train.wandb else "",
      run_config=json.loads(config_lib.to_json(config)))
  show_progress = metrics_lib.progress_enabled() if progress is None else progress
  bar = None
  if show_progress and is_lead:
    import tqdm
    bar = tqdm.tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

  summary: dict[str, Any] = {"start_step": start, "data": data.description}
  pending = None  # (step, device metrics): read one step late, never stalling dispatch.
  clock = StepClock(start)
  compiles_after_first = 0
  step = start
  saved = start
  try:
    with preemption.StopRequested() as stop, sharding_lib.mesh_context(mesh):
      # Multi-process: a SIGTERM on any process stops all at one agreed step (a tiny all-reduce, see StopVote).
      vote = distributed.StopVote(mesh, every=config.train.stop_vote_every)
      if dev_fn is not None and start == 0:
        _dev_eval(dev_fn, state.params, 0, writer, summary, clock, best)  # the untrained student: the curve's origin
      if start >= total_steps:
        log.info("already trained to step %d (train.steps=%d)", start, total_steps)
      for step, local_batch in stream.iterate(start) if start < total_steps else ():
        new_shape = clock.is_new_shape((local_batch["student_ids"].shape[1], local_batch["teacher_tokens"].shape[1]))
        if new_shape:
          if buckets is not None:
            log.info("compiling the train step for length bucket %d (teacher %d) at step %d",
                     *clock.shapes[-1], step)
          if pending is not None:  # Close the interval so far before the compile starts.
            _log(writer, bar, pending, config, summary, clock)
            jax.block_until_ready(pending[1])
            pending = None
          clock.compiling()
        batch = sharding_lib.global_batch(local_batch, mesh)
        state, device_metrics = step_fn(state, batch)
        done = step + 1
        if step == start:
          cache_size_after_first = step_fn._cache_size()  # pylint: disable=protected-access
        if new_shape:
          jax.block_until_ready(device_metrics)
          clock.compiled(step == start, done)
        if pending is not None:
          _log(writer, bar, pending, config, summary, clock)
        pending = (done, device_metrics)
        stop_now = vote(stop.requested, step)  # The same on every process.
        if dev_fn is not None and (done % config.train.eval_every == 0 or done == total_steps):
          _dev_eval(dev_fn, state.params, done, writer, summary, clock, best)
        if done % config.train.checkpoint_every == 0 or done == total_steps or stop_now:
          checkpointer.save(done, state, {"step": done, "data_position": done, "seed": config.seed}, force=stop_now)
          saved = done
        if stop_now:
          log.warning("stopping at step %d on request, with a checkpoint there", done)
        if stop_now or done >= total_steps:
          step = done
          break
        step = done
      if step > start:  # Compiles beyond the one each new length bucket needs.
        cache_growth = step_fn._cache_size() - cache_size_after_first  # pylint: disable=protected-access
        compiles_after_first = cache_growth - (len(clock.shapes) - 1)
      if pending is not None:
        _log(writer, bar, pending, config, summary, clock, force=True)
      checkpointer.wait()  # A failed save on another process surfaces here, inside the except below.
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() > 1:
      distributed.exit_now(e, saved)  # Never returns: skips the `finally`, whose waits could block.
    raise
  finally:
    try:
      checkpointer.close()
    finally:
      if best is not None:
        best.close()
      writer.close()
    if bar is not None:
      bar.close()
  summary.update({"final_step": step, "recompilations_after_first_step": compiles_after_first,
                  "batch_lengths_compiled": [list(s) for s in clock.shapes]})
  if best is not None and best.record is not None:
    summary.update({"best_step": best.record["step"], "best_value": best.record["value"]})
  return summary


def _dev_eval(dev_fn, params, step: int, writer, summary: dict[str, Any], clock: StepClock,
              best: checkpointing.BestCheckpoint | None) -> None:
  jax.block_until_ready(params)  # the steps dispatched so far are train-step time; the dev pass after them is not
  started = time.perf_counter()
  scores = dev_fn(params)
  writer.write(step, scores)
  if best is not None and best.update(step, scores, params):  # before the next step donates these buffers
    log.info("step %d: new best %s %.4f, params kept in %s", step, best.metric, scores[best.metric], best.directory)
  log.info("step %d dev: %s (%.1f s)", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
           time.perf_counter() - started)
  summary.update(scores)
  clock.time += time.perf_counter() - started  # the dev pass is not train-step time


def _log(writer, bar, pending, config, summary, clock: StepClock, force: bool = False) -> None:
  step, device_metrics = pending
  if bar is not None:
    bar.update(step - bar.n)
  if step % config.train.log_every and not force and step != config.train.steps:
    return
  values = {k: float(np.asarray(v)) for k, v in jax.device_get(device_metrics).items()}
  seconds = clock.seconds_per_step(step)
  tokens = values.pop("real_tokens")
  values["step_time_s"] = seconds
  values["real_tokens_per_s"] = tokens / seconds  # tokens of the logged step, at the interval's mean step time
  values["sequences_per_s"] = config.train.batch_size / seconds
  writer.write(step, values)
  summary["loss"] = values["loss"]
  summary.setdefault("first_logged_loss", values["loss"])
  if bar is not None:
    bar.set_postfix(loss=f"{values['loss']:.4f}")
  elif jax.process_index() == 0:
    log.info("step %d loss %.5f (%.1f ms/step)", step, values["loss"], 1e3 * seconds)
