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
from optical_jax.data import encoding, pipeline, teacher_store
from optical_jax.data.report import DataReport
from optical_jax.data.training_data import TrainingData
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")


def student_tokenizer(config: ml_collections.ConfigDict):
  if config.student.init == "random":
    return encoding.byte_tokenizer()
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(config.student.init))


def prefix_length(tokenizer, prefix: str) -> int:
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


def document_frequency(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """[V] number of rows (sentences) in which each id occurs at a real position."""
  ids = np.where(mask > 0, ids, -1)
  ordered = np.sort(ids, axis=1)
  first = np.ones(ordered.shape, bool)
  first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
  return np.bincount(ordered[first & (ordered >= 0)], minlength=vocab_size)


def idf_weights(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[N, L] float32 BM25 IDF of each real token over the N rows (0 on pads): losses.idf_weights in numpy.

  log(1 + (N - df + 0.5) / (df + 0.5)) is > 0 for every token, so a token in every sentence keeps some mass.
  """
  df = document_frequency(ids, mask, int(ids.max(initial=0)) + 1)[ids].astype(np.float64)
  n = float(ids.shape[0])
  return np.where(mask > 0, np.log1p((n - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32)


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
  marginals = config.ot.get("marginals", "uniform")
  if marginals == "idf":
    # The store holds the teacher's real tokens in tokenizer order: the same tokenization gives their ids.
    teacher_ids, teacher_id_mask = teacher.tokenize([ex.target for ex in bitext], config.data.max_len_teacher,
                                                    prefix=config.teacher.query_prefix)
  del teacher  # Only its identity and tokenizer are needed: the teacher never runs while training.
  tokenizer = student_tokenizer(config)
  ls = config.data.max_len_student
  sources = [ex.source for ex in bitext]
  prefix = config.student.get("prefix", "")
  enc = tokenizer([prefix + s for s in sources], padding="max_length", truncation=True, max_length=ls,
                  return_token_type_ids=False, return_tensors="np")
  student_ids = enc["input_ids"].astype(np.int32)
  student_mask = enc["attention_mask"].astype(np.int32)
  english = {}
  if float(config.get("loss", {}).get("english_weight", 0.0)):
    # The English-side term runs the student on the English side too: tokenised like the teacher's input (same
    # prefix, the teacher's max length), but with the student's tokenizer. Never trimmed to a length bucket.
    enc_en = tokenizer([config.teacher.query_prefix + ex.target for ex in bitext], padding="max_length",
                       truncation=True, max_length=config.data.max_len_teacher, return_token_type_ids=False,
                       return_tensors="np")
    english = {"english_ids": enc_en["input_ids"].astype(np.int32),
               "english_mask": enc_en["attention_mask"].astype(np.int32)}
    english_skip = 1 + prefix_length(tokenizer, config.teacher.query_prefix)
  known = set(store.ids)
  missing = [ex.id for ex in bitext if ex.id not in known]
  if missing:
    raise UserError(f"{root}: the teacher store lacks {len(missing)} training ids (first: {missing[0]!r}); "
                    "it was built for other bitext: rerun precompute-teacher into a new store")
  store_rows = np.asarray([store.index_of(ex.id) for ex in bitext], np.int64)
  ot_tokens = config.ot.get("tokens", "all")
  student_skip = 1 + prefix_length(tokenizer, prefix)
  teacher_skip = 1 + prefix_length(teacher_tokenizer, config.teacher.query_prefix)
  weights = {}
  if marginals == "idf":
    # IDF over the training bitext, each side in its own vocabulary; the loss renormalises over the OT tokens.
    # ot.idf_power sharpens (> 1) or flattens (< 1) the weighting; 1 is plain IDF.
    power = float(config.ot.get("idf_power", 1.0))
    weights = {"student_weights": idf_weights(student_ids, student_mask) ** power,
               "teacher_weights": idf_weights(teacher_ids, teacher_id_mask) ** power}

  def load_rows(indices: np.ndarray) -> dict[str, np.ndarray]:
    tokens, mask = store.lookup_batch(store_rows[indices])
    batch = {"student_ids": student_ids[indices], "student_mask": student_mask[indices],
             "teacher_tokens": tokens.astype(np.float16), "teacher_mask": mask.astype(np.int32)}
    batch.update({key: table[indices] for key, table in english.items()})
    if ot_tokens == "content":
      batch["student_ot_mask"] = content_mask(batch["student_mask"], student_skip)
      batch["teacher_ot_mask"] = content_mask(batch["teacher_mask"], teacher_skip)
      if english:
        batch["english_ot_mask"] = content_mask(batch["english_mask"], english_skip)
    for key, table in weights.items():
      rows = table[indices]
      if key == "teacher_weights" and not np.array_equal(rows > 0, batch["teacher_mask"] > 0):
        raise UserError(f"{root}: stored teacher token counts differ from the teacher tokenizer's; rebuild the store")
      batch[key] = rows
    return batch

  ranks = {k: v.ndim for k, v in load_rows(np.arange(1)).items()}
  # The store keeps each example's real teacher token count, and its rows are zero-padded after them.
  return TrainingData(load_rows, len(bitext), int(store.manifest.dim), ranks,
                      f"{config.data.bitext} ({len(bitext)} pairs) + teacher store {root}", tokenizer=tokenizer,
                      student_lengths=pipeline.real_lengths(student_mask),
                      teacher_lengths=store.lengths[store_rows].astype(np.int32))
