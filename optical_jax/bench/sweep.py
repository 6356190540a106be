"""`optical-jax bench --sweep`: batch size x student length x Sinkhorn iterations; CSV and PNG plots.

For each (batch, student length) one state is shared by the MSE twin and one OT step per iteration count, timed in
interleaved rounds like the main benchmark; a row's OT share is the median over rounds of 1 - t_MSE / t_OT (the
twins ran back to back), and MFU uses one peak for the whole sweep (on CPU the best GEMM sample). Files go next to
the JSON (`<stem>_sweep.csv`, `<stem>_throughput_mfu.png`, `<stem>_ot_share.png`), or to ./bench_* without --json;
in a multi-process run every process measures every point and process 0 alone writes them.
"""
from __future__ import annotations

import copy
import csv
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from optical_jax import config as config_lib
from optical_jax import flops as flops_lib
from optical_jax import sharding as sharding_lib
from optical_jax.bench import timing
from optical_jax.bench.formulas import ot_share, throughput, train_step_flops
from optical_jax.bench.settings import bench_settings
from optical_jax.bench.train_bench import TrainStepBench, mse_variant
from optical_jax.errors import UserError

COLUMNS = ("batch", "student_len", "iterations", "step_time_median_s", "step_time_p90_s", "sequences_per_s",
           "padded_tokens_per_s", "real_tokens_per_s", "train_step_flops", "mfu", "mse_step_time_median_s",
           "ot_share", "xla_compile_s", "recompiles")


def _point(config: ml_collections.ConfigDict, batch: int, student_len: int, iterations: int | None = None
           ) -> ml_collections.ConfigDict:
  out = copy.deepcopy(config)
  out.train.batch_size, out.data.max_len_student = batch, student_len
  # A point is one fixed shape: the config's length buckets (ending at its own max length) do not apply.
  out.data.length_buckets, out.data.length_group = (), 0
  if iterations is not None:
    out.ot.iterations = iterations
  return out


def run_sweep(config: ml_collections.ConfigDict, *, watch: timing.CompileWatch, json_path: str | None
              ) -> dict[str, Any]:
  settings = bench_settings(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  devices = list(mesh.devices.flat)
  rows, skipped, gemm = [], [], []
  for batch in settings.sweep_batch:
    for student_len in settings.sweep_student_len:
      base = _point(config, batch, student_len)
      try:
        config_lib.validate(base, num_devices=mesh.size)
      except UserError as e:
        skipped.append({"batch": batch, "student_len": student_len, "reason": str(e)})
        continue
      variants = {f"ot@{k}": _point(config, batch, student_len, k) for k in settings.sweep_iterations}
      mse = mse_variant(base)
      if mse is not None:
        variants["mse"] = mse
      bench = TrainStepBench(variants, mesh, settings)
      compiled = bench.compile(watch)
      for name in bench.steps:
        bench.run(name, max(settings.warmup_steps, 1))
      before, cache_before = watch.compiles, sum(bench.cache_sizes().values())
      times = timing.interleave({n: (lambda n=n: bench.run(n, 1)) for n in bench.steps}, settings.sweep_steps)
      recompiles = max(watch.compiles - before, sum(bench.cache_sizes().values()) - cache_before)
      gemm += timing.measure_cpu_gemm(devices)
      mse = np.asarray(times["mse"]) if "mse" in times else None
      for k in settings.sweep_iterations:
        point = variants[f"ot@{k}"]
        ot = np.asarray(times[f"ot@{k}"])
        s = timing.summary(list(ot))
        rows.append({
            "batch": batch, "student_len": student_len, "iterations": k,
            "step_time_median_s": s["median_s"], "step_time_p90_s": s["p90_s"],
            **throughput(point, s["median_s"], bench.real_tokens_per_batch),
            "train_step_flops": train_step_flops(point, bench.encoder_config),
            "mse_step_time_median_s": None if mse is None else float(np.median(mse)),
            # Per round the OT step and its MSE twin ran back to back: the paired share is the least exposed to a
            # drifting machine load.
            "ot_share": (ot_share(s["median_s"], None) if mse is None else
                         float(np.clip(np.median(1.0 - mse / ot), 0.0, 1.0))),
            "xla_compile_s": compiled[f"ot@{k}"]["xla_compile_s"], "recompiles": recompiles,
        })
      del bench
  # One peak for the whole sweep: the best GEMM sample of the run (CPU) or the datasheet peak.
  peak, n_counted, peak_source = timing.peak_flops(devices, gemm)
  for row in rows:
    row["mfu"] = None if peak is None else flops_lib.mfu(row["train_step_flops"], row["step_time_median_s"],
                                                         n_counted, peak)
  stem = os.path.splitext(json_path)[0] if json_path else os.path.join(os.getcwd(), "bench")
  files = {"csv": f"{stem}_sweep.csv", "throughput_mfu_png": f"{stem}_throughput_mfu.png",
           "ot_share_png": f"{stem}_ot_share.png"}
  if jax.process_index() == 0:
    write_csv(rows, files["csv"])
    plot(rows, files, reference_iterations=int(config.ot.iterations))
    for path in files.values():
      print(f"wrote {path}")
  return {"rows": rows, "skipped": skipped, "files": files, "steps_per_point": settings.sweep_steps,
          "peak_flops_per_s": peak, "peak_source": peak_source}


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def plot(rows: list[dict[str, Any]], files: dict[str, str], reference_iterations: int) -> None:
  """Throughput and MFU against batch (one line per student length), OT share against iterations."""
  # Here, not at the top: only --sweep plots, and the Agg backend must be chosen before pyplot is imported.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  iterations = sorted({r["iterations"] for r in rows})
  # Throughput/MFU at the config's own iteration count if the sweep has it, else at the closest one.
  at = min(iterations, key=lambda k: abs(k - reference_iterations)) if iterations else reference_iterations
  fig, (ax_tok, ax_mfu) = plt.subplots(1, 2, figsize=(10, 4))
  for ls in sorted({r["student_len"] for r in rows}):
    sel = sorted((r for r in rows if r["student_len"] == ls and r["iterations"] == at), key=lambda r: r["batch"])
    ax_tok.plot([r["batch"] for r in sel], [r["padded_tokens_per_s"] for r in sel], "o-", label=f"Ls={ls}")
    if all(r["mfu"] is not None for r in sel):
      ax_mfu.plot([r["batch"] for r in sel], [100 * r["mfu"] for r in sel], "o-", label=f"Ls={ls}")
  ax_tok.set(xlabel="global batch", ylabel="padded tokens / s", title=f"throughput ({at} Sinkhorn it)")
  ax_mfu.set(xlabel="global batch", ylabel="MFU (%)", title="model FLOPs utilisation")
  for ax in (ax_tok, ax_mfu):
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(files["throughput_mfu_png"], dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for key in sorted({(r["batch"], r["student_len"]) for r in rows}):
    sel = sorted((r for r in rows if (r["batch"], r["student_len"]) == key and r["ot_share"] is not None),
                 key=lambda r: r["iterations"])
    ax.plot([r["iterations"] for r in sel], [100 * r["ot_share"] for r in sel], "o-", label=f"B={key[0]} Ls={key[1]}")
  ax.axhline(10, color="grey", ls="--", lw=1, label="10 % target")
  ax.set(xlabel="Sinkhorn iterations", ylabel="OT share of step time (%)", title="OT share")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(files["ot_share_png"], dpi=110)
  plt.close(fig)
