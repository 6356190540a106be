"""Opt-in multi-host start-up: `jax.distributed.initialize()` when asked, on TPU VM pods, or under SLURM.

Asked = `--distributed` or OPTICAL_JAX_DISTRIBUTED=1; OPTICAL_JAX_DISTRIBUTED=0 turns auto-detection off. On a
single-host machine nothing happens (initialize() fails there, as big_vision notes).
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("optical_jax")
_initialized = False


def _auto_detected() -> bool:
  if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts  # A multi-host TPU slice lists every worker.


def maybe_initialize(force: bool = False) -> bool:
  global _initialized
  if _initialized:
    return True
  env = os.environ.get("OPTICAL_JAX_DISTRIBUTED")
  if not (force or env == "1" or (env != "0" and _auto_detected())):
    return False
  kwargs = {}
  # Explicit coordinates (local multi-process runs and tests); otherwise jax detects TPU / SLURM / GKE itself.
  if os.environ.get("OPTICAL_JAX_COORDINATOR"):
    kwargs = dict(coordinator_address=os.environ["OPTICAL_JAX_COORDINATOR"],
                  num_processes=int(os.environ["OPTICAL_JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["OPTICAL_JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  _initialized = True
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
