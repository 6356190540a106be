"""The `optical-jax bench` command: one measurement run, the PyTorch peer beside it, the targets; report and JSON.

`run` measures and returns the JSON-ready dict; `main` is the command (prints, writes files, `--sweep`). The design
of a run (interleaved rounds, the MSE twin, multi-host) is in the package docstring (bench/__init__.py).
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from optical_jax import config as config_lib
from optical_jax import distributed
from optical_jax import flops as flops_lib
from optical_jax import sharding as sharding_lib
from optical_jax.bench import sweep as sweep_lib
from optical_jax.bench import timing
from optical_jax.bench.formulas import ot_share, throughput, train_step_flops
from optical_jax.bench.report import format_report, write_json
from optical_jax.bench.settings import bench_settings
from optical_jax.bench.train_bench import OtLossBench, TrainStepBench, mse_variant, ot_inputs, to_global
from optical_jax.errors import UserError

# The targets, checked in the JSON under "targets".
TARGETS = {"ot_speedup_vs_pot_batched": (">=", 5.0), "ot_speedup_vs_pot_loop": (">=", 100.0),
           "step_time_ratio_vs_torch": ("<=", 1.0), "ot_share": ("<=", 0.10), "recompiles": ("==", 0),
           "mfu": (">=", 0.40)}
# The MFU target is the accelerators' (datasheet bf16 peak): it applies to bf16 steps with at least this many padded
# student tokens per batch shard; elsewhere (CPU, float32, small batches) its value is None ("n/a").
MFU_TARGET_TOKENS_PER_DEVICE = 8192


def _ratio(num: float | None, den: float | None) -> float | None:
  return None if not num or not den else num / den


def _environment(mesh: jax.sharding.Mesh) -> dict[str, Any]:
  device = mesh.devices.flat[0]
  local = jax.local_device_count()
  warning = None
  if device.platform == "cpu" and local > 1:
    # Measured here: 8 simulated devices made the configs/bench_cpu.py step 4x the CPU work of one device.
    warning = (f"{local} simulated CPU devices share the host's cores, and each holds its own replica of the "
               "parameters and AdamW state: the step repeats the optimizer and all-reduces the dense gradients on "
               "every one. For CPU throughput, run with one CPU device (no --xla_force_host_platform_device_count).")
  # Host facts (CPUs, load, command) are process 0's: it alone writes them.
  return {"warning": warning, "jax": jax.__version__, "backend": jax.default_backend(),
          "device_kind": device.device_kind, "num_devices": int(mesh.size), "num_processes": jax.process_count(),
          "local_devices": local, "mesh": dict(mesh.shape), "command": " ".join(sys.argv), "host_cpus": os.cpu_count(),
          "machine": platform.machine(), "cpu_model": timing.cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "load_average_start": timing.load_average()}


def _shape(config: ml_collections.ConfigDict, encoder_config) -> dict[str, Any]:
  return {"batch": config.train.batch_size, "student_len": config.data.max_len_student,
          "teacher_len": config.data.max_len_teacher, "teacher_dim": int(config.teacher.dim),
          "model_type": encoder_config.model_type, "vocab": encoder_config.vocab_size,
          "hidden": encoder_config.hidden_size, "layers": encoder_config.num_layers,
          "heads": encoder_config.num_heads, "ffn": encoder_config.intermediate_size,
          "projection_dim": encoder_config.projection_dim, "dtype": encoder_config.dtype,
          "freeze_word_embeddings": config.student.freeze_word_embeddings,
          "ot": {k: config.ot[k] for k in ("epsilon", "iterations", "grad", "relative_epsilon", "marginals",
                                               "tokens")},
          "loss": config.loss.to_dict(), "student_init": config.student.init}


def _rounds(steps: int, settings) -> tuple[int, int]:
  rounds = min(steps, settings.max_rounds)
  return rounds, -(-steps // rounds)


def check_single_process(compare: bool) -> None:
  """`--compare` times the PyTorch peer in this process at the global shapes: one process only."""
  if compare and jax.process_count() > 1:
    raise UserError(f"--compare runs the single-process PyTorch + POT peer, but this run has {jax.process_count()} "
                    "processes: run `optical-jax bench --compare` on one host, without --distributed")


def _import_peer():
  """bench/peer.py, which imports torch and POT: the `compare` extra, so a run without --compare never needs them."""
  try:
    from optical_jax.bench import peer  # pylint: disable=import-outside-toplevel
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] not in ("torch", "ot"):
      raise
    raise UserError("--compare needs torch and POT: pip install 'optical_jax[compare]'") from e
  return peer


def run(config: ml_collections.ConfigDict, *, compare: bool = False, steps: int | None = None,
        watch: timing.CompileWatch) -> dict[str, Any]:
  """The benchmark's measurements as one JSON-ready dict (no printing, no files).

  `steps` timed steps (None: the config's `bench.steps`). Multi-process: every process calls this with the same
  config (process 0's seed is adopted) and gets the same dict, up to its own host measurements.
  """
  if steps is not None and steps < 1:
    raise UserError(f"--steps must be >= 1, got {steps}")
  check_single_process(compare)
  peer_lib = _import_peer() if compare else None  # before any device work: a missing torch fails in a second
  config = distributed.agree_on_config(config)
  settings = bench_settings(config)
  steps = settings.steps if steps is None else steps
  mesh = sharding_lib.create_mesh(config.mesh)
  config_lib.validate(config, num_devices=mesh.size)
  devices = list(mesh.devices.flat)
  result: dict[str, Any] = {"environment": _environment(mesh)}
  gemm = timing.measure_cpu_gemm(devices)

  mse_config = mse_variant(config)
  variants = {"ot": config} if mse_config is None else {"ot": config, "mse": mse_config}
  bench = TrainStepBench(variants, mesh, settings)
  encoder_config = bench.encoder_config
  result["config"] = _shape(config, encoder_config)
  result["num_parameters"] = bench.num_parameters
  compile_info = {"train_step": bench.compile(watch)}

  peer = differences = None
  if peer_lib is not None:
    ref_cfg, differences = peer_lib.reference_config(config, encoder_config, settings.min_real_frac)
    peer = peer_lib.TorchPeer(ref_cfg, tuple(settings.torch_threads))
    inputs = peer.ot_inputs()
  else:
    inputs = ot_inputs(config, int(config.teacher.dim), settings.min_real_frac, seed=config.seed)
  # Global arrays made here (every process holds `inputs` in full, from the same seed): OtLossBench's device_put
  # of an array already so laid out is a no-op, where a host array could not be placed on other hosts' devices.
  ot_bench = OtLossBench(config, mesh, to_global(inputs, mesh))
  compile_info["ot_loss"] = ot_bench.compile(watch)
  result["compile"] = compile_info

  # Warm-up: every timed thing once (or more) before the timed rounds.
  for name in bench.steps:
    if settings.warmup_steps:
      bench.run(name, settings.warmup_steps)
  ot_bench.time_fwd()
  ot_bench.time_fwd_bwd()
  if peer is not None:
    for t in peer.threads:
      peer.run_step(t)
      peer.run_ot("pot_batched", inputs, t, n=0, warmup=1)
  for counters in (bench.cpu_s, bench.page_faults, *((peer.cpu_s, peer.page_faults) if peer else ())):
    for values in counters.values():
      values.clear()  # CPU time and page faults of the timed steps only
  cache_before, compiles_before = {**bench.cache_sizes(), **ot_bench.cache_sizes()}, watch.compiles

  rounds, block = _rounds(steps, settings)
  tasks = {f"jax_{name}_step": (lambda name=name: bench.run(name, block)) for name in bench.steps}
  if peer is not None:
    tasks.update({f"torch_step@{t}": (lambda t=t: peer.run_step(t)) for t in peer.threads})
  # A GEMM peak sample per round (CPU only): the best one is the MFU denominator, as close to the true peak as
  # this run's load lets it be.
  tasks["cpu_gemm"] = lambda: gemm.extend(timing.measure_cpu_gemm(devices)) or []
  step_times = timing.interleave(tasks, rounds)
  # Each OT-only task times a burst of back-to-back calls after `ot_warmup_calls` untimed ones, on both sides: one
  # millisecond-long call right after another task times waking thread pools (1-3 ms here, measured) rather than
  # the loss, which inside a step runs hot. The per-pair POT loop, ~0.1 s a call, times one call per round.
  n, w = int(settings.ot_calls_per_round), int(settings.ot_warmup_calls)
  ot_tasks = {"jax_ot_fwd": lambda: ot_bench.time_fwd(n, w), "jax_ot_fwd_bwd": lambda: ot_bench.time_fwd_bwd(n, w)}
  max_calls = {}
  if peer is not None:
    ot_tasks.update({f"pot_batched@{t}": (lambda t=t: peer.run_ot("pot_batched", inputs, t, n, w))
                     for t in peer.threads})
    ot_tasks.update({f"pot_loop@{t}": (lambda t=t: peer.run_ot("pot_loop", inputs, t, 1, w)) for t in peer.threads})
    max_calls.update({f"pot_loop@{t}": max(int(settings.loop_repeats), 0) for t in peer.threads})
  ot_times = timing.interleave(ot_tasks, settings.ot_repeats, max_calls)

  cache_after = {**bench.cache_sizes(), **ot_bench.cache_sizes()}
  recompiles = max(watch.compiles - compiles_before, sum(cache_after.values()) - sum(cache_before.values()))
  gemm += timing.measure_cpu_gemm(devices)
  result["environment"]["load_average_end"] = timing.load_average()

  # The OT step.
  ot_step = timing.summary(step_times["jax_ot_step"])
  median = ot_step["median_s"]
  flops = train_step_flops(config, encoder_config)
  peak, n_counted, peak_source = timing.peak_flops(devices, gemm)
  result.update({
      "step_time_median_s": median, "step_time_p90_s": ot_step["p90_s"], "step_times_s": ot_step["times_s"],
      "timed_steps": ot_step["n"], "rounds": rounds, "steps_per_round": block,
      **throughput(config, median, bench.real_tokens_per_batch),
      "real_tokens_per_batch": bench.real_tokens_per_batch,
      "padded_tokens_per_device": (config.train.batch_size * config.data.max_len_student
                                   / (mesh.shape["data"] * mesh.shape["fsdp"])),
      "train_step_flops": flops, "xla_flops_per_device": compile_info["train_step"]["ot"]["xla_flops"],
      "achieved_flops_per_s": flops / median,
      "peak_flops_per_s": peak, "peak_devices_counted": n_counted, "peak_source": peak_source,
      "cpu_gemm_flops_per_s_samples": gemm,
      "mfu": None if peak is None else flops_lib.mfu(flops, median, n_counted, peak),
      "device_memory": timing.device_peak_memory(devices),
      "compiled_memory_per_device": compile_info["train_step"]["ot"]["compiled_memory"],
      "host_peak_rss_bytes": timing.host_peak_rss_bytes(),
      "cpu_s_per_step_median": float(np.median(bench.cpu_s["ot"])),
      "page_faults_per_step_median": float(np.median(bench.page_faults["ot"])),
      "recompiles": int(recompiles), "jit_cache_sizes": cache_after,
      "losses_finite": bool(np.all(np.isfinite([x for v in bench.losses.values() for x in v]))),
      "last_loss": bench.losses["ot"][-1],
  })

  # OT share: the same step with the OT loss swapped for the MSE loss.
  mse = timing.summary(step_times.get("jax_mse_step", []))
  result["ot_share"] = ot_share(median, mse["median_s"])
  if mse["n"]:  # the same difference per round (both twins ran back to back), less exposed to load drift
    per_round = lambda v: np.asarray(step_times[f"jax_{v}_step"]).reshape(-1, block).mean(axis=1)
    result["ot_share_paired_median"] = float(np.clip(np.median(1.0 - per_round("mse") / per_round("ot")), 0, 1))
    result["mse_cpu_s_per_step_median"] = float(np.median(bench.cpu_s["mse"]))
  result["mse_step_time_median_s"] = mse["median_s"]
  result["mse_step_times_s"] = mse["times_s"]
  result["ot_step_minus_mse_step_s"] = None if mse["median_s"] is None else median - mse["median_s"]
  jax_ot = {"fwd": timing.summary(ot_times["jax_ot_fwd"]), "fwd_bwd": timing.summary(ot_times["jax_ot_fwd_bwd"])}
  result["ot_loss"] = {"fwd_median_s": jax_ot["fwd"]["median_s"], "fwd_bwd_median_s": jax_ot["fwd_bwd"]["median_s"],
                       "fwd_bwd_p90_s": jax_ot["fwd_bwd"]["p90_s"], "fwd_bwd_times_s": jax_ot["fwd_bwd"]["times_s"],
                       "share_of_step_fwd_bwd": jax_ot["fwd_bwd"]["median_s"] / median,
                       "loss": ot_bench.loss_value()}

  if peer is not None:
    result["compare"] = _compare(result, peer, step_times, ot_times, block, differences)
  result["targets"] = _targets(result)
  return result


def _compare(result, peer, step_times, ot_times, block, differences) -> dict[str, Any]:
  jax_step, jax_ot = result["step_time_median_s"], result["ot_loss"]["fwd_bwd_median_s"]
  torch_steps = {t: timing.summary(step_times[f"torch_step@{t}"]) for t in peer.threads}
  pot_batched = {t: timing.summary(ot_times[f"pot_batched@{t}"]) for t in peer.threads}
  pot_loops = {t: timing.summary(ot_times[f"pot_loop@{t}"]) for t in peer.threads}
  best_loop = min(peer.threads, key=lambda t: pot_loops[t]["median_s"])
  pot_loop = pot_loops[best_loop]
  default = peer.default_threads
  best_step = min(peer.threads, key=lambda t: torch_steps[t]["median_s"])
  best_pot = min(peer.threads, key=lambda t: pot_batched[t]["median_s"])
  # Paired per-round ratios (same round, same machine load) as a robustness check of the ratio of medians.
  jax_rounds = np.asarray(step_times["jax_ot_step"]).reshape(-1, block).mean(axis=1)
  torch_rounds = np.asarray(step_times[f"torch_step@{best_step}"])
  n = min(len(jax_rounds), len(torch_rounds))
  torch_median = torch_steps[best_step]["median_s"]
  return {
      # The ratios the issue names. The peer is taken at its fastest torch thread count in this run: on a loaded
      # machine fewer threads can beat the default, and the comparison must not gain from the peer's bad luck.
      "ot_speedup_vs_pot_batched": _ratio(pot_batched[best_pot]["median_s"], jax_ot),
      "ot_speedup_vs_pot_loop": _ratio(pot_loop["median_s"], jax_ot),
      "step_time_ratio_vs_torch": _ratio(jax_step, torch_median),
      "step_time_ratio_vs_torch_default_threads": (_ratio(jax_step, torch_steps[default]["median_s"])
                                                   if default in torch_steps else None),
      "step_time_ratio_vs_torch_paired_median": float(np.median(jax_rounds[:n] / torch_rounds[:n])) if n else None,
      "ot_share": result["ot_share"], "recompiles": result["recompiles"], "mfu": result["mfu"],
      "torch_threads_best_step": best_step, "torch_threads_best_pot": best_pot, "torch_threads_best_loop": best_loop,
      "torch_step": {peer.label(t): s for t, s in torch_steps.items()},
      "torch_step_time_median_s": torch_median,
      # CPU seconds (all threads) per step: the work each side does, much less sensitive to other processes' load
      # than wall time. Torch at its least-CPU thread count (spinning OpenMP threads inflate the others).
      "cpu_time_ratio_vs_torch": _ratio(result["cpu_s_per_step_median"],
                                        min(float(np.median(v)) for v in peer.cpu_s.values())),
      "torch_cpu_s_per_step_median": {peer.label(t): float(np.median(v)) for t, v in peer.cpu_s.items()},
      "torch_page_faults_per_step_median": {peer.label(t): float(np.median(v)) for t, v in peer.page_faults.items()},
      "torch_sequences_per_s": result["config"]["batch"] / torch_median,
      "torch_real_tokens_per_s": peer.real_tokens_per_batch / torch_median,
      "torch_mfu": (None if result["peak_flops_per_s"] is None else
                    flops_lib.mfu(result["train_step_flops"], torch_median, result["peak_devices_counted"],
                                  result["peak_flops_per_s"])),
      "ot_loss_fwd_bwd_median_s": {"optical_jax": jax_ot, "pot_batched": pot_batched[best_pot]["median_s"],
                                   "pot_loop": pot_loop["median_s"]},
      "ot_loss_fwd_median_s": {"optical_jax": result["ot_loss"]["fwd_median_s"],
                               **{k: float(np.median(v)) for k, v in peer.ot_fwd.items()}},
      "pot_batched": {peer.label(t): s for t, s in pot_batched.items()},
      "pot_loop": {peer.label(t): s for t, s in pot_loops.items()},
      # Same inputs, same epsilon and iterations; the solvers alternate the potential updates in different orders,
      # so before convergence the values differ slightly (benchmarks/README.md).
      "ot_loss_value": {"optical_jax": result["ot_loss"]["loss"], **peer.ot_losses},
      "identical_computation": not differences, "differences": differences,
      "reference": peer.describe(),
      "torch_losses_finite": bool(np.all(np.isfinite(peer.losses))),
  }


def _targets(result: dict[str, Any]) -> dict[str, Any]:
  values = {"ot_share": result["ot_share"], "recompiles": result["recompiles"]}
  values.update({k: result["compare"][k] for k in TARGETS if k in result.get("compare", {})})
  applies = (result["environment"]["backend"] != "cpu" and result["config"]["dtype"] == "bfloat16"
             and result["padded_tokens_per_device"] >= MFU_TARGET_TOKENS_PER_DEVICE)
  values["mfu"] = result["mfu"] if applies else None
  out = {}
  for name, (op, bound) in TARGETS.items():
    value = values.get(name)
    met = None if value is None else {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]
    out[name] = {"value": value, "target": f"{op} {bound:g}", "met": met}
  return out


def main(config: ml_collections.ConfigDict, *, compare: bool = False, sweep: bool = False,
         json_path: str | None = None, steps: int | None = None) -> dict[str, Any]:
  """The `optical-jax bench` command: measure, print a report, write JSON (and sweep CSV/plots) if asked.

  Process 0 alone prints and writes files; every process returns its own result dict.
  """
  check_single_process(compare)  # before the handler below: every process refuses alike, with the usual exit 2
  try:
    return _main(config, compare=compare, sweep=sweep, json_path=json_path, steps=steps)
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() > 1:
      # Raising would leave the other processes blocked in a collective until the heartbeat timeout.
      distributed.exit_now(e, None, rerun="rerun every process")
    raise


def _main(config: ml_collections.ConfigDict, *, compare: bool, sweep: bool, json_path: str | None,
          steps: int | None) -> dict[str, Any]:
  is_lead = jax.process_index() == 0
  with timing.CompileWatch() as watch:
    result = run(config, compare=compare, steps=steps, watch=watch)
    if is_lead:
      print(format_report(result), flush=True)
    if sweep:
      result["sweep"] = sweep_lib.run_sweep(config, watch=watch, json_path=json_path)
  if json_path and is_lead:
    write_json(result, json_path)
    print(f"wrote {json_path}")
  return result
