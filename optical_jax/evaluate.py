"""`optical-jax evaluate --config CFG --workdir DIR`: which systems a config evaluates, on which collections.

The retrieval itself (encoding, exact search, TREC runs and metrics) is retrieval/evaluation.py; this module maps a
config's `eval` section to collections and systems: the trained student, and the baselines `teacher_en` (the
teacher on the English translation of each query), `teacher_lr` (the teacher on the low-resource query) and
`zero_shot` (the student before training).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from optical_jax import export
from optical_jax import student as student_lib
from optical_jax import config as config_lib
from optical_jax.config import split_list
from optical_jax.data import collections as collections_lib
from optical_jax.data.teacher import load_teacher, teacher_head, teacher_identity
from optical_jax.errors import UserError
from optical_jax.retrieval import doc_index
from optical_jax.retrieval.evaluation import System, evaluate_systems


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.eval with the lengths resolved (0 = the training data's lengths)."""
  ev = ml_collections.ConfigDict(config.eval.to_dict())
  ev.max_len_query = ev.max_len_query or config.data.max_len_student
  ev.max_len_doc = ev.max_len_doc or config.data.max_len_teacher
  return ev


def load_collections(ev: ml_collections.ConfigDict) -> list[collections_lib.EvalCollection]:
  """eval.collections (built-in names, `irds:NAME` ir_datasets datasets, or BEIR folders as `DIR` / `DIR@SPLIT`) and
  eval.files (your own files)."""
  names, out = [], []
  for entry in split_list(ev.collections):
    folder, _, split = entry.partition("@")
    if entry.startswith(collections_lib.IRDS_PREFIX):  # NAME has slashes but is never a folder
      names.append(entry)
    elif os.path.isdir(folder):
      out.append(collections_lib.beir_collection(folder, split or "test"))
    elif "/" in folder or os.sep in folder:
      raise UserError(f"eval.collections: {folder}: no such folder (a BEIR folder holds corpus.jsonl, "
                      "queries.jsonl and qrels/SPLIT.tsv)")
    else:
      names.append(entry)
  if names:
    out[:0] = collections_lib.build(names, num_verses=ev.num_verses, num_topical=ev.num_topical,
                                    num_quran=ev.num_quran, seed=ev.seed)
  for triple in (t.strip() for t in ev.files.split(";")):
    if triple:
      out.append(_file_triple(triple))
  if not out:
    raise UserError("config: nothing to evaluate: set eval.collections and/or eval.files")
  names = [c.name for c in out]
  if len(set(names)) != len(names):
    raise UserError(f"eval: two collections are named {next(n for n in names if names.count(n) > 1)!r}; name your "
                    "own files NAME=QUERIES,DOCUMENTS,QRELS")
  return out


def _file_triple(text: str) -> collections_lib.EvalCollection:
  """`[NAME=]QUERIES,DOCUMENTS,QRELS` -> a collection (named after the documents file without NAME=)."""
  name, sep, paths = text.partition("=")
  if not sep or "," in name:
    name, paths = None, text
  parts = split_list(paths)
  if len(parts) != 3:
    raise UserError(f"eval.files: {text!r}: expected [NAME=]QUERIES,DOCUMENTS,QRELS (several separated by ';')")
  return collections_lib.file_collection(*parts, name=name.strip() if name else None)


def baseline_systems(config: ml_collections.ConfigDict, teacher) -> list[System]:
  """eval.baselines: teacher_en (teacher, English queries), teacher_lr (teacher, low-resource queries), zero_shot."""
  out = []
  for name in split_list(config.eval.baselines):
    if name == "teacher_en":
      out.append(System("teacher_en", teacher, config.teacher.query_prefix, head=teacher_head(teacher),
                        english=True))
    elif name == "teacher_lr":
      out.append(System("teacher_lr", teacher, config.teacher.query_prefix, head=teacher_head(teacher)))
    elif name == "zero_shot":
      out.append(System("zero_shot", student_lib.initial_encoder(config), config.student.prefix))
  return out


def open_indexes(config: ml_collections.ConfigDict, teacher) -> list[doc_index.DocIndex]:
  """eval.index: indexes built by `optical-jax index`, checked to hold this teacher's documents as evaluation
  encodes them (weights, passage prefix, MaxSim token rule)."""
  ev = eval_config(config)
  dirs = split_list(ev.index)
  if dirs and ev.doc_window:
    raise UserError("eval.index holds whole documents; eval.doc_window > 0 searches passages: set one of them")
  want = {"teacher_checksum": teacher_identity(config, teacher)["teacher_checksum"],
          "prefix": config.teacher.passage_prefix, "maxsim_tokens": ev.maxsim_tokens}
  out = []
  for path in dirs:
    index = doc_index.DocIndex(path)
    for key, value in want.items():
      if index.manifest.get(key) != value:
        raise UserError(f"eval.index: {path}: built with {key}={index.manifest.get(key)!r}, this evaluation uses "
                        f"{value!r}; rebuild it with `optical-jax index` and this config")
    out.append(index)
  return out


def run_evaluation(config: ml_collections.ConfigDict, collections, systems: Sequence[System], teacher,
                   out_dir) -> dict[str, Any]:
  ev = eval_config(config)
  indexes = open_indexes(config, teacher)
  return evaluate_systems(collections, systems, teacher, out_dir, doc_prefix=config.teacher.passage_prefix,
                          scorers=split_list(ev.scorers), k=ev.k, max_len_query=ev.max_len_query,
                          max_len_doc=ev.max_len_doc, batch_size=ev.batch_size, maxsim_tokens=ev.maxsim_tokens,
                          doc_window=ev.doc_window, doc_stride=ev.doc_stride, doc_aggregate=ev.doc_aggregate,
                          indexes=indexes)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, baselines: bool = True) -> dict[str, Any]:
  """`optical-jax evaluate`: the workdir's trained student (+ baselines) on the configured collections."""
  collections = load_collections(config.eval)
  student, step = export.load_student(workdir, config.eval.mix)
  teacher = load_teacher(config)
  systems = baseline_systems(config, teacher) if baselines else []
  systems.append(System(config_lib.system_name(config), student, config.student.prefix))
  summary = run_evaluation(config, collections, systems, teacher, os.path.join(workdir, "eval"))
  summary["student_step"] = step
  return _written(summary, workdir)


def evaluate_baselines(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The config's eval.baselines alone, nothing trained: WORKDIR/eval as `evaluate` writes it."""
  teacher = load_teacher(config)
  systems = baseline_systems(config, teacher)
  if not systems:
    raise UserError("eval.baselines names no baseline (teacher_en, teacher_lr, zero_shot)")
  summary = run_evaluation(config, load_collections(config.eval), systems, teacher, os.path.join(workdir, "eval"))
  return _written(summary, workdir)


def _written(summary: dict[str, Any], workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, "eval", "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  print(format_table(summary))
  return summary


def format_table(summary: dict[str, Any], metrics: Sequence[str] = ("mrr@10", "ndcg@10", "map", "recall@100"),
                 markdown: bool = False) -> str:
  """SYSTEM_SCORER rows x (collection, metric) columns; '-' where a system was not run on a collection."""
  collections = list(summary["collections"])
  header = ["system"] + [f"{c} {m}" for c in collections for m in metrics]
  rows = []
  for name, per in summary["systems"].items():
    cells = [f"{per[c][m]:.3f}" if c in per and m in per[c] else "-" for c in collections for m in metrics]
    rows.append([name] + cells)
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
  return "\n".join([fmt(header)] + [fmt(r) for r in rows])
