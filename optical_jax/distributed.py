"""Multi-process runs: opt-in `jax.distributed` start-up, agreement between processes, and failing fast.

Start-up: `jax.distributed.initialize()` when asked (`--distributed` or OPTICAL_JAX_DISTRIBUTED=1), on multi-host
TPU VM slices, or under a multi-task SLURM job; OPTICAL_JAX_DISTRIBUTED=0 turns auto-detection off. On a single-host
machine nothing happens (initialize() fails there, as big_vision notes). Local multi-process runs and tests give the
coordinates explicitly: OPTICAL_JAX_COORDINATOR=host:port, OPTICAL_JAX_NUM_PROCESSES, OPTICAL_JAX_PROCESS_ID.
CPU processes talk through gloo (jax 0.10's default `jax_cpu_collectives_implementation`).

Agreement: every process must run the same config with the same seed (`agree_on_config`), and stop at the same step
(`StopVote`): a SIGTERM reaches one process, or all of them at different moments, yet all must save the same
checkpoint step or orbax and the collectives deadlock.

Failing fast (measured with 2 local CPU processes, jax 0.10.2): when a process dies without notice (kill -9, a lost
host), the survivors block in their next collective; no Python error comes. jax's coordination service then ends
them: at once if process 0 (the coordinator) died, else when the dead process's heartbeat times out
(OPTICAL_JAX_HEARTBEAT_TIMEOUT seconds, jax's default 100), with SIGABRT (exit 134) and the message "Terminating
process because the JAX distributed service detected fatal errors. This most likely indicates that another task
died". `StopVote` prints a warning of ours first, naming the wait and the timeout. An error that does reach
Python in one process (a failed collective, a bad shard) ends that process at once through `exit_now`, so the
others' collectives fail instead of waiting for it in jax's shutdown barrier.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optical_jax import workdir_lock
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")
_initialized = False
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's default in jax 0.10.2.
LOST_PEER_EXIT_CODE = 1  # An internal error in the CLI's convention (0 ok, 2 user error, 1 internal).

# Environment variable -> jax.distributed.initialize keyword (seconds).
_TIMEOUTS = {
    "OPTICAL_JAX_HEARTBEAT_TIMEOUT": "heartbeat_timeout_seconds",
    "OPTICAL_JAX_INIT_TIMEOUT": "initialization_timeout",
    "OPTICAL_JAX_SHUTDOWN_TIMEOUT": "shutdown_timeout_seconds",
}


def _auto_detected() -> bool:
  if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts  # A multi-host TPU slice lists every worker.


def _int_env(name: str) -> int:
  value = os.environ[name]
  try:
    return int(value)
  except ValueError:
    raise UserError(f"environment: {name} must be an integer, got {value!r}") from None


def initialize_kwargs() -> dict[str, Any]:
  """jax.distributed.initialize() arguments from the OPTICAL_JAX_* environment."""
  kwargs: dict[str, Any] = {}
  if os.environ.get("OPTICAL_JAX_COORDINATOR"):
    missing = [n for n in ("OPTICAL_JAX_NUM_PROCESSES", "OPTICAL_JAX_PROCESS_ID") if n not in os.environ]
    if missing:
      raise UserError(f"environment: OPTICAL_JAX_COORDINATOR is set, so {' and '.join(missing)} must be too")
    kwargs = dict(coordinator_address=os.environ["OPTICAL_JAX_COORDINATOR"],
                  num_processes=_int_env("OPTICAL_JAX_NUM_PROCESSES"),
                  process_id=_int_env("OPTICAL_JAX_PROCESS_ID"))
  for name, key in _TIMEOUTS.items():
    if os.environ.get(name):
      kwargs[key] = _int_env(name)
  return kwargs


def heartbeat_timeout() -> int:
  """Seconds after which jax declares a silent process dead and ends all the others."""
  return initialize_kwargs().get("heartbeat_timeout_seconds", DEFAULT_HEARTBEAT_TIMEOUT_S)


def maybe_initialize(force: bool = False) -> bool:
  global _initialized
  if _initialized:
    return True
  env = os.environ.get("OPTICAL_JAX_DISTRIBUTED")
  if not (force or env == "1" or (env != "0" and _auto_detected())):
    return False
  # Without explicit coordinates jax detects TPU / SLURM / GKE itself.
  kwargs = initialize_kwargs()
  # Preemption is ours (StopVote): jax's own preemption service would install a competing SIGTERM handler.
  jax.config.update("jax_enable_preemption_service", False)
  jax.distributed.initialize(**kwargs)
  _initialized = True
  log.info("jax.distributed: process %d of %d, %d local / %d global devices; heartbeat timeout %d s",
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
           heartbeat_timeout())
  return True


def agree_on_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """All processes adopt process 0's seed, then must hold the same config (else UserError on every process)."""
  if jax.process_count() == 1:
    return config
  from optical_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  seed = int(config.seed)
  # Two 32-bit halves: jax arrays are 32-bit unless x64 is on.
  halves = np.asarray([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], np.uint32)
  agreed = np.asarray(multihost_utils.broadcast_one_to_all(halves)).astype(np.uint64)
  agreed_seed = int(agreed[0]) | (int(agreed[1]) << 32)
  if agreed_seed >= 1 << 63:
    agreed_seed -= 1 << 64
  if agreed_seed != seed:
    log.warning("process %d: config.seed %d differs from process 0's; using %d", jax.process_index(), seed,
                agreed_seed)
    config.seed = agreed_seed
  digest = np.frombuffer(hashlib.sha256(config_lib.to_json(config).encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
  if differ:
    raise UserError(f"config: processes {differ} run a different config from process 0 (same --config file, "
                    "overrides and environment on every host?)")
  return config


def barrier(name: str) -> None:
  """Every process waits here for the others (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class _WaitWatchdog:
  """Prints one warning when a wait on the other processes lasts longer than `warn_after` seconds.

  It ends nothing: jax's heartbeat timeout does that if a process really died; this says what we were waiting for.
  """

  def __init__(self, warn_after: float):
    self._warn_after = warn_after
    self._since: float | None = None
    self._what = ""
    self._lock = threading.Lock()
    threading.Thread(target=self._watch, name="optical_jax-wait-watchdog", daemon=True).start()

  @contextlib.contextmanager
  def waiting(self, what: str):
    with self._lock:
      self._since, self._what = time.monotonic(), what
    try:
      yield
    finally:
      with self._lock:
        self._since = None

  def _watch(self) -> None:
    warned_for = None
    while True:
      time.sleep(min(1.0, self._warn_after / 4))
      with self._lock:
        since, what = self._since, self._what
      if since is None or since == warned_for or time.monotonic() - since < self._warn_after:
        continue
      warned_for = since
      print(f"optical-jax: warning: process {jax.process_index()} of {jax.process_count()} has waited "
            f"{time.monotonic() - since:.0f} s for the other processes ({what}); if one of them died, jax ends this "
            f"process when its heartbeat times out ({heartbeat_timeout()} s, OPTICAL_JAX_HEARTBEAT_TIMEOUT)",
            file=sys.stderr, flush=True)


class StopVote:
  """Agrees on one stop step across processes from per-process stop flags (set by SIGTERM).

  Every `every` steps each process adds its flag to a one-int-per-device max-reduction over the whole mesh. The
  reduction is dispatched asynchronously and its result read at the next step, by when it has finished, so it
  never stalls the dispatch of the train step; the price is that a stop takes effect one step after the vote that
  saw the signal. Every process reads the same reduced value at the same step, so all stop together. One process:
  the flag is used at once, with no reduction.
  """

  def __init__(self, mesh: Mesh, every: int = 1):
    if every < 1:
      raise UserError(f"config: train.stop_vote_every must be >= 1, got {every}")
    self._multi = jax.process_count() > 1
    self._every = every
    self._pending = None
    if not self._multi:
      return
    self._devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    self._shape = (mesh.devices.size,)
    self._sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))  # one element per device
    self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    self._watchdog = _WaitWatchdog(min(30.0, heartbeat_timeout() / 2))

  def __call__(self, local_stop: bool, step: int) -> bool:
    """Votes at `step` (if it is a voting step); True when the previous vote asked to stop, on every process."""
    if not self._multi:
      return local_stop
    previous, self._pending = self._pending, None
    if step % self._every == 0:
      shards = [jax.device_put(np.full((1,), int(local_stop), np.int32), d) for d in self._devices]
      votes = jax.make_array_from_single_device_arrays(self._shape, self._sharding, shards)
      self._pending = (step, self._reduce(votes))
    if previous is None:
      return False
    with self._watchdog.waiting(f"stop vote of step {previous[0]}"):
      return bool(np.asarray(previous[1]))


def is_collective_failure(error: BaseException) -> bool:
  """A runtime error of the kind a failed cross-process collective raises (gloo / NCCL / ICI / barrier)."""
  return isinstance(error, (jax.errors.JaxRuntimeError, RuntimeError)) and not isinstance(error, UserError)


def exit_now(error: BaseException, last_checkpoint: int | None, rerun: str | None = None) -> NoReturn:
  """Ends this process of a multi-process run at once, with one clear line on stderr; never returns.

  Raising instead would block in jax's shutdown barrier while the other processes wait in a collective for this
  one, until jax's shutdown timeout (300 s). Ending now stops this process's heartbeat, so jax ends the others too:
  at once if this is process 0, else after the heartbeat timeout (see the module docstring). `rerun` replaces the
  advice about resuming from a checkpoint, for commands that keep none (bench).
  """
  resume = rerun or "rerun every process to resume from the newest checkpoint"
  if last_checkpoint is not None and rerun is None:
    resume += f" (the last one started: step {last_checkpoint})" if last_checkpoint else " (none yet)"
  where = f"process {jax.process_index()} of {jax.process_count()}"
  first_line = (str(error).strip().splitlines() or [""])[0][:300]
  if isinstance(error, UserError):
    message, code = f"optical-jax: error: {where}: {error}", 2
  elif is_collective_failure(error):
    message = (f"optical-jax: error: {where}: a collective with the other processes failed, so one of them has "
               f"probably died or lost its network; stopping. {resume}. ({type(error).__name__}: {first_line})")
    code = LOST_PEER_EXIT_CODE
  else:
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exception(error)
    message, code = f"optical-jax: error: {where} failed ({type(error).__name__}); stopping every process. {resume}.", 1
  logging.shutdown()
  sys.stdout.flush()
  print(message, file=sys.stderr, flush=True)
  workdir_lock.release_all()  # os._exit skips the lock's `with` exit: the rerun must not find this run's lock
  os._exit(code)  # pylint: disable=protected-access
