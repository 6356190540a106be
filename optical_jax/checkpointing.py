"""Orbax checkpoints of the student's train state (never the teacher): async, keep-N, resumable.

A checkpoint holds the step, params, optimizer state, and JSON metadata with the data position and the seed. The
data position is the step: batches are a pure function of (seed, step) (data/pipeline.py), so resuming there replays
exactly the stream an uninterrupted run would have seen.

Multi-process runs: every process calls `save` and `restore` with the same step (orbax synchronises them and each
writes its own shards), so the directory must be one that every host sees: a `gs://` bucket or a shared
filesystem. `gs://` array data goes through TensorStore's GCS driver, the rest through etils.epath
(tests/test_remote_storage.py runs both against a fake GCS).

Integrity: orbax writes a step into `STEP.orbax-checkpoint-tmp` and renames it to `STEP` once complete (on gs://,
where there is no rename, it writes `commit_success.txt` last), so a failed or killed save never looks like a
checkpoint, and it deletes the old steps beyond `keep` only after the new one is committed. A step that is complete
but unreadable (a file deleted, truncated or corrupted afterwards) is what `restore_latest` handles: it falls back
to the next older step and moves the bad one aside to `corrupt-STEP`.

`BestCheckpoint` keeps, in `WORKDIR/best`, the params of the dev evaluation with the best `train.best_metric`.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic

log = logging.getLogger("optical_jax")

_CPU_HANDLER_REGISTERED = False


def _absolute(directory: str | epath.Path) -> epath.Path:
  # Orbax's tensorstore reads need an absolute local path: a relative workdir would fail on restore.
  return epath.Path(directory) if "://" in str(directory) else epath.Path(directory).resolve()


def _register_cpu_handler() -> None:
  global _CPU_HANDLER_REGISTERED
  if jax.default_backend() == "cpu" and not _CPU_HANDLER_REGISTERED:
    # Replica-parallel saving slices every replicated array per device, compiling one tiny program per device and
    # shape: tens of seconds on simulated CPU meshes for nothing. Accelerators keep orbax's default.
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _CPU_HANDLER_REGISTERED = True


class Checkpointer:
  def __init__(self, directory: str | epath.Path, *, keep: int = 2, async_save: bool = True):
    self.directory = _absolute(directory)
    _register_cpu_handler()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._item_handlers: dict[str, Any] = {}  # restore_latest's readers, made on first use

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, abstract_state: Any, shardings: Any, *,
                     repair: bool = True) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest checkpoint that can be read, as (step, state, meta); None if there is no checkpoint at all.

    Steps are tried newest first; one that cannot be read is named in a warning (path and cause) and the next older
    one is tried. If checkpoints exist but none can be read, UserError names the directory and nothing is moved:
    a run must never start again from step 0 on its own.

    With `repair` (the default; only for the workdir's writer, which holds its lock), once an older step is restored
    the newer unreadable ones are moved aside to `corrupt-STEP`: orbax would otherwise skip every save up to the
    newest step it lists and refuse to save those steps again. Moved rather than deleted, because a transient read
    error (a flaky bucket) looks the same as a corrupt checkpoint: its files are kept for a look, or to be moved
    back. Readers that may run beside a live training run (export) pass repair=False.

    Multi-process runs: every process calls this; all agree on each step (restored by all, or failed for all).
    """
    _ignore_closed_loop_callbacks()
    self._manager.wait_until_finished()
    self._manager.reload()  # The step list is cached at construction; the disk may have changed since.
    steps = sorted(self._manager.all_steps(), reverse=True)
    failed: list[tuple[int, str]] = []
    for step in steps:
      restored, cause = self._restore_agreed(step, abstract_state, shardings)
      if restored is None:
        log.warning("%s: unreadable checkpoint (%s); %s", self.directory / str(step), cause,
                    "trying the next older one" if step != steps[-1] else "it was the oldest")
        failed.append((step, cause))
        continue
      if failed and repair:
        self._move_aside([s for s, _ in failed])
      return (step, *restored)
    if not failed:
      return None
    raise UserError(f"{self.directory}: no checkpoint can be read (steps {', '.join(str(s) for s, _ in failed)}; "
                    f"step {failed[0][0]}: {failed[0][1]}); a changed model or optimizer config also makes them "
                    "unreadable. To train from step 0 instead, move the directory away")

  def _restore_agreed(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, str | None]:
    """((state, meta), None), or (None, the cause in one line); the same outcome on every process."""
    try:
      restored, cause = self._read(step, abstract_state, shardings), None
    except Exception as e:  # pylint: disable=broad-except
      restored, cause = None, _one_line(e)
    if jax.process_count() > 1:
      failed = np.asarray(multihost_utils.process_allgather(np.int32(cause is not None))).reshape(-1)
      if cause is None and failed.any():
        restored, cause = None, f"process(es) {np.flatnonzero(failed).tolist()} could not read it"
    return restored, cause

  def _read(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """`restore` without orbax's CheckpointManager and Checkpointer around the item handlers it would call.

    Those end every restore with a barrier across processes. A process whose read fails never reaches it while the
    others wait there, and what it calls next pairs up with their barrier: a name-mismatch error, or worse. The item
    handlers themselves (the same ones, on the same item directories) have no collective inside, so here a failure
    stays local until `_restore_agreed`'s one agreement.
    """
    if not self._item_handlers:
      self._item_handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    path = self.directory / str(step)  # orbax's default step name
    state = self._item_handlers["state"].restore(path / "state", args=ocp.args.StandardRestore(
        self._target(abstract_state, shardings)))
    meta = self._item_handlers["meta"].restore(path / "meta", args=ocp.args.JsonRestore())
    return abstract_state.replace(**state), dict(meta)

  def _move_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      for step in steps:
        source = self.directory / str(step)  # orbax's default step name
        target, n = self.directory / f"corrupt-{step}", 1
        while target.exists():
          target, n = self.directory / f"corrupt-{step}-{n}", n + 1
        source.rename(target)
        log.warning("moved the unreadable checkpoint %s aside to %s (delete it once you no longer need it)", source,
                    target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("optical_jax:checkpoints_moved_aside")
    self._manager.reload()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_tree(state)), meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores into `abstract_state`'s structure, each array placed with the matching sharding.

    A frozen subtree (optax.masked) leaves a MaskedNode in the optimizer state where the sharding tree has a
    NamedSharding: it holds no array, so it is kept as it is rather than matched leaf for leaf.
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self._target(abstract_state, shardings)), meta=ocp.args.JsonRestore()))
    state = abstract_state.replace(**restored.state)
    return state, dict(restored.meta)

  @staticmethod
  def _target(abstract_state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: x if _is_masked(x) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        _as_tree(abstract_state), _as_tree(shardings), is_leaf=_is_masked)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self._manager.wait_until_finished()  # Raises again if a save failed: the manager must be closed anyway.
    finally:
      self._manager.close()
      for handler in self._item_handlers.values():
        handler.close()


class BestCheckpoint:
  """`WORKDIR/best`: the params of the dev evaluation with the best `metric` so far (`train.best_metric`).

  Params only: it is there to be exported (`export.load_student(..., checkpoint="best")`), never resumed from. Each
  orbax step holds the params and a JSON record {step, metric, mode, value}, committed together; `best.json` beside
  them is process 0's copy of the record for people and scripts, written once the step is committed (and again at
  start, in case a run was killed in between). orbax keeps one step, chosen by the metric, so the previous best is
  deleted only after the new one is committed.

  Multi-process runs: every process calls `start`, `update` and `close` with the same arguments (the dev scores are
  replicated, so every process takes the same decision); process 0 alone writes best.json.
  """

  def __init__(self, directory: str | epath.Path, metric: str = "", mode: str = "max", *, async_save: bool = True):
    """`metric` "" opens it for `restore` alone (export: the kept step's record names its metric)."""
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    self.directory = _absolute(directory)
    self.metric, self.mode = metric, mode
    self.record: dict[str, Any] | None = None  # the kept step's
    self._unwritten: dict[str, Any] | None = None  # a record whose step may still be saving
    _register_cpu_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=(lambda m: m[metric]) if metric else None, best_mode=mode,
        enable_async_checkpointing=async_save, create=bool(metric), read_only=not metric)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def start(self, resumed: bool) -> dict[str, Any] | None:
    """Takes up the kept best if this run continues its history; returns its record (None: nothing kept yet).

    A run that starts from step 0 (no training checkpoint) replays nothing of the history the kept step came from,
    and a step kept by another metric or mode cannot be compared: both are deleted, as metrics.jsonl's rows after the
    last checkpoint are. A resumed run keeps the record even if its step is past the resume step: batches are a
    pure function of (seed, step), so the replayed evaluations reach that value again and never beat it.
    """
    self._manager.reload()
    steps = self._manager.all_steps()
    record, cause = None, None
    if steps:
      try:
        record = max((self._read_record(s) for s in steps), key=self._key)
      except Exception as e:  # pylint: disable=broad-except
        cause = f"unreadable ({_one_line(e)})"
      if jax.process_count() > 1:  # one outcome on every process: the deletes below are collective
        failed = np.asarray(multihost_utils.process_allgather(np.int32(cause is not None))).reshape(-1)
        if cause is None and failed.any():
          cause = f"unreadable on process(es) {np.flatnonzero(failed).tolist()}"
    if cause is None and record is not None:
      if not resumed:
        cause = "this run starts from step 0"
      elif (record.get("metric"), record.get("mode")) != (self.metric, self.mode):
        cause = f"it was kept by {record.get('metric')} ({record.get('mode')})"
    if cause is not None:
      log.warning("%s: deleting the kept best step(s) %s: %s", self.directory, steps, cause)
      for step in steps:
        self._manager.delete(step)
      record = None
    self.record = record
    if jax.process_index() == 0:
      if record is not None:
        write_text_atomic(self.directory / "best.json", json.dumps(record, sort_keys=True) + "\n")
      elif (self.directory / "best.json").exists():
        (self.directory / "best.json").unlink()
    return record

  def update(self, step: int, scores: dict[str, float], params: Any) -> bool:
    """Saves `params` as the new best if `scores[metric]` beats the kept value (strictly); returns whether it did."""
    self._write_json(wait=False)
    value = float(scores[self.metric])
    if not math.isfinite(value) or (self.record is not None and self._key({"value": value}) <= self._key(self.record)):
      return False
    record = {"step": int(step), "metric": self.metric, "mode": self.mode, "value": value}
    if step in self._manager.all_steps():
      # Only a resumed run whose replay did not reach the kept value bit for bit gets here; orbax never overwrites.
      self._manager.wait_until_finished()
      self._manager.delete(step)
    self._manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                     meta=ocp.args.JsonSave(record)),
                       metrics={self.metric: value}, force=True)  # force: a lower step than the kept one is fine
    self.record = self._unwritten = record
    return True

  def restore(self, abstract_params: Any, shardings: Any) -> tuple[dict[str, Any], Any]:
    """(record, params) of the kept step, each array placed with the matching sharding; UserError if none."""
    self._manager.wait_until_finished()
    self._manager.reload()
    steps = self._manager.all_steps()
    if not steps:
      raise UserError(f"{self.directory}: no best checkpoint: train with train.best_metric set")
    records = {s: self._read_record(s) for s in steps}
    step = max(steps, key=lambda s: self._key(records[s]))  # two only while a new best's old one is being deleted
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params, shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    return records[step], restored.params

  def _read_record(self, step: int) -> dict[str, Any]:
    return dict(ocp.JsonCheckpointHandler().restore(self.directory / str(step) / "meta", args=ocp.args.JsonRestore()))

  def _key(self, record: dict[str, Any]) -> float:
    """Larger is better, whatever the mode (a record's own mode for the ones read back)."""
    return record["value"] if record.get("mode", self.mode) == "max" else -record["value"]

  def _write_json(self, wait: bool) -> None:
    if self._unwritten is None or (not wait and self._manager.is_saving_in_progress()):
      return
    # Immediate when the save is over; raises if it failed, so best.json never names an uncommitted step.
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      write_text_atomic(self.directory / "best.json", json.dumps(self._unwritten, sort_keys=True) + "\n")
    self._unwritten = None

  def close(self) -> None:
    try:
      self._write_json(wait=True)  # Raises again if the save failed: the manager must be closed anyway.
    finally:
      self._manager.close()


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _as_tree(state: Any) -> dict[str, Any]:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _one_line(error: BaseException) -> str:
  text = (str(error).strip().splitlines() or [""])[0]
  text = text.split(" [tensorstore_spec", 1)[0]  # TensorStore appends its whole JSON spec to every message
  text = re.sub(r'Error opening "\w+" driver: ', "", text)  # and names each layer it went through
  if len(text) > 300:
    text = text[:297] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


_HOOK_INSTALLED = False


def _ignore_closed_loop_callbacks() -> None:
  """Silences the harmless noise a failed restore leaves behind.

  When one read of a restore fails, orbax closes its asyncio loop while TensorStore still completes the other reads;
  each completion then reports "RuntimeError: Event loop is closed" with a traceback through sys.unraisablehook,
  dozens per failed step, around our one-line warning. Exactly those are dropped; anything else goes through.
  Installed before the first read, since the reports start before the failure reaches us.
  """
  global _HOOK_INSTALLED
  if _HOOK_INSTALLED:
    return
  _HOOK_INSTALLED = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook
