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
"""
from __future__ import annotations

import logging
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

log = logging.getLogger("optical_jax")

_CPU_HANDLER_REGISTERED = False


class Checkpointer:
  def __init__(self, directory: str | epath.Path, *, keep: int = 2, async_save: bool = True):
    # Orbax's tensorstore reads need an absolute local path: a relative workdir would fail on restore.
    self.directory = epath.Path(directory)
    if "://" not in str(directory):
      self.directory = self.directory.resolve()
    global _CPU_HANDLER_REGISTERED
    if jax.default_backend() == "cpu" and not _CPU_HANDLER_REGISTERED:
      # Replica-parallel saving slices every replicated array per device, compiling one tiny program per device and
      # shape: tens of seconds on simulated CPU meshes for nothing. Accelerators keep orbax's default.
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
      _CPU_HANDLER_REGISTERED = True
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
