"""Bilingual word lexicons for code-switching augmentation (data/augment.py): read, fetched, induced, measured.

A lexicon maps a low-resource (source-language) word to its English translations, best first. It comes from
- a TSV file, one pair a line: `source_word<TAB>english[<TAB>score]` (several lines per word give several
  translations, ordered by score when there is one; `#` starts a comment line);
- `freedict:swh-eng`: the FreeDict Swahili-English dictionary (GPL-2+), from Debian's `dict-freedict-swh-eng`
  package, downloaded once from deb.debian.org into the cache ($OPTICAL_JAX_CACHE or ~/.cache/optical_jax/freedict),
  checked against the sha256 pinned here (Debian's signed Packages index) and read with the standard library only
  (optical_jax.data.debian: ar + tar.xz; dictd here). `freedict:eng-swh` is the English-Swahili one, inverted. No Bengali FreeDict dictionary
  ships in Debian (bookworm has eng-hin, not Bengali): a Bengali lexicon must be a TSV, e.g. an induced one;
- the OT plans of a trained student (`induce_from_workdir`): per source word, the English word of the teacher's
  sentence that receives most of its plan mass, kept when that share and the pair's count pass thresholds.
Several specs, separated by `,` or `+`, are merged (earlier specs' translations first).

Words are whitespace-separated, with leading/trailing punctuation and symbols stripped (Unicode categories P*, S*:
Bengali vowel signs are marks and stay), NFC-normalised and lower-cased; `words()` is the one rule shared by
lookup, coverage, augmentation and induction. Multi-word headwords are kept but never match a single word.

No machine-translation model reaches this machine (only PyPI and Debian do), so there is no back-translation
here. `word_by_word` is a STAND-IN for it: a lexicon lookup per word, with no reordering, morphology or sense
choice. Pairs it writes (`write_word_by_word_bitext`) are labelled synthetic and enter training as a flagged
bitext source (`data.bitext=...,FILE.tsv[synthetic]@W`), so a run with them can be compared with one without.

  optical-jax lexicon --coverage freedict:swh-eng --config configs/demo_sw.py --workdir runs/sw
  optical-jax lexicon --workdir runs/sw --out induced_sw.tsv --pairs 2000 --min-mass 0.3 --min-count 3 \
      [--source tfds:bible/sw_en]
  optical-jax lexicon --word-by-word freedict:eng-swh --direction to_source --config CFG --out bt_sw.tsv
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from optical_jax import assets
from optical_jax.data import debian
from optical_jax.errors import UserError

Lexicon = dict[str, list[str]]  # normalised source word -> English translations, best first


@dataclasses.dataclass(frozen=True)
class FreeDictPackage:
  """One pinned Debian package of a FreeDict dictionary (sha256 and size from Debian's Packages index)."""
  package: str
  version: str
  sha256: str
  size: int
  invert: bool  # True: the dictionary goes English -> source, and is inverted to source -> English

  @property
  def deb(self) -> debian.DebianPackage:
    return debian.DebianPackage(self.package, self.version, self.sha256, self.size, "pool/main/f/freedict")

  @property
  def url(self) -> str:
    return self.deb.url

  @property
  def filename(self) -> str:
    return self.deb.filename


# Debian bookworm. The apt Packages index that lists these is signed; the .deb itself is fetched over plain HTTP,
# so the pinned sha256 is what makes it trustworthy.
FREEDICT: dict[str, FreeDictPackage] = {
    "swh-eng": FreeDictPackage("dict-freedict-swh-eng", "2022.04.21-1",
                               "e888c1740ef6ef790c348bb1f918ad9cb5ed680792fbcc43bc9d97b1b3966833", 86792, False),
    "eng-swh": FreeDictPackage("dict-freedict-eng-swh", "2022.04.21-1",
                               "ad003a94afad9b5b70951d287f7a2d28f8c27b9d9108d999f682eca85d26f0d7", 48996, True),
}
FREEDICT_PREFIX = "freedict:"
FREEDICT_LICENCE = "FreeDict, GPL-2.0-or-later (Debian package dict-freedict-*)"


# ---------------------------------------------------------------------------------------------------------------
# Words.

def _is_edge(ch: str) -> bool:
  return unicodedata.category(ch)[0] in "PS"


def normalize(word: str) -> str:
  return unicodedata.normalize("NFC", word).lower()


def words(text: str) -> Iterator[tuple[int, int, str]]:
  """(start, end, normalised word) of every word of `text`; [start, end) spans the word without its punctuation."""
  for m in re.finditer(r"\S+", text):
    start, end = m.start(), m.end()
    while start < end and _is_edge(text[start]):
      start += 1
    while end > start and _is_edge(text[end - 1]):
      end -= 1
    if start < end:
      yield start, end, normalize(text[start:end])


def match_case(original: str, replacement: str) -> str:
  """The replacement capitalised like the word it replaces (sentence-initial words, names)."""
  if original[:1].isupper() and replacement[:1].islower():
    return replacement[:1].upper() + replacement[1:]
  return replacement


# ---------------------------------------------------------------------------------------------------------------
# TSV files.

def read_tsv(path: str | os.PathLike) -> Lexicon:
  """`source<TAB>english[<TAB>score]` lines; a word's translations in file order, or by decreasing score."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise UserError(f"{path}: no such lexicon file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read lexicon: {e}") from None
  scored: dict[str, list[tuple[float, int, str]]] = collections.defaultdict(list)
  for lineno, line in enumerate(text.splitlines(), start=1):
    if not line.strip() or line.startswith("#"):
      continue
    fields = line.split("\t")
    if lineno == 1 and fields[0].strip().lower() in ("source", "src"):
      continue  # a header
    if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
      raise UserError(f"{path}:{lineno}: expected source<TAB>english[<TAB>score], got {len(fields)} column(s)")
    score = 0.0
    if len(fields) == 3:
      try:
        score = float(fields[2])
      except ValueError:
        raise UserError(f"{path}:{lineno}: score {fields[2]!r} is not a number") from None
    scored[normalize(fields[0].strip())].append((-score, lineno, fields[1].strip()))
  return {word: _dedupe(t for _, _, t in sorted(items)) for word, items in scored.items()}


def write_tsv(lexicon: Lexicon, path: str | os.PathLike, scores: dict[tuple[str, str], float] | None = None,
              header: str = "") -> None:
  """One line per (word, translation), words sorted; `scores` adds a third column; `header`: a `#` comment."""
  lines = [f"# {line}" for line in header.splitlines()]
  for word in sorted(lexicon):
    for target in lexicon[word]:
      score = "" if scores is None else f"\t{scores.get((word, target), 0.0):.4g}"
      lines.append(f"{word}\t{target}{score}")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _dedupe(items: Iterable[str]) -> list[str]:
  return list(dict.fromkeys(i for i in items if i))


def invert(lexicon: Lexicon) -> Lexicon:
  """English -> source translations of a source -> English lexicon (or the reverse), in first-seen order."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  for word, targets in lexicon.items():
    for target in targets:
      out[normalize(target)].append(word)
  return {word: _dedupe(sources) for word, sources in out.items()}


def merge(lexicons: Sequence[Lexicon]) -> Lexicon:
  out: dict[str, list[str]] = {}
  for lexicon in lexicons:
    for word, targets in lexicon.items():
      out[word] = _dedupe([*out.get(word, []), *targets])
  return out


# ---------------------------------------------------------------------------------------------------------------
# FreeDict: Debian .deb (debian.py) -> usr/share/dictd/freedict-NAME.{index,dict.dz} -> entries.

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(text: str) -> int:
  n = 0
  for ch in text:
    n = n * 64 + _B64[ch]
  return n


_SENSE_NUMBER = re.compile(r"^\d+\.$")
_PLURAL_OF = re.compile(r"Plural of \{[^}]*\}:\s*(.*)")
_PLACEHOLDERS = re.compile(r"\b(sth|sb|smb|smth|so\.|sg\.|pl\.)(?=\W|$)")


def dictd_translations(entry: str) -> list[str]:
  """The first sense's translations of one dictd entry, lower-cased, without notes, parentheses or `sth`.

  An entry is a headword line (`word /ipa/ <pos> ...`), then senses: `N.` lines start one; unindented lines are its
  translations (`;`-continued); indented lines are notes, except FreeDict's ` Plural of {x}: translation`.
  """
  senses: list[list[str]] = [[]]
  for line in entry.split("\n")[1:]:
    stripped = line.strip()
    if _SENSE_NUMBER.match(stripped):
      if senses[-1]:
        senses.append([])
    elif line.startswith((" ", "\t")):
      plural = _PLURAL_OF.search(stripped)
      if plural:  # "1. eyelid 2. eyelash": its first sense
        senses[-1].append(re.split(r"\s*\d+\.\s+", " " + plural.group(1))[1] if re.match(r"1\.\s", plural.group(1))
                          else plural.group(1))
    elif stripped:
      senses[-1].append(stripped)
  first = next((s for s in senses if s), [])
  out = []
  for item in re.split(r"[,;]", " ; ".join(first)):
    item = re.sub(r"\([^)]*\)|\[[^\]]*\]|\{|\}", " ", item)
    item = _PLACEHOLDERS.sub(" ", item.lower())
    item = " ".join(item.strip(" .?!:").split())
    if item:
      out.append(item)
  return _dedupe(out)


def parse_dictd(index: str, dict_data: bytes) -> Lexicon:
  """headword -> first-sense translations of a dictd database (index text, uncompressed .dict bytes)."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  for lineno, line in enumerate(index.splitlines(), start=1):
    fields = line.split("\t")
    if len(fields) != 3:
      raise ValueError(f"index line {lineno}: expected headword<TAB>offset<TAB>length")
    headword, offset, length = fields
    if headword.startswith(("00database", "00-database")) or not headword.strip():
      continue  # dictd's own metadata entries
    start = _b64_number(offset)
    entry = dict_data[start:start + _b64_number(length)].decode("utf-8")
    out[normalize(headword.strip())].extend(dictd_translations(entry))
  return {word: _dedupe(t) for word, t in out.items() if t}


def parse_freedict_deb(deb: bytes, name: str) -> Lexicon:
  files = debian.deb_files(deb, (f"freedict-{name}.index", f"freedict-{name}.dict.dz", f"freedict-{name}.dict"))
  index = next((v for k, v in files.items() if k.endswith(".index")), None)
  data = next((v for k, v in files.items() if k.endswith((".dict.dz", ".dict"))), None)
  if index is None or data is None:
    raise ValueError(f"the .deb holds no freedict-{name}.index / .dict.dz (files: {sorted(files)})")
  if data[:2] == b"\x1f\x8b":  # dictzip is gzip with random-access chunk info: gzip reads it whole
    data = gzip.decompress(data)
  return parse_dictd(index.decode("utf-8"), data)


def fetch_freedict(name: str, cache: str | os.PathLike | None = None, *, timeout: float = 60.0) -> pathlib.Path:
  """The pinned .deb of `freedict:NAME` in the cache, downloaded (and sha256-checked) if missing."""
  if name not in FREEDICT:
    raise UserError(f"{FREEDICT_PREFIX}{name}: unknown FreeDict dictionary; known: "
                    f"{', '.join(FREEDICT_PREFIX + n for n in FREEDICT)} (no Bengali one ships in Debian: "
                    "give a TSV lexicon)")
  root = pathlib.Path(cache) if cache else assets.default_cache_dir() / "freedict"
  return debian.fetch(FREEDICT[name].deb, root, label=f"{FREEDICT_PREFIX}{name}", timeout=timeout)


def freedict(name: str, cache: str | os.PathLike | None = None) -> Lexicon:
  """`freedict:NAME` as a source -> English lexicon (English -> source dictionaries inverted)."""
  path = fetch_freedict(name, cache)
  lexicon = parse_freedict_deb(path.read_bytes(), name)
  return invert(lexicon) if FREEDICT[name].invert else lexicon


def load(spec: str, cache: str | os.PathLike | None = None) -> Lexicon:
  """`freedict:NAME`s and TSV paths separated by `,` or `+`, merged in order."""
  parts = [p.strip() for p in re.split(r"[,+]", str(spec)) if p.strip()]
  if not parts:
    raise UserError("no lexicon given: use a TSV path or freedict:swh-eng")
  return merge([freedict(p[len(FREEDICT_PREFIX):], cache) if p.startswith(FREEDICT_PREFIX) else read_tsv(p)
                for p in parts])


# ---------------------------------------------------------------------------------------------------------------
# Coverage, and the word-by-word stand-in for MT.

def coverage(lexicon: Lexicon, texts: Iterable[str]) -> dict[str, float | int]:
  """How much of `texts` the lexicon covers: word types and running words (tokens) with an entry."""
  counts: collections.Counter = collections.Counter()
  for text in texts:
    counts.update(w for _, _, w in words(text))
  covered = {w: n for w, n in counts.items() if lexicon.get(w)}
  tokens, covered_tokens = sum(counts.values()), sum(covered.values())
  return {"types": len(counts), "tokens": tokens, "covered_types": len(covered), "covered_tokens": covered_tokens,
          "type_coverage": len(covered) / max(len(counts), 1), "token_coverage": covered_tokens / max(tokens, 1),
          "entries": len(lexicon)}


def word_by_word(text: str, lexicon: Lexicon) -> tuple[str, int]:
  """STAND-IN for machine translation (no MT model reaches this machine): every word with an entry replaced by
  its first translation, the rest left as they are, in the original order. Returns (text, words replaced)."""
  out, last, replaced = [], 0, 0
  for start, end, word in words(text):
    options = lexicon.get(word)
    if options:
      out += [text[last:start], match_case(text[start:end], options[0])]
      last, replaced = end, replaced + 1
  out.append(text[last:])
  return "".join(out), replaced


def write_word_by_word_bitext(examples: Iterable, lexicon: Lexicon, out: str | os.PathLike, *,
                              direction: str = "to_source", min_replaced: float = 0.5) -> dict[str, int]:
  """Synthetic pairs by the word-by-word STAND-IN for MT, as an `id<TAB>source<TAB>target` TSV.

  direction "to_source" (back-translation's shape): the English side translated into the source language (the
  lexicon inverted), kept as the synthetic source of a pair whose target is the real English; "to_english": the
  source side translated, kept as a synthetic English target. Pairs where less than `min_replaced` of the words
  had an entry are dropped (mostly untranslated). Ids get a `wbw:` prefix so they never clash with real ones.
  """
  if direction not in ("to_source", "to_english"):
    raise UserError(f"direction must be to_source or to_english, got {direction!r}")
  table = invert(lexicon) if direction == "to_source" else lexicon
  kept = dropped = 0
  lines = ["id\tsource\ttarget"]
  for ex in examples:
    text = ex.target if direction == "to_source" else ex.source
    translated, replaced = word_by_word(text, table)
    n = sum(1 for _ in words(text))
    if not n or replaced < min_replaced * n:
      dropped += 1
      continue
    clean = lambda s: " ".join(s.split())  # a tab or newline would break the TSV
    source, target = (translated, ex.target) if direction == "to_source" else (ex.source, translated)
    lines.append(f"wbw:{ex.id}\t{clean(source)}\t{clean(target)}")
    kept += 1
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return {"written": kept, "dropped": dropped}


# ---------------------------------------------------------------------------------------------------------------
# Induction from OT plans.

def token_words(text: str, offsets: Sequence[tuple[int, int]], shift: int = 0) -> tuple[np.ndarray, list[str]]:
  """([L] word index of every token, -1 for special/prefix tokens and punctuation; the words).

  `offsets`: the tokenizer's character offsets into `prefix + text`; `shift` = len(prefix).
  """
  spans = list(words(text))
  owner = np.full(len(text) + 1, -1, np.int64)
  for i, (start, end, _) in enumerate(spans):
    owner[start:end] = i
  out = np.full(len(offsets), -1, np.int64)
  for t, (start, end) in enumerate(offsets):
    start, end = start - shift, end - shift
    if end <= start or end <= 0 or start >= len(text):
      continue
    hit = owner[max(start, 0):min(end, len(text))]
    hit = hit[hit >= 0]
    if hit.size:
      out[t] = hit[0]
  return out, [w for _, _, w in spans]


def word_alignments(plan: np.ndarray, src_words: np.ndarray, tgt_words: np.ndarray, n_src: int, n_tgt: int
                    ) -> list[tuple[int, int, float]]:
  """(source word, its argmax English word, share of its plan mass that goes there) for every source word.

  Pieces are summed into words on both sides; tokens without a word (specials, prefix, punctuation) are dropped,
  so the share is over the plan mass that reaches words.
  """
  if not n_src or not n_tgt:
    return []
  rows = np.zeros((len(src_words), n_src))
  rows[np.flatnonzero(src_words >= 0), src_words[src_words >= 0]] = 1.0
  cols = np.zeros((len(tgt_words), n_tgt))
  cols[np.flatnonzero(tgt_words >= 0), tgt_words[tgt_words >= 0]] = 1.0
  mass = rows.T @ np.asarray(plan, np.float64)[:len(src_words), :len(tgt_words)] @ cols  # [n_src, n_tgt]
  total = mass.sum(axis=1)
  best = mass.argmax(axis=1)
  return [(i, int(best[i]), float(mass[i, best[i]] / total[i])) for i in range(n_src) if total[i] > 0]


class AlignmentCounts:
  """Counts of (source word, argmax English word) alignments over many sentence pairs."""

  def __init__(self):
    self.word = collections.Counter()         # occurrences of each source word (with plan mass)
    self.pair = collections.Counter()         # occurrences aligned to each English word
    self.share = collections.defaultdict(float)  # summed shares of each pair

  def add(self, src: Sequence[str], tgt: Sequence[str], alignments: Iterable[tuple[int, int, float]]) -> None:
    for i, j, share in alignments:
      self.word[src[i]] += 1
      self.pair[src[i], tgt[j]] += 1
      self.share[src[i], tgt[j]] += share

  def lexicon(self, *, min_mass: float, min_count: int, max_translations: int = 3
              ) -> tuple[Lexicon, dict[tuple[str, str], float]]:
    """Pairs seen >= min_count times with a mean plan share >= min_mass; score = P(English word | source word)."""
    scores = {}
    for (s, t), n in self.pair.items():
      if n >= min_count and self.share[s, t] / n >= min_mass:
        scores[s, t] = n / self.word[s]
    by_word = collections.defaultdict(list)
    for (s, t), score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])):
      if len(by_word[s]) < max_translations:
        by_word[s].append(t)
    kept = {(s, t): scores[s, t] for s, ts in by_word.items() for t in ts}
    return dict(by_word), kept


@functools.lru_cache(maxsize=4)
def _plan_solver(iterations: int, lse_mode: bool, tau_a: float, tau_b: float):
  """The loss's Sinkhorn solve, vmapped and jitted once per option set (a fresh lambda per batch would retrace)."""
  import jax  # pylint: disable=g-import-not-at-top
  from optical_jax import losses  # pylint: disable=g-import-not-at-top
  solve = functools.partial(losses._sinkhorn_plan, iterations=iterations, threshold=None,  # pylint: disable=protected-access
                            grad="envelope", lse_mode=lse_mode, tau_a=tau_a, tau_b=tau_b)
  return jax.jit(jax.vmap(solve))


def ot_plans(student_tokens, student_mask, teacher_tokens, teacher_mask, ot, *, student_weights=None,
             teacher_weights=None) -> np.ndarray:
  """[B, Ls, Lt] the plans the OT loss transports along, for the config's `ot` section (float32, numpy).

  The loss returns no plan, so this repeats its plan computation with the same helpers (cost, marginals,
  epsilon, solver): the plan of `losses.ot_alignment_loss`, forward only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from optical_jax import losses  # pylint: disable=g-import-not-at-top
  from optical_jax import ot_options  # pylint: disable=g-import-not-at-top

  opts = ot_options.from_config(ot)
  s_mask, t_mask = jnp.asarray(student_mask) != 0, jnp.asarray(teacher_mask) != 0
  student_tokens, teacher_tokens = jnp.asarray(student_tokens), jnp.asarray(teacher_tokens)
  if opts["plan_centering"]:
    student_tokens = losses._center(student_tokens, s_mask)  # pylint: disable=protected-access
    teacher_tokens = losses._center(teacher_tokens, t_mask)  # pylint: disable=protected-access
  cost = losses.cosine_cost(student_tokens, s_mask, teacher_tokens, t_mask)
  pair_mask = s_mask[:, :, None] & t_mask[:, None, :]
  a = losses._marginal(s_mask, student_weights, cost.dtype)  # pylint: disable=protected-access
  b = losses._marginal(t_mask, teacher_weights, cost.dtype)  # pylint: disable=protected-access
  if opts["relative_epsilon"]:
    mode = opts["relative_epsilon"]
    scale = jax.vmap(lambda c, m: losses._cost_scale(c, m, mode))(cost, pair_mask)  # pylint: disable=protected-access
    eps = jnp.maximum(opts["epsilon"] * scale, 1e-6).astype(cost.dtype)
  else:
    eps = jnp.full(cost.shape[:1], opts["epsilon"], cost.dtype)
  solve = _plan_solver(int(opts["iterations"]), bool(opts["lse_mode"]), float(opts["tau_student"]),
                       float(opts["tau_teacher"]))
  return np.asarray(jnp.where(pair_mask, solve(cost, pair_mask, a, b, eps), 0.0), np.float32)


def induce_from_workdir(workdir, encoder, config, *, pairs: int = 2000, min_mass: float = 0.3, min_count: int = 3,
                        max_translations: int = 3, batch_size: int = 32, seed: int = 0, source: str = ""
                        ) -> tuple[Lexicon, dict[tuple[str, str], float], dict]:
  """A lexicon from the OT plans of a trained student (`encoder`, e.g. export.load_student) on its training pairs.

  `pairs` training pairs (a seeded sample) are encoded by the student and aligned with their stored teacher tokens
  under the config's OT settings (ot.tokens, ot.marginals: IDF over the sample, epsilon, iterations); every source
  word votes for the English word that receives most of its plan mass. `source`: one of the config's bitext
  sources (its spec), to align only its pairs (one language of a multilingual student). Read-only: nothing is
  written to `workdir`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from optical_jax.data import teacher_store, tokens  # pylint: disable=g-import-not-at-top
  from optical_jax.data.bitext import load_training_sources, teacher_keys  # pylint: disable=g-import-not-at-top
  from optical_jax.data.teacher import load_teacher, store_identity, store_root, target_prefix  # pylint: disable=g-import-not-at-top

  workdir = epath.Path(workdir)
  if config.data.bitext == "synthetic":
    raise UserError(f"{workdir}: trained on SYNTHETIC token ids: there are no words to align")
  training = load_training_sources(config, workdir)
  examples = training.examples
  candidates = np.arange(len(examples))
  if source:
    specs = [s.spec for s in training.sources]
    if source not in specs:
      raise UserError(f"--source {source!r} is not one of the run's bitext sources: {', '.join(specs)}")
    k = specs.index(source)
    candidates = candidates[sum(training.sizes[:k]):sum(training.sizes[:k + 1])]
  teacher = load_teacher(config)
  root = store_root(config, workdir)
  if not (root / teacher_store.MANIFEST).exists():
    raise UserError(f"{root}: no teacher store (the student's training pairs are aligned with their stored tokens)")
  store = teacher_store.TeacherStore.open(root, expect=store_identity(config, teacher), verify=False)
  picked = np.sort(np.random.default_rng([seed, 3]).permutation(candidates)[:pairs])
  picked_examples = [examples[int(i)] for i in picked]
  keys = teacher_keys(examples)
  store_rows = np.asarray([store.index_of(keys[int(i)]) for i in picked], np.int64)

  s_prefix, t_prefix = config.student.prefix, target_prefix(config)
  s_len, t_len = config.data.max_len_student, config.data.max_len_teacher
  tokenize = lambda tok, texts, n: tok(texts, padding="max_length", truncation=True, max_length=n,
                                       return_token_type_ids=False, return_offsets_mapping=True, return_tensors="np")
  s_enc = tokenize(encoder.tokenizer, [s_prefix + ex.source for ex in picked_examples], s_len)
  t_enc = tokenize(teacher.tokenizer, [t_prefix + ex.target for ex in picked_examples], t_len)
  s_ids, s_mask = s_enc["input_ids"].astype(np.int32), s_enc["attention_mask"].astype(np.int32)
  t_mask_tok = t_enc["attention_mask"].astype(np.int32)
  content = config.ot.tokens == "content"
  s_ot = tokens.content_mask(s_mask, 1 + tokens.prefix_length(encoder.tokenizer, s_prefix)) if content else s_mask
  t_skip = 1 + tokens.prefix_length(teacher.tokenizer, t_prefix)
  s_weights = t_weights = None
  if config.ot.marginals == "idf":
    s_weights = tokens.idf_weights(s_ids, s_mask) ** config.ot.idf_power
    t_weights = tokens.idf_weights(t_enc["input_ids"].astype(np.int32), t_mask_tok) ** config.ot.idf_power

  apply = jax.jit(lambda params, ids, mask: encoder.module.apply({"params": params}, ids, mask, head=True))
  counts, mismatched = AlignmentCounts(), 0
  for start in range(0, len(picked), batch_size):
    sl = slice(start, start + batch_size)
    n = len(picked[sl])
    pad = batch_size - n  # one compiled shape
    padded = lambda x: np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    student = np.asarray(apply(encoder.params, padded(s_ids[sl]), padded(s_mask[sl])), np.float32)[:n]
    stored, stored_mask = store.lookup_batch(store_rows[sl], dtype=np.float32)
    # A stored row whose token count differs from this tokenization cannot be mapped to words: left out.
    same = np.all(stored_mask == t_mask_tok[sl], axis=1)  # the store's max_len is the teacher's (identity)
    mismatched += int(np.sum(~same))
    t_ot = tokens.content_mask(stored_mask, t_skip) if content else stored_mask
    plans = ot_plans(student, s_ot[sl], stored, t_ot, config.ot,
                     student_weights=None if s_weights is None else s_weights[sl],
                     teacher_weights=None if t_weights is None else t_weights[sl] * stored_mask)
    for k in np.flatnonzero(same):
      ex = picked_examples[start + k]
      src_tok, src = token_words(ex.source, s_enc["offset_mapping"][start + k], len(s_prefix))
      tgt_tok, tgt = token_words(ex.target, t_enc["offset_mapping"][start + k], len(t_prefix))
      counts.add(src, tgt, word_alignments(plans[k], src_tok, tgt_tok, len(src), len(tgt)))
  lexicon, scores = counts.lexicon(min_mass=min_mass, min_count=min_count, max_translations=max_translations)
  stats = {"pairs": len(picked), "source_words_aligned": sum(counts.word.values()),
           "distinct_pairs": len(counts.pair), "entries": len(lexicon), "translations": len(scores),
           "store_mismatches": mismatched}
  return lexicon, scores, stats


# ---------------------------------------------------------------------------------------------------------------
# `optical-jax lexicon`.

def command(args, config, load_student) -> dict:
  """The `lexicon` subcommand (see the module docstring). `load_student(workdir)` -> the trained encoder."""
  from optical_jax.data.bitext import load_training_sources  # pylint: disable=g-import-not-at-top
  modes = [m for m in ("coverage", "word_by_word") if getattr(args, m)]
  if len(modes) > 1:
    raise UserError("give one of --coverage, --word-by-word, or --workdir with --out (induce)")
  if modes:
    if config is None:
      raise UserError(f"--{modes[0].replace('_', '-')} reads the config's training bitext: pass --config")
    if config.data.bitext == "synthetic":
      raise UserError("data.bitext='synthetic' has no words")
    if any(s.strip().startswith("tfds:") for s in config.data.bitext.split(",")) and not (
        args.workdir or config.data.tfds_data_dir):
      raise UserError("a tfds: bitext is built under WORKDIR/tfds: pass --workdir or --config.data.tfds_data_dir")
    examples = load_training_sources(config, args.workdir or ".").examples
    if modes[0] == "coverage":
      side = args.direction == "to_source"  # the English side, as data.augment_direction=to_source sees it
      texts = [ex.target if side else ex.source for ex in examples]
      out = []
      for spec in (p.strip() for p in args.coverage.split(",") if p.strip()):
        lexicon = load(spec)  # A+B: the two merged, as data.augment_lexicon=A,B uses them
        out.append({"lexicon": spec, "side": "target (English)" if side else "source",
                    **coverage(invert(lexicon) if side else lexicon, texts)})
      return {"bitext": config.data.bitext, "pairs": len(texts), "coverage": out}
    if not args.out:
      raise UserError("--word-by-word needs --out FILE.tsv")
    counts = write_word_by_word_bitext(examples, load(args.word_by_word), args.out,
                                       direction=args.direction or "to_source")
    return {"out": args.out, **counts, "note": "word-by-word lexicon STAND-IN for MT (no MT model here); add it as "
                                               f"data.bitext=...,{args.out}[synthetic]@W"}
  if not args.workdir or not args.out:
    raise UserError("lexicon induction needs --workdir (a trained student) and --out FILE.tsv")
  from etils import epath  # pylint: disable=g-import-not-at-top
  from optical_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_file = epath.Path(args.workdir) / "config.json"
  if not config_file.exists():
    raise UserError(f"{args.workdir}: no config.json: not a training workdir")
  train_config = config_lib.from_json(config_file)
  if args.min_count < 1 or not 0.0 <= args.min_mass <= 1.0 or args.pairs < 1:
    raise UserError(f"--pairs and --min-count must be >= 1 and --min-mass in [0, 1], got {args.pairs}, "
                    f"{args.min_count}, {args.min_mass}")
  lexicon, scores, stats = induce_from_workdir(args.workdir, load_student(args.workdir), train_config,
                                               pairs=args.pairs, min_mass=args.min_mass, min_count=args.min_count,
                                               source=args.source or "")
  write_tsv(lexicon, args.out, scores, header=(
      f"induced from the OT plans of {args.workdir} on {stats['pairs']} training pairs"
      f"{' of ' + args.source if args.source else ''}: argmax English word per "
      f"source word, mean plan share >= {args.min_mass}, count >= {args.min_count}; score = P(english | source)"))
  return {"out": args.out, **stats}
