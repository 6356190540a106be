"""`optical-jax export`: the trained student of a workdir as a Hugging Face directory (transformers loads it)."""
from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import ml_collections
from etils import epath

from optical_jax import checkpointing, models
from optical_jax import config as config_lib
from optical_jax import sharding as sharding_lib
from optical_jax import student as student_lib
from optical_jax import train_step as train_step_lib
from optical_jax.errors import UserError


def interpolate(trained: Any, initial: Any, mix: float) -> Any:
  """mix x trained + (1 - mix) x initial, leaf by leaf (WiSE-FT weight-space ensembling; docs/method.md)."""
  return jax.tree.map(lambda t, i: (mix * np.asarray(t, np.float32) + (1.0 - mix) * np.asarray(i, np.float32)
                                    ).astype(np.asarray(t).dtype), trained, initial)


CHECKPOINTS = ("latest", "best")


def load_student(workdir: str, mix: float = 1.0, checkpoint: str = "latest") -> tuple[models.Encoder, int]:
  """The newest readable checkpoint's student as a `models.Encoder` (params on host), and its step.

  Built from the workdir's config.json alone: the training data is never rebuilt to load a student.
  `mix` < 1 interpolates its weights towards the untrained (zero-shot) student's: 0 gives the zero-shot student.
  `checkpoint="best"` loads the params kept in WORKDIR/best instead (`train.best_metric`), and their step.
  """
  if not 0.0 <= mix <= 1.0:
    raise UserError(f"mix must be in [0, 1], got {mix}")
  if checkpoint not in CHECKPOINTS:
    raise UserError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
  workdir = epath.Path(workdir)
  if not (workdir / "config.json").exists():
    raise UserError(f"{workdir}: no config.json: not a training workdir")
  config = config_lib.from_json(workdir / "config.json")
  student = student_lib.build_student(config)
  tx = train_step_lib.make_optimizer(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  # Random values are enough for the restore target: every parameter is read from the checkpoint.
  state, shardings = train_step_lib.create_train_state(student.module, tx, config, mesh, jax.random.key(0))
  if checkpoint == "best":
    step, params = _load_best(workdir, state.params, shardings.params)
  else:
    checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", async_save=False)
    try:
      # repair=False: a training run may be writing beside this read; an unreadable step is skipped, never moved.
      restored = checkpointer.restore_latest(state, shardings, repair=False)
    finally:
      checkpointer.close()
    if restored is None:
      raise UserError(f"{workdir}/checkpoints: no checkpoint to export")
    step, state, _ = restored
    params = state.params
  params = jax.device_get(params)
  if mix < 1.0:
    params = interpolate(params, student_lib.initial_encoder(config, student).params, mix)
  return models.Encoder(module=student.module, params=params, tokenizer=student.tokenizer,
                        config=student.module.config, extra=student.extra), step


def _load_best(workdir: epath.Path, abstract_params: Any, shardings: Any) -> tuple[int, Any]:
  if not (workdir / "best").exists():
    raise UserError(f"{workdir}/best: no best checkpoint: train with train.best_metric set (e.g. dev_mrr@10)")
  best = checkpointing.BestCheckpoint(workdir / "best", async_save=False)  # read-only: a run may be writing
  try:
    record, params = best.restore(abstract_params, shardings)
  finally:
    best.close()
  return record["step"], params


def export(workdir: str, out: str, mix: float = 1.0, fmt: str = "hf", checkpoint: str = "latest") -> None:
  """The workdir's student as a Hugging Face directory (`fmt` "hf"), or also a sentence-transformers one; with
  optical_jax.json (prompts, the paired teacher, the MaxSim token rule) and a model card (export_formats.py).
  `checkpoint` as in `load_student`."""
  from optical_jax import export_formats
  from optical_jax.data.teacher import load_teacher, teacher_identity
  from optical_jax.data.tokens import prefix_length
  if fmt not in export_formats.FORMATS:
    raise UserError(f"--format must be one of {', '.join(export_formats.FORMATS)}, got {fmt!r}")
  encoder, step = load_student(workdir, mix, checkpoint)  # checks the workdir
  config = config_lib.from_json(epath.Path(workdir) / "config.json")
  out_path = epath.Path(out)
  models.save_pretrained(encoder, out)
  if config.teacher.path == "synthetic":  # the synthetic generator's made-up teacher vectors: no encoder to name
    teacher = {"teacher": "synthetic", "teacher_checksum": "", "dim": int(config.teacher.dim)}
  else:
    teacher = teacher_identity(config, load_teacher(config))
  max_len = int(config.eval.max_len_query or config.data.max_len_student)
  skip = 1 + prefix_length(encoder.tokenizer, config.student.prefix) if encoder.tokenizer is not None else 1
  metadata = {
      "system": config_lib.system_name(config), "step": step, "mix": mix, "format": fmt,
      "query_prefix": config.student.prefix, "passage_prefix": config.teacher.passage_prefix,
      "max_len_query": max_len, "max_len_doc": int(config.eval.max_len_doc or config.data.max_len_teacher),
      "teacher": {"path": teacher["teacher"], "checksum": teacher["teacher_checksum"], "dim": teacher["dim"]},
      "maxsim_tokens": config.eval.maxsim_tokens,
      "maxsim_rule": (f"content tokens: a query drops its first {skip} tokens (the leading special token and the "
                      "prefix pieces) and its final special token; documents likewise with the passage prefix"
                      if config.eval.maxsim_tokens == "content" else "every real token"),
      "pooling": "mean over every real token (prefix included), then cosine",
      "projection_dim": encoder.config.projection_dim, "normalize": encoder.config.normalize,
  }
  export_formats.write_metadata(out_path, metadata)
  if fmt == "sentence-transformers":
    export_formats.write_sentence_transformers(encoder, out_path, query_prefix=config.student.prefix,
                                               passage_prefix=config.teacher.passage_prefix, max_len=max_len)
  elif fmt == "pylate":
    export_formats.write_pylate(encoder, out_path, metadata)
  metrics_file = epath.Path(workdir) / "eval" / "metrics.json"
  evaluation = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
  (out_path / "README.md").write_text(export_formats.model_card(metadata, evaluation, fmt))
