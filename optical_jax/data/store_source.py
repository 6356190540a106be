"""Real training data: student-side token ids of the bitext joined by id with the stored teacher tokens.

The store must have been built by the configured teacher, tokenizer, and length (checked before the first step),
and must hold every training id: anything else stops the run with a message that says which.
"""
from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np
from etils import epath

from optical_jax import precompute
from optical_jax.data import encoding, teacher_store
from optical_jax.data.report import DataReport
from optical_jax.data.training_data import TrainingData
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")


def student_tokenizer(config: ml_collections.ConfigDict):
  if config.student.init == "random":
    return encoding.byte_tokenizer()
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(config.student.init))


def _prefix_length(tokenizer, prefix: str) -> int:
  """Pieces the prefix adds after the leading special token (e.g. E5's "query: " is 3 pieces)."""
  if not prefix:
    return 0
  bare = tokenizer("x", add_special_tokens=False)["input_ids"]
  with_prefix = tokenizer(prefix + "x", add_special_tokens=False)["input_ids"]
  return max(len(with_prefix) - len(bare), 0)


def content_mask(mask: np.ndarray, skip_front: int) -> np.ndarray:
  """The attention mask without the first `skip_front` tokens and the last real token ([SEP] / </s>)."""
  lengths = mask.sum(-1, keepdims=True)
  positions = np.arange(mask.shape[-1])[None]
  keep = (positions >= skip_front) & (positions < lengths - 1)
  out = (mask.astype(bool) & keep).astype(np.int32)
  # A sequence with no content token keeps its full mask: an empty OT marginal would be undefined.
  empty = out.sum(-1) == 0
  out[empty] = mask[empty]
  return out


def build(config: ml_collections.ConfigDict, workdir) -> TrainingData:
  workdir = epath.Path(workdir)
  report = DataReport()
  bitext = precompute.load_training_bitext(config, workdir, report)
  if jax.process_index() == 0:
    report.write(workdir / "data_report.json")
    log.info("bitext: %s", report.summary())
  root = precompute.store_root(config, workdir)
  if not (root / teacher_store.MANIFEST).exists():
    raise UserError(f"{root}: no teacher store; run `optical-jax precompute-teacher` with this config first")
  teacher = precompute.load_teacher(config)
  store = teacher_store.TeacherStore.open(root, expect=precompute.teacher_identity(config, teacher),
                                          verify=bool(config.data.get("verify_store", True)))
  teacher_tokenizer = teacher.tokenizer
  del teacher  # Only its identity and tokenizer are needed: the teacher never runs while training.
  tokenizer = student_tokenizer(config)
  ls = config.data.max_len_student
  sources = [ex.source for ex in bitext]
  prefix = config.student.get("prefix", "")
  enc = tokenizer([prefix + s for s in sources], padding="max_length", truncation=True, max_length=ls,
                  return_token_type_ids=False, return_tensors="np")
  student_ids = enc["input_ids"].astype(np.int32)
  student_mask = enc["attention_mask"].astype(np.int32)
  known = set(store.ids)
  missing = [ex.id for ex in bitext if ex.id not in known]
  if missing:
    raise UserError(f"{root}: the teacher store lacks {len(missing)} training ids (first: {missing[0]!r}); "
                    "it was built for other bitext: rerun precompute-teacher into a new store")
  store_rows = np.asarray([store.index_of(ex.id) for ex in bitext], np.int64)
  ot_tokens = config.ot.get("tokens", "all")
  student_skip = 1 + _prefix_length(tokenizer, prefix)
  teacher_skip = 1 + _prefix_length(teacher_tokenizer, config.teacher.query_prefix)

  def load_rows(indices: np.ndarray) -> dict[str, np.ndarray]:
    tokens, mask = store.lookup_batch(store_rows[indices])
    batch = {"student_ids": student_ids[indices], "student_mask": student_mask[indices],
             "teacher_tokens": tokens.astype(np.float16), "teacher_mask": mask.astype(np.int32)}
    if ot_tokens == "content":
      batch["student_ot_mask"] = content_mask(batch["student_mask"], student_skip)
      batch["teacher_ot_mask"] = content_mask(batch["teacher_mask"], teacher_skip)
    return batch

  ranks = {k: v.ndim for k, v in load_rows(np.arange(1)).items()}
  return TrainingData(load_rows, len(bitext), int(store.manifest.dim), ranks,
                      f"{config.data.bitext} ({len(bitext)} pairs) + teacher store {root}", tokenizer=tokenizer)
