"""Measurement tools of the benchmark: compile accounting, interleaved timing rounds, summaries, memory, peak FLOP/s.

Everything here is backend-agnostic. Times are wall-clock seconds taken on the host after the device has finished
(`block_until_ready`), so they include dispatch but never queue ahead of the device. Multi-process: a process can
only run on and query its own devices (`_local`); `device_peak_memory` is the one collective here, so every process
must call it at the same point.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from optical_jax import flops as flops_lib

# Events jax records for every trace / lowering / XLA compilation (jax._src.dispatch).
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileWatch:
  """Counts and times every jax trace, lowering and XLA compilation while it is installed.

  An XLA compilation inside a timed region is a recompilation: it must stay at 0 after warm-up.
  """

  def __init__(self):
    self.compiles = 0
    self.seconds = {"trace": 0.0, "lower": 0.0, "compile": 0.0}

  def _listener(self, event: str, duration: float, **_: Any) -> None:
    if event == _COMPILE_EVENT:
      self.compiles += 1
      self.seconds["compile"] += duration
    elif event == _TRACE_EVENT:
      self.seconds["trace"] += duration
    elif event == _LOWER_EVENT:
      self.seconds["lower"] += duration

  def __enter__(self) -> CompileWatch:
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listener)

  @contextlib.contextmanager
  def measure(self) -> Iterator[dict[str, float]]:
    """Yields a dict filled on exit with the compile counts and seconds spent inside the block."""
    before_n, before_s = self.compiles, dict(self.seconds)
    out: dict[str, float] = {}
    start = time.perf_counter()
    yield out
    out["wall_s"] = time.perf_counter() - start
    out["compiles"] = self.compiles - before_n
    for key, value in self.seconds.items():
      out[f"{key}_s"] = value - before_s[key]


def summary(times: list[float]) -> dict[str, Any]:
  """Median, p90, min and the raw list of a set of durations (seconds)."""
  if not times:
    return {"median_s": None, "p90_s": None, "min_s": None, "n": 0, "times_s": []}
  return {"median_s": statistics.median(times), "p90_s": float(np.percentile(times, 90)), "min_s": min(times),
          "n": len(times), "times_s": [round(t, 6) for t in times]}


def interleave(tasks: dict[str, Callable[[], list[float]]], rounds: int,
               max_calls: dict[str, int] | None = None) -> dict[str, list[float]]:
  """Runs the tasks round-robin `rounds` times; each call returns the durations it measured.

  Alternating (rather than timing A then B) makes a drift of the machine's load hit every task alike, which is what
  ratios measured on a shared machine need. The order rotates every round, so no task is always the one that runs
  right after another framework's (cold thread pool, evicted caches). `max_calls[name]` stops calling a task after
  that many rounds (e.g. a slow peer that one call suffices for).
  """
  max_calls = max_calls or {}
  names = list(tasks)
  out: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names) if names else 0
    for name in names[shift:] + names[:shift]:
      if r < max_calls.get(name, rounds):
        out[name].extend(tasks[name]())
  return out


def timed_calls(fn: Callable[[], Any], n: int = 1, warmup: int = 0) -> list[float]:
  """`warmup` untimed, then n timed synchronous calls of fn (its result is blocked on), one duration each."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def process_usage() -> tuple[float, int]:
  """(CPU seconds used by this process so far, user + system, all threads; minor page faults so far).

  On a shared machine CPU time moves far less with other processes' load than wall time does, and page faults
  count the fresh memory the allocator had to map (a cost XLA:CPU and torch both pay per step).
  """
  u = resource.getrusage(resource.RUSAGE_SELF)
  return u.ru_utime + u.ru_stime, int(u.ru_minflt)


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model() -> str | None:
  """The host CPU's model name (Linux /proc/cpuinfo; None elsewhere). The same VM type has moved between CPU
  vendors under us, and XLA:CPU's and torch's kernels do not speed up or slow down alike across them."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def host_peak_rss_bytes() -> int:
  """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


def _local(devices: list[jax.Device]) -> list[jax.Device]:
  """This process's devices among `devices` (all of them in a single-process run)."""
  return [d for d in devices if d.process_index == jax.process_index()]


def _memory_stats(device: jax.Device) -> dict[str, Any] | None:
  try:
    return device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # some backends raise instead of returning None
    return None


def device_peak_memory(devices: list[jax.Device]) -> dict[str, Any]:
  """Peak bytes in use per device from `memory_stats()`; CPU devices report none ("n/a").

  Multi-process: the per-device list is this process's devices, the max is over every process's (a collective).
  """
  local = _local(devices)
  stats = [_memory_stats(d) for d in local]
  peaks = None if any(not s or "peak_bytes_in_use" not in s for s in stats) else [
      int(s["peak_bytes_in_use"]) for s in stats]
  peak_max = None if peaks is None else max(peaks)
  if jax.process_count() > 1:  # every process takes part, with -1 for "no statistics", so none waits forever
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(-1 if peak_max is None else peak_max,
                                                                       np.int64)))
    peak_max = None if np.any(gathered < 0) else int(gathered.max())
  if peak_max is None:
    return {"peak_bytes_max": None, "note": f"n/a: {local[0].platform} devices report no memory_stats()"}
  return {"peak_bytes_max": peak_max, "peak_bytes_per_device": peaks, "bytes_limit": stats[0].get("bytes_limit")}


def compiled_memory(compiled) -> dict[str, int] | None:
  """The compiler's own per-device buffer plan: arguments + outputs - donated aliases + temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if m is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] - out["alias_size_in_bytes"]
                        + out["temp_size_in_bytes"])
  return out


def xla_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled program (all ops, per device): a cross-check of the analytic count."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def peak_flops(devices: list[jax.Device], cpu_gemm_samples: list[float]) -> tuple[float | None, int, str]:
  """(peak FLOP/s per counted device, number of devices counted, where the peak comes from).

  Accelerators use the dense bf16 datasheet table of optical_jax.flops. CPU devices (simulated ones included) share
  the host's cores, so each host counts once, at the best jitted f32 GEMM rate measured in this run (by this
  process): one host per process, which overstates the peak when several processes share one machine.
  """
  device = devices[0]
  if device.platform == "cpu":
    if not cpu_gemm_samples:
      return None, jax.process_count(), "cpu: no GEMM measurement"
    source = "cpu: jitted 1024^3 float32 GEMM measured in this run (best of the samples)"
    if jax.process_count() > 1:
      source += f", counted once per process ({jax.process_count()} processes, one host each)"
    return max(cpu_gemm_samples), jax.process_count(), source
  peak = flops_lib.device_peak_flops(device)
  if peak is None:
    return None, len(devices), f"unknown device kind {device.device_kind!r}: no peak in optical_jax.flops"
  return peak, len(devices), f"{device.device_kind}: dense bf16 datasheet peak (optical_jax.flops.PEAK_TFLOPS)"


def measure_cpu_gemm(devices: list[jax.Device]) -> list[float]:
  """One GEMM peak sample on a CPU backend (nothing elsewhere), on this process's first device."""
  if devices[0].platform != "cpu":
    return []
  with jax.default_device(_local(devices)[0]):
    return [flops_lib.measure_cpu_gemm_peak()]
