"""Orbax checkpoints of the student's train state (never the teacher): async, keep-N, resumable.

A checkpoint holds the step, params, optimizer state, and JSON metadata with the data position and the seed. The
data position is the step: batches are a pure function of (seed, step) (data/pipeline.py), so resuming there replays
exactly the stream an uninterrupted run would have seen.

Multi-process runs: every process calls `save` and `restore` with the same step (orbax synchronises them and each
writes its own shards), so the directory must be one that every host sees: a `gs://` bucket or a shared
filesystem. `gs://` array data goes through TensorStore's GCS driver, the rest through etils.epath
(tests/test_remote_storage.py runs both against a fake GCS).
"""
from __future__ import annotations

from typing import Any

import jax
import optax
import orbax.checkpoint as ocp
from etils import epath


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

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_tree(state)), meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores into `abstract_state`'s structure, each array placed with the matching sharding.

    A frozen subtree (optax.masked) leaves a MaskedNode in the optimizer state where the sharding tree has a
    NamedSharding: it holds no array, so it is kept as it is rather than matched leaf for leaf.
    """
    target = jax.tree.map(lambda x, s: x if _is_masked(x) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          _as_tree(abstract_state), _as_tree(shardings), is_leaf=_is_masked)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = abstract_state.replace(**restored.state)
    return state, dict(restored.meta)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _as_tree(state: Any) -> dict[str, Any]:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}
