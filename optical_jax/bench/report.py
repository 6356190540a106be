"""The human-readable report of `optical-jax bench` and its JSON file (process 0 writes both)."""
from __future__ import annotations

import json
import os
from typing import Any


def _fmt_s(x: float | None) -> str:
  if x is None:
    return "n/a"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


def _fmt_ratio(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def format_report(r: dict[str, Any]) -> str:
  env, c = r["environment"], r["config"]
  lines = [] if not env.get("warning") else [f"WARNING: {env['warning']}"]
  lines += [
      f"optical-jax bench: {c['layers']}L/{c['hidden']}/{c['ffn']} {c['model_type']} vocab {c['vocab']}, "
      f"B={c['batch']} Ls={c['student_len']} Lt={c['teacher_len']} D={c['teacher_dim']}, "
      f"{c['ot']['iterations']} Sinkhorn it, {c['dtype']}; {env['backend']} x{env['num_devices']} "
      f"({env['device_kind']}{'' if env['num_processes'] == 1 else ', ' + str(env['num_processes']) + ' processes'}), "
      f"jax {env['jax']}, load {env['load_average_start']} -> {env['load_average_end']}"
      + (f"; host CPU: {env['cpu_model']}" if env.get("cpu_model") else ""),
      f"  compile       train step: trace+lower {r['compile']['train_step']['ot']['trace_lower_s']:.1f} s, "
      f"XLA {r['compile']['train_step']['ot']['xla_compile_s']:.1f} s",
      f"  step          median {_fmt_s(r['step_time_median_s'])}, p90 {_fmt_s(r['step_time_p90_s'])} "
      f"({r['timed_steps']} steps) | {r['sequences_per_s']:.1f} seq/s, {r['padded_tokens_per_s']:.0f} tok/s padded, "
      f"{r['real_tokens_per_s']:.0f} tok/s real",
      f"  FLOPs         {r['train_step_flops'] / 1e9:.1f} GFLOP/step, achieved "
      f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s, peak "
      + ("n/a" if r["peak_flops_per_s"] is None else f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
      + f" ({r['peak_source']}) -> MFU " + ("n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"),
      f"  OT share      " + ("n/a" if r["ot_share"] is None else f"{100 * r['ot_share']:.1f} %")
      + ("" if r.get("ot_share_paired_median") is None
         else f", paired per round {100 * r['ot_share_paired_median']:.1f} %")
      + f" (OT step {_fmt_s(r['step_time_median_s'])} vs MSE step {_fmt_s(r['mse_step_time_median_s'])}); "
      f"OT loss alone fwd {_fmt_s(r['ot_loss']['fwd_median_s'])}, "
      f"fwd+bwd {_fmt_s(r['ot_loss']['fwd_bwd_median_s'])}",
      "  memory        device peak " + (r["device_memory"]["note"] if r["device_memory"]["peak_bytes_max"] is None
                                         else f"{r['device_memory']['peak_bytes_max'] / 2**30:.2f} GiB")
      + ("" if not r["compiled_memory_per_device"] else
         f"; compiler plan {r['compiled_memory_per_device']['total_bytes'] / 2**30:.2f} GiB/device")
      + f"; host peak RSS {r['host_peak_rss_bytes'] / 2**30:.2f} GiB",
      f"  CPU           {r['cpu_s_per_step_median']:.3f} CPU-s/step (all threads), "
      f"{r['page_faults_per_step_median']:.0f} page faults/step",
      f"  recompiles    {r['recompiles']} after warm-up",
  ]
  if "compare" in r:
    k = r["compare"]
    lines += [
        f"  compare       vs {k['reference']['peer']} (torch threads: step {k['torch_threads_best_step']}, "
        f"POT {k['torch_threads_best_pot']}; default {k['reference']['torch_default_threads']})",
        f"    train step  optical_jax {_fmt_s(r['step_time_median_s'])} "
        f"vs torch {_fmt_s(k['torch_step_time_median_s'])} "
        f"-> step_time_ratio_vs_torch {k['step_time_ratio_vs_torch']:.3f} (paired "
        f"{k['step_time_ratio_vs_torch_paired_median']:.3f}, default threads "
        f"{_fmt_ratio(k['step_time_ratio_vs_torch_default_threads'])}); "
        f"CPU-s/step ratio {k['cpu_time_ratio_vs_torch']:.3f}",
        f"    OT fwd+bwd  optical_jax {_fmt_s(k['ot_loss_fwd_bwd_median_s']['optical_jax'])}, POT batched "
        f"{_fmt_s(k['ot_loss_fwd_bwd_median_s']['pot_batched'])}, POT loop "
        f"{_fmt_s(k['ot_loss_fwd_bwd_median_s']['pot_loop'])} -> speedup x{k['ot_speedup_vs_pot_batched']:.1f} "
        f"(batched), x{k['ot_speedup_vs_pot_loop']:.0f} (loop)",
    ]
    if k["differences"]:
      lines.append("    not identical: " + "; ".join(k["differences"]))
  lines.append("  targets       " + ", ".join(
      f"{n} {t['target']}: {'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')}"
      for n, t in r["targets"].items()))
  return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2, default=float)
    f.write("\n")
