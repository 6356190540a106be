"""Code-switching augmentation (`data.augment="code_switch"`): words of a training text swapped for their
dictionary translations, afresh at every step, then tokenised again.

Which text, by `data.augment_direction`:
- "to_english" (default): the student's input, the low-resource side. Each word the lexicon covers becomes one of
  its English translations with probability `data.augment_fraction`, so the student reads mixed sentences
  ("Hapo mwanzo God aliumba heaven na nchi") and is still pulled towards the teacher's tokens of the untouched
  English sentence. The teacher store is not touched: the teacher never sees augmented text.
- "to_source": the reverse, on the only English text the student reads: the English-side term's input
  (`loss.english_weight` / `loss.english_mse_weight` > 0), whose covered English words become source-language
  words (the lexicon inverted). The teacher's stored English stays the target.

Determinism: the replacements of an example at a step come from `np.random.default_rng([salt, seed, step,
example index])`, never from global state, so batch `step` is still a pure function of (seed, step): a resumed
run, or another process count, trains on exactly the same augmented batches. Rows loaded outside the training
stream (the dev set, hard-negative mining) are never augmented. Every covered word makes the same two draws
whether it is replaced or not, so the words replaced at a smaller fraction are among those replaced at a larger.

Length buckets: the batch's bucket is chosen from a per-example length table before its rows are loaded, so an
example's entry becomes the length of its longest possible augmentation (every covered word as its longest
translation, in tokens). Word-level tokenizers (SentencePiece, WordPiece, byte-level) tokenise words
independently, so no augmentation exceeds it; one that would (another tokenizer) keeps its original text.

The lexicon's coverage of the augmented side is logged and written to WORKDIR/augment_report.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Sequence

import ml_collections
import numpy as np

from optical_jax.data import lexicon as lexicon_lib
from optical_jax.data import pipeline, tokens
from optical_jax.data.teacher import target_prefix
from optical_jax.errors import UserError

log = logging.getLogger("optical_jax")

DIRECTIONS = ("to_english", "to_source")
REPORT = "augment_report.json"
_SALT = 0x636F6465  # "code": keeps these draws apart from the pipeline's other seeded streams


def example_rng(seed: int, step: int, index: int) -> np.random.Generator:
  """The generator of example `index`'s replacements at `step`: a pure function of (seed, step, index)."""
  return np.random.default_rng([_SALT, int(seed) % (1 << 64), int(step), int(index)])


def code_switch(text: str, lexicon: lexicon_lib.Lexicon, fraction: float, rng: np.random.Generator
                ) -> tuple[str, int]:
  """`text` with each word the lexicon covers replaced, with probability `fraction`, by one of its translations
  (uniformly drawn, capitalised like the word); punctuation and spacing kept. Returns (text, words replaced)."""
  out, last, replaced = [], 0, 0
  for start, end, word in lexicon_lib.words(text):
    options = lexicon.get(word)
    if not options:
      continue
    # Both draws happen for every covered word: one word's outcome never shifts the draws of the next.
    u, pick = rng.random(), int(rng.integers(len(options)))
    if u < fraction:
      out += [text[last:start], lexicon_lib.match_case(text[start:end], options[pick])]
      last, replaced = end, replaced + 1
  out.append(text[last:])
  return "".join(out), replaced


def tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """As store_join tokenises the training text (so an unchanged text gives its stored row exactly)."""
  enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_token_type_ids=False,
                  return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


class CodeSwitcher:
  """Augmented token rows of one input side ("student": the source text; "english": the English-side input)."""

  def __init__(self, texts: Sequence[str], lexicon: lexicon_lib.Lexicon, tokenizer, *, side: str, prefix: str,
               max_len: int, ot_skip: int, fraction: float, seed: int, idf_power: float | None = None):
    self.texts, self.lexicon, self.tokenizer = list(texts), lexicon, tokenizer
    self.side, self.prefix, self.max_len, self.ot_skip = side, prefix, max_len, ot_skip
    self.fraction, self.seed = float(fraction), int(seed)
    self._lock = threading.Lock()
    self._piece_counts: dict[str, int] = {}
    self.fallbacks = 0  # augmentations longer than their example's bound, which kept the original text
    ids, mask = tokenize(tokenizer, [prefix + t for t in self.texts], max_len)
    self.lengths = pipeline.real_lengths(mask)
    self._idf = None
    if idf_power is not None:
      # The document frequencies of the unaugmented text, as store_join's IDF marginals: an English piece the
      # source text never holds gets the largest weight.
      vocab = max(len(tokenizer), int(ids.max(initial=0)) + 1)
      self._idf = (tokens.document_frequency(ids, mask, vocab).astype(np.float64), float(len(ids)), idf_power)
    self.bound = np.maximum(self.lengths, self._bound_lengths())

  def _pieces(self, word: str) -> int:
    if word not in self._piece_counts:
      self._piece_counts[word] = len(self.tokenizer(word, add_special_tokens=False)["input_ids"])
    return self._piece_counts[word]

  def _bound_lengths(self) -> np.ndarray:
    """[N] real length of every text with each covered word as its longest option (itself included), in tokens."""
    bound = self.lengths.copy()
    rows, texts = [], []
    for i, text in enumerate(self.texts):
      out, last = [], 0
      for start, end, word in lexicon_lib.words(text):
        options = self.lexicon.get(word)
        if options:
          original = text[start:end]
          longest = max([original, *(lexicon_lib.match_case(original, o) for o in options)], key=self._pieces)
          out += [text[last:start], longest]
          last = end
      if out:
        rows.append(i)
        texts.append("".join(out) + text[last:])
    for start in range(0, len(texts), 4096):
      _, mask = tokenize(self.tokenizer, [self.prefix + t for t in texts[start:start + 4096]], self.max_len)
      bound[rows[start:start + 4096]] = pipeline.real_lengths(mask)
    return bound

  def idf_weights(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    df_table, n, power = self._idf
    df = np.where(ids < len(df_table), df_table[np.minimum(ids, len(df_table) - 1)], 0.0)
    return np.where(mask > 0, np.log1p((n - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32) ** power

  def augment(self, rows: dict[str, np.ndarray], indices: np.ndarray, step: int) -> dict[str, np.ndarray]:
    """`rows` (a batch of examples `indices`) with this side's keys rebuilt for every example changed at `step`."""
    positions, texts = [], []
    for pos, index in enumerate(np.asarray(indices).tolist()):
      text, replaced = code_switch(self.texts[index], self.lexicon, self.fraction,
                                   example_rng(self.seed, step, index))
      if replaced:
        positions.append(pos)
        texts.append(self.prefix + text)
    if not positions:
      return rows
    # Prefetch threads load batches concurrently, and a fast tokenizer's call resets its padding state.
    with self._lock:
      ids, mask = tokenize(self.tokenizer, texts, self.max_len)
      fits = pipeline.real_lengths(mask) <= self.bound[np.asarray(indices)[positions]]
      self.fallbacks += int(np.sum(~fits))
    positions, ids, mask = np.asarray(positions)[fits], ids[fits], mask[fits]
    new = {f"{self.side}_ids": ids, f"{self.side}_mask": mask,
           f"{self.side}_ot_mask": tokens.content_mask(mask, self.ot_skip)}
    if self.side == "student" and self._idf is not None:
      new["student_weights"] = self.idf_weights(ids, mask)
    out = dict(rows)
    for key, value in new.items():
      if key in out:
        out[key] = out[key].copy()  # a loader may hand out views of its tables
        out[key][positions] = value.astype(out[key].dtype)
    return out


def load_lexicon(config: ml_collections.ConfigDict) -> lexicon_lib.Lexicon | None:
  """The augmentation's lexicon (None when `data.augment` is off); read first, so a bad path stops the run at once."""
  if not config.data.augment:
    return None
  lexicon = lexicon_lib.load(config.data.augment_lexicon)
  if not lexicon:
    raise UserError(f"data.augment_lexicon={config.data.augment_lexicon!r}: the lexicon has no entries")
  return lexicon


def apply(config: ml_collections.ConfigDict, workdir, data, lexicon: lexicon_lib.Lexicon | None):
  """`data` (a TrainingData of the real bitext, in example order) with code-switched rows in the training stream."""
  if lexicon is None:
    return data
  import jax  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from optical_jax.data.bitext import load_training_sources  # pylint: disable=g-import-not-at-top
  d = config.data
  if data.tokenizer is None:
    raise UserError("data.augment needs text: data.bitext='synthetic' has none")
  examples = load_training_sources(config, workdir).examples
  if len(examples) != data.num_examples:
    raise ValueError(f"{len(examples)} bitext examples for {data.num_examples} training rows")
  english = d.augment_direction == "to_source"
  if english:
    if "english_ids" not in data.spec:
      raise UserError("data.augment_direction='to_source' augments the English-side term's input: set "
                      "loss.english_weight or loss.english_mse_weight > 0")
    side_lexicon, texts = lexicon_lib.invert(lexicon), [ex.target for ex in examples]
    prefix, max_len = target_prefix(config), d.max_len_teacher
  else:
    side_lexicon, texts = lexicon, [ex.source for ex in examples]
    prefix, max_len = config.student.prefix, d.max_len_student
  idf = config.ot.idf_power if (not english and "student_weights" in data.spec) else None
  switcher = CodeSwitcher(texts, side_lexicon, data.tokenizer, side="english" if english else "student",
                          prefix=prefix, max_len=max_len, ot_skip=1 + tokens.prefix_length(data.tokenizer, prefix),
                          fraction=d.augment_fraction, seed=config.seed, idf_power=idf)
  table = data.english_lengths if english else data.student_lengths
  if table is not None and not np.array_equal(switcher.lengths, table):
    raise ValueError("the re-read bitext does not tokenise to the training rows' lengths")
  report = {"augment": d.augment, "direction": d.augment_direction, "fraction": d.augment_fraction,
            "lexicon": d.augment_lexicon, "side": "english-side input" if english else "source",
            "coverage": lexicon_lib.coverage(side_lexicon, texts),
            "examples_with_a_covered_word": sum(
                1 for t in texts if any(side_lexicon.get(w) for _, _, w in lexicon_lib.words(t)))}
  cov = report["coverage"]
  log.info("code-switching (%s, fraction %g): lexicon %s covers %.1f%% of the %s words (%.1f%% of %d types)",
           d.augment_direction, d.augment_fraction, d.augment_lexicon, 100 * cov["token_coverage"], report["side"],
           100 * cov["type_coverage"], cov["types"])
  if jax.process_index() == 0:
    with contextlib.suppress(OSError):  # a report, not a result: an unwritable one must not stop training
      (epath.Path(workdir) / REPORT).write_text(json.dumps(report, indent=1) + "\n")

  return wrap(data, switcher, description=(
      f"code-switched {d.augment_direction} (fraction {d.augment_fraction:g}, lexicon {d.augment_lexicon}, "
      f"{100 * cov['token_coverage']:.1f}% of words covered)"))


def wrap(data, switcher: CodeSwitcher, description: str = "code-switched"):
  """`data` whose rows, when loaded for a training step, are code-switched by `switcher`; with its length bounds."""
  load_rows = data.load_rows

  def augmented_rows(indices):
    rows = load_rows(indices)
    step = pipeline.loading_step()
    return rows if step is None else switcher.augment(rows, np.asarray(indices), step)

  lengths = {f"{switcher.side}_lengths": switcher.bound}
  return dataclasses.replace(data, load_rows=augmented_rows, **lengths,
                             description=f"{data.description}; {description}")
