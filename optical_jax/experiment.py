"""`optical-jax experiment --spec experiments/NAME.py --workdir DIR [--dry-run] [--cell I]`: a question as a grid.

A spec is a python file whose `get_spec()` returns a dict (`--spec FILE:VARIANT` calls `get_spec(VARIANT)`, e.g.
a CPU-sized variant of a grid):
  config        base config, "path/to/config.py[:ARG]" (relative paths are read from the repository root)
  overrides     list of "KEY=VALUE" applied to every cell
  cells         {name: [overrides]}: the grid, in order; the control is one of them
  control       the cell every other is compared with
  seeds         training seeds (`seed`; batch order and any random init), e.g. (0, 1, 2)
  metrics       e.g. ("mrr@10", "ndcg@10"); compared on the `maxsim` scorer unless `scorer` says "pooled"
  axis          optional {cell: number} (e.g. bitext pairs): learning curves over it instead of bars;
                `axis_label` names it on the plots
  series        optional {cell: name}: which curve a cell belongs to (e.g. its objective); one curve otherwise
  collections   optional eval.collections; `files` optional eval.files (else the base config's)
  baselines     optional, e.g. ("zero_shot",): systems that do not train (zero_shot, teacher_en, teacher_lr),
                evaluated once on the control's config (first seed) in DIR/baselines and compared with the control
                like the cells; a full run, or `--cell 0`, evaluates them
  pairs         optional [(A, B), ...]: more paired comparisons, cell (or baseline) A minus B on the same queries
                (e.g. two objectives at each bitext size), in DIR/pairs.csv and a second table of table.md
  pretrain      optional {NAME: (CONFIG, [overrides])}: continued pre-training runs (`optical-jax pretrain`) done
                once in DIR/pretrain/NAME before the first cell that needs them; a cell override
                `student.init=@pretrain:NAME` trains from that run's export

For every cell and seed the runner trains (or resumes: rerunning skips what is done) in DIR/cells/CELL/seed_S and
evaluates the student there. Teacher stores are shared by every run with the same data and teacher
(DIR/stores/HASH). Then it writes DIR/table.csv, table.md, results.json and plots/: per cell and
(collection, metric), mean ± sd over seeds, and the paired difference to the control on the same queries (each
query's metric averaged over seeds first) with its SE, t-test and randomisation p-values, Holm-corrected over the
cells of each column. `--cell I` runs one cell (a cluster runs the cells in parallel, launch/slurm_experiment.sbatch);
the tables cover whatever is finished. `--dry-run` loads every config and checks every data source and collection
without training: seconds.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from optical_jax import config as config_lib
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")

SPEC_KEYS = {"config", "overrides", "cells", "control", "seeds", "metrics", "axis", "series", "collections", "files",
             "scorer", "pretrain", "baselines", "pairs", "axis_label"}
BASELINES = ("zero_shot", "teacher_en", "teacher_lr")
PRETRAIN_REF = "@pretrain:"  # a cell's `student.init=@pretrain:NAME`: the export of the spec's pretrain run NAME
# Keys a teacher store depends on: runs that agree on all of them share one store.
STORE_KEYS = ("teacher.path", "teacher.query_prefix", "teacher.passage_prefix", "teacher.targets", "teacher.dim",
              "data.bitext", "data.max_train_pairs", "data.sample_seed", "data.max_len_teacher", "data.length_buckets",
              "data.max_len_student", "data.teacher_dtype", "data.strict")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_spec(spec_arg: str) -> dict[str, Any]:
  """`PATH` or `PATH:VARIANT` (get_spec(VARIANT), e.g. a spec's CPU-sized variant), validated."""
  path, _, variant = spec_arg.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--spec: no such file: {path}")
  module_spec = importlib.util.spec_from_file_location(f"optical_jax_spec_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    spec = module.get_spec(variant) if variant else module.get_spec()
  except Exception as e:  # A broken spec is the user's to fix: say where.
    raise UserError(f"{path}: cannot load the spec: {type(e).__name__}: {e}") from e
  unknown = set(spec) - SPEC_KEYS
  missing = {"config", "cells", "control", "seeds", "metrics"} - set(spec)
  if unknown or missing:
    raise UserError(f"{path}: spec keys: unknown {sorted(unknown)}, missing {sorted(missing)}")
  if spec["control"] not in spec["cells"]:
    raise UserError(f"{path}: control {spec['control']!r} is not one of the cells {list(spec['cells'])}")
  if not spec["seeds"]:
    raise UserError(f"{path}: seeds is empty")
  names = set(spec["cells"]) | set(spec.get("baselines", ()))
  for pair in spec.get("pairs", ()):
    if len(pair) != 2 or not set(pair) <= names:
      raise UserError(f"{path}: pairs: {pair!r} must be two names among the cells and baselines")
  unknown = [b for b in spec.get("baselines", ()) if b not in BASELINES or b in spec["cells"]]
  if isinstance(spec.get("baselines", ()), str) or unknown:
    raise UserError(f"{path}: baselines must be a tuple of {BASELINES} not named like a cell, got "
                    f"{spec['baselines']!r}")
  for cell, overrides in spec["cells"].items():
    for name in _pretrain_refs(overrides):
      if name not in spec.get("pretrain", {}):
        raise UserError(f"{path}: cell {cell!r} trains from {PRETRAIN_REF}{name}, which the spec's pretrain does not "
                        f"define (it has {sorted(spec.get('pretrain', {}))})")
  return spec


def _pretrain_refs(overrides: Sequence[str]) -> list[str]:
  return [o.partition("=")[2][len(PRETRAIN_REF):] for o in overrides if o.partition("=")[2].startswith(PRETRAIN_REF)]


def pretrain_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "pretrain", name)


def pretrain_config(spec: Mapping[str, Any], name: str) -> ml_collections.ConfigDict:
  """The validated config of the spec's pretrain run NAME."""
  from optical_jax import pretrain
  base, overrides = spec["pretrain"][name]
  try:
    config = config_lib.load_config(_config_path(base), list(overrides))
    pretrain.check_config(config)
    config_lib.validate(config)
  except UserError as e:
    raise UserError(f"pretrain {name!r}: {e}") from None
  return config


def _config_path(spec_config: str) -> str:
  path, sep, arg = spec_config.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(REPO, path)
  return path + sep + arg


def cell_config(spec: Mapping[str, Any], cell: str, seed: int, workdir: str) -> ml_collections.ConfigDict:
  """The validated config of one run: base config, spec overrides, the cell's, its seed and its store."""
  overrides = list(spec.get("overrides", ())) + list(spec["cells"][cell]) + [f"seed={seed}", f"eval.system={cell}"]
  overrides = [_resolve_pretrain(o, workdir) for o in overrides]
  for key in ("collections", "files"):
    if key in spec:
      overrides.append(f"eval.{key}={spec[key]}")
  try:
    config = config_lib.load_config(_config_path(spec["config"]), overrides)
  except UserError as e:
    raise UserError(f"cell {cell!r}, seed {seed}: {e}") from None
  flat = {k: str(_get(config, k)) for k in STORE_KEYS}
  if config.teacher.path == "random":  # a random teacher is drawn from the seed
    flat["seed"] = str(config.seed)
  digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
  config.data.teacher_store = os.path.join(workdir, "stores", digest)
  if not config.data.tfds_data_dir:  # one prepared copy of the tfds datasets for every run
    config.data.tfds_data_dir = os.path.join(workdir, "tfds")
  return config


def _resolve_pretrain(override: str, workdir: str) -> str:
  key, _, value = override.partition("=")
  if not value.startswith(PRETRAIN_REF):
    return override
  return f"{key}={os.path.join(pretrain_dir(workdir, value[len(PRETRAIN_REF):]), 'export')}"


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  section, _, leaf = key.partition(".")
  return config[section][leaf] if leaf else config[section]


def run_dir(workdir: str, cell: str, seed: int) -> str:
  return os.path.join(workdir, "cells", cell, f"seed_{seed}")


def dry_run(spec: Mapping[str, Any], workdir: str) -> list[dict[str, Any]]:
  """Every run's config, data sources and collections checked; nothing trained. Returns the plan."""
  from optical_jax.data import bitext as bitext_lib
  from optical_jax.data import collections as collections_lib
  from optical_jax.data import tfds_bitext
  plan = []
  for name in spec.get("pretrain", {}):
    pretrain_config(spec, name)
  for cell in spec["cells"]:
    for seed in spec["seeds"]:
      config = cell_config(spec, cell, seed, workdir)
      if config.data.bitext != "synthetic":
        for source in bitext_lib.parse_sources(config.data.bitext):
          if source.spec.startswith("tfds:"):
            name, _, tfds_config = source.spec[5:].partition("/")
            builder = tfds_bitext.BUILDERS.get(name)
            if builder is None or tfds_config not in [c.name for c in builder.BUILDER_CONFIGS]:
              raise UserError(f"cell {cell!r}: unknown bitext source {source.spec}")
          elif "://" not in source.spec and not os.path.isfile(source.spec):
            raise UserError(f"cell {cell!r}: bitext file {source.spec} does not exist")
      names = [n for n in config_lib.split_list(config.eval.collections) if not os.path.isdir(n.partition("@")[0])]
      collections_lib.check_names(names)
      for triple in (t for t in config.eval.files.split(";") if t.strip()):
        for path in config_lib.split_list(triple.partition("=")[2] if "=" in triple.split(",")[0] else triple):
          if not os.path.isfile(path):
            raise UserError(f"cell {cell!r}: eval.files: {path} does not exist")
      plan.append({"cell": cell, "seed": seed, "workdir": run_dir(workdir, cell, seed),
                   "store": config.data.teacher_store, "steps": config.train.steps})
  return plan


def _done(path: str) -> bool:
  return os.path.exists(os.path.join(path, "eval", "metrics.json"))


def baselines_dir(workdir: str) -> str:
  return os.path.join(workdir, "baselines")


def _evaluate_baselines(spec: Mapping[str, Any], workdir: str) -> None:
  from optical_jax import evaluate
  out = baselines_dir(workdir)
  if _done(out):
    print("baselines: done already", flush=True)
    return
  config = cell_config(spec, spec["control"], spec["seeds"][0], workdir)
  config.eval.baselines = ",".join(spec["baselines"])
  print(f"baselines {', '.join(spec['baselines'])}: evaluating in {out}", flush=True)
  os.makedirs(out, exist_ok=True)
  evaluate.evaluate_baselines(config, out)


def run(spec: Mapping[str, Any], workdir: str, *, cell_index: int | None = None) -> dict[str, Any]:
  """Trains and evaluates every run not done yet (or one cell's), then writes the tables from what is done."""
  from optical_jax import evaluate, precompute, pretrain, train
  cells = list(spec["cells"])
  if cell_index is not None and not 0 <= cell_index < len(cells):
    raise UserError(f"--cell {cell_index}: the spec has cells 0..{len(cells) - 1}")
  todo = [(c, s) for c in (cells if cell_index is None else [cells[cell_index]]) for s in spec["seeds"]]
  started = time.perf_counter()
  for i, (cell, seed) in enumerate(todo, start=1):
    path = run_dir(workdir, cell, seed)
    head = f"[{i}/{len(todo)}] {cell} seed {seed}"
    if _done(path):
      print(f"{head}: done already", flush=True)
      continue
    for name in _pretrain_refs(spec["cells"][cell]):
      out = pretrain_dir(workdir, name)
      if not os.path.exists(os.path.join(out, "export", "config.json")):
        print(f"{head}: continued pre-training {name!r} in {out}", flush=True)
        if _stopped(head, pretrain.pretrain(pretrain_config(spec, name), out),
                    pretrain_config(spec, name).train.steps):
          return write_report(spec, workdir)
    config = cell_config(spec, cell, seed, workdir)
    if not os.path.exists(os.path.join(config.data.teacher_store, "manifest.json")):
      print(f"{head}: teacher store {config.data.teacher_store}", flush=True)
      precompute.precompute_teacher(config, path)
    print(f"{head}: training {config.train.steps} steps ({time.perf_counter() - started:.0f}s so far)", flush=True)
    if _stopped(head, train.train(config, path), config.train.steps):
      return write_report(spec, workdir)
    print(f"{head}: evaluating", flush=True)
    evaluate.evaluate(config, path, baselines=False)
  if spec.get("baselines") and cell_index in (None, 0):
    _evaluate_baselines(spec, workdir)
  return write_report(spec, workdir)


def _stopped(head: str, summary: Mapping[str, Any], steps: int) -> bool:
  """True if a stop request (SIGTERM: preemption) ended the run before `steps`: it saved a checkpoint there, and
  the runner must neither evaluate nor go on; a rerun resumes it."""
  if summary.get("final_step", steps) >= steps:
    return False
  print(f"{head}: stopped at step {summary['final_step']} of {steps} on request; rerun to resume", flush=True)
  return True


def _per_query(run_dir_path: str, system: str, collection: str, metric: str, scorer: str) -> dict[str, float] | None:
  """Per-query `metric` of SYSTEM_SCORER's run of `collection` in run_dir_path/eval (None if it has none)."""
  from optical_jax.retrieval import metrics as metrics_lib
  from optical_jax.retrieval import trec
  eval_dir = os.path.join(run_dir_path, "eval")
  run_file = os.path.join(eval_dir, f"{system}_{scorer}", f"{collection}.run")
  qrels_path = os.path.join(eval_dir, f"{collection}.qrels")
  if not (os.path.exists(run_file) and os.path.exists(qrels_path)):
    return None
  _, per_query = metrics_lib.evaluate_run(trec.read_qrels(qrels_path), trec.read_run(run_file), [metric])
  return {q: m[metric] for q, m in per_query.items()}


def write_report(spec: Mapping[str, Any], workdir: str) -> dict[str, Any]:
  """table.csv / table.md / results.json / plots from every finished run (recomputed from the run files)."""
  from optical_jax.retrieval import significance
  scorer = spec.get("scorer", "maxsim")
  cells, control = list(spec["cells"]), spec["control"]
  finished = {c: [s for s in spec["seeds"] if _done(run_dir(workdir, c, s))] for c in cells}
  # A baseline is one more column entry, read from DIR/baselines (it has no seeds: it does not train).
  run_paths = {c: [run_dir(workdir, c, s) for s in finished[c]] for c in cells}
  baselines = list(spec.get("baselines", ())) if _done(baselines_dir(workdir)) else []
  run_paths.update({b: [baselines_dir(workdir)] for b in baselines})
  collections = []
  for paths in run_paths.values():
    for path in paths:
      with open(os.path.join(path, "eval", "metrics.json"), encoding="utf-8") as f:
        collections += [n for n in json.load(f)["collections"] if n not in collections]
  rows, pair_rows = [], []
  for collection in collections:
    for metric in spec["metrics"]:
      averaged = {}
      for c in cells + baselines:
        seeds = [_per_query(path, c, collection, metric, scorer) for path in run_paths[c]]
        seeds = [x for x in seeds if x is not None]
        if seeds:
          queries = sorted(seeds[0])
          per_seed_means = [float(np.mean([x[q] for q in queries])) for x in seeds]
          averaged[c] = ({q: float(np.mean([x[q] for x in seeds])) for q in queries}, per_seed_means)
      column = []
      for c in cells + baselines:
        if c not in averaged:
          continue
        per_query, means = averaged[c]
        row = {"cell": c, "collection": collection, "metric": metric, "scorer": scorer, "seeds": len(means),
               "mean": float(np.mean(means)), "sd": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0}
        if c in baselines:
          row.update(baseline=True, seeds=0)
        if "axis" in spec and c in spec["axis"]:
          row["axis"] = spec["axis"][c]
        if c != control and control in averaged:
          row.update(_paired(per_query, averaged[control][0]))
        column.append(row)
      significance.with_holm([r for r in column if "p_value" in r])
      rows += column
      compared = [{"a": a, "b": b, "collection": collection, "metric": metric, "scorer": scorer,
                   **_paired(averaged[a][0], averaged[b][0])}
                  for a, b in spec.get("pairs", ()) if a in averaged and b in averaged]
      pair_rows += significance.with_holm(compared)
  return _write_outputs(spec, workdir, rows, pair_rows)


def _paired(a_per_query: Mapping[str, float], b_per_query: Mapping[str, float]) -> dict[str, float]:
  """mean(a - b) over the queries both have, its SE, and the paired t-test and randomisation p-values."""
  from optical_jax.retrieval import significance
  queries = sorted(set(a_per_query) & set(b_per_query))
  a, b = np.asarray([a_per_query[q] for q in queries]), np.asarray([b_per_query[q] for q in queries])
  d = a - b
  return dict(diff=float(d.mean()), se=float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
              **significance.paired_tests(a, b))


def _write_outputs(spec: Mapping[str, Any], workdir: str, rows: list[dict[str, Any]],
                   pair_rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  fields = ["cell", "baseline", "axis", "collection", "metric", "scorer", "seeds", "mean", "sd", "diff", "se",
            "p_value", "p_randomization", "p_holm"]
  with open(os.path.join(workdir, "table.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  lines = [f"control: `{spec['control']}`; mean ± sd over seeds; difference to the control on the same queries "
           "± SE, paired t-test p (Holm over the cells of each column; randomisation p in table.csv)", "",
           "| cell | collection | metric | seeds | mean ± sd | vs control | p (Holm) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    seeds = "baseline" if r.get("baseline") else r["seeds"]
    vs = f"{r['diff']:+.4f} ± {r['se']:.4f}" if "diff" in r else "(control)" if r["cell"] == spec["control"] else "-"
    p = f"{r['p_value']:.2g} ({r['p_holm']:.2g})" if "p_holm" in r else "-"
    lines.append(f"| {r['cell']} | {r['collection']} | {r['metric']} | {seeds} | {r['mean']:.4f} ± {r['sd']:.4f} "
                 f"| {vs} | {p} |")
  if pair_rows:
    pair_fields = ["a", "b", "collection", "metric", "scorer", "diff", "se", "p_value", "p_randomization", "p_holm"]
    with open(os.path.join(workdir, "pairs.csv"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=pair_fields, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(pair_rows)
    lines += ["", "Pairs: A minus B on the same queries ± SE, paired t-test p (Holm over the pairs of each column)", "",
              "| A | B | collection | metric | A − B | p (Holm) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['a']} | {r['b']} | {r['collection']} | {r['metric']} | {r['diff']:+.4f} ± {r['se']:.4f} | "
              f"{r['p_value']:.2g} ({r['p_holm']:.2g}) |" for r in pair_rows]
  with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  plots = _plots(spec, workdir, rows)
  results = {"spec": {k: v for k, v in spec.items()}, "rows": rows, "pairs": list(pair_rows), "plots": plots}
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, default=str)
  print("\n".join(lines), flush=True)
  return results


def _plots(spec: Mapping[str, Any], workdir: str, rows: Sequence[dict[str, Any]]) -> list[str]:
  """One PNG per (collection, metric): a learning curve over spec["axis"] (log x) if given, else bars ± sd."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for collection, metric in dict.fromkeys((r["collection"], r["metric"]) for r in rows):
    column = [r for r in rows if r["collection"] == collection and r["metric"] == metric]
    trained = [r for r in column if not r.get("baseline")]
    curves = bool(spec.get("axis")) and bool(trained) and all("axis" in r for r in trained)
    fig, ax = plt.subplots(figsize=(6.0, 3.6) if curves else (max(4.0, 0.9 * len(column)), 3.2))
    if curves:
      series = spec.get("series", {})
      for name in dict.fromkeys(series.get(r["cell"], "") for r in trained):
        line = sorted((r for r in trained if series.get(r["cell"], "") == name), key=lambda r: r["axis"])
        ax.errorbar([r["axis"] for r in line], [r["mean"] for r in line], yerr=[r["sd"] for r in line],
                    marker="o", capsize=3, label=name or None)
      for r in column:
        if r.get("baseline"):  # no axis: it does not train, so it is the same at every point
          ax.axhline(r["mean"], color="grey", linestyle="--", linewidth=1, label=r["cell"])
      ax.set_xscale("log")
      ax.set_xlabel(spec.get("axis_label", ""), fontsize=8)
      if series or len(trained) < len(column):
        ax.legend(fontsize=7)
    else:
      ax.bar(range(len(column)), [r["mean"] for r in column], yerr=[r["sd"] for r in column], capsize=3)
      ax.set_xticks(range(len(column)), [r["cell"] for r in column], rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{collection} {metric}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{collection}_{metric.replace('@', '_at_')}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(os.path.relpath(path, workdir))
  return written


def main(spec_path: str, workdir: str, *, dry: bool = False, cell: int | None = None) -> dict[str, Any]:
  spec = load_spec(spec_path)
  if dry:
    plan = dry_run(spec, workdir)
    for entry in plan:
      print(f"{entry['cell']}\tseed {entry['seed']}\t{entry['steps']} steps\t{entry['workdir']}\tstore {entry['store']}")
    also = f" (+ baselines {', '.join(spec['baselines'])}, evaluated once)" if spec.get("baselines") else ""
    print(f"dry run: {len(plan)} runs in {len(spec['cells'])} cells x {len(spec['seeds'])} seeds{also}; every "
          "config, data source and collection checked", flush=True)
    return {"plan": plan}
  return run(spec, workdir, cell_index=cell)
