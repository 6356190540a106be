"""Low-resource/English string pairs from LibreOffice's UI translations, read from Debian's language pack .deb.

Source: Debian bookworm `libreoffice-l10n-LANG` (table below; sha256 and size from Debian's signed Packages index),
downloaded once by optical_jax.data.debian into the cache ($OPTICAL_JAX_CACHE or ~/.cache/optical_jax/libreoffice),
and read in memory: no dpkg, no root. Its gettext catalogues usr/lib/libreoffice/program/resource/LANG/LC_MESSAGES/
*.mo are parsed with polib: msgid = English, msgstr = the translation, msgctxt = the string's key. Licence: MPL-2.0
(LibreOffice and its translations). Research use: read at run time, never write the text into the repository.

Cleaning, on both sides: accelerator markers go ("(~S)" / "(_O)" suffixes of translations, every `~`, a GTK `_`
mnemonic before a letter at the start of a word: "_Description"; `_` inside identifiers such as "%EXTENSION_NAME"
stays); newlines and tabs become single spaces; ends are stripped. Entries are then skipped, for the first reason that
applies, and counted by reason: `plural` (a plural entry), `empty_translation` (nothing left after cleaning, e.g.
"(~S)": msgfmt leaves untranslated entries out of a .mo), `no_letter` (the English has no letter: "%1", "..."),
`untranslated` (the translation equals the English), `duplicate_pair` (the same cleaned (English, translation) pair
already kept; catalogues are read in name order, entries sorted by (msgctxt, msgid)).
Ids: "LANG-en:libreoffice:CATALOGUE:MSGCTXT", with "#2", "#3"... for a msgctxt repeated within a catalogue (list
stores share one), numbered over all entries so that cleaning rules never change an id.

Split: by the cleaned English text, so one English string never lands in both: test if int(sha1(english)[:8], 16) %
10 == 0, else train. Skipped entries are assigned a split the same way, so each split's counts balance.

Counts (bn, 4:7.4.7-1+deb12u14): 33 catalogues, 11,236 entries (all with msgctxt, no plurals) -> 6,826 pairs
(train 6,132, test 694; 5.9 English words per pair on average; 1,531 kept ids carry a "#N" suffix); skipped: 0 plural,
0 empty_translation, 21 no_letter, 720 untranslated, 3,669 duplicate_pair (LibreOffice repeats strings across
catalogues and dialogs).
"""
from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import re

from optical_jax import assets
from optical_jax.data import debian
from optical_jax.errors import UserError

Pair = tuple[str, str, str]  # (id, target-language text, English text)

# Debian bookworm. One entry per language (the mr, am, om, rw, zu packs are in the same pool directory; their
# counts are unmeasured, so they are not listed yet).
PACKAGES: dict[str, debian.DebianPackage] = {
    "bn": debian.DebianPackage("libreoffice-l10n-bn", "4:7.4.7-1+deb12u14",
                               "4cd55a7bd338ae8a2c4e3e55e85d9145f441086ff93b176632f591f1565bdb94", 375780,
                               "pool/main/libr/libreoffice"),
}
LICENCE = "MPL-2.0"
CATALOGUE_DIR = "usr/lib/libreoffice/program/resource/{lang}/LC_MESSAGES/"
TEST_EVERY = 10
REASONS = ("plural", "empty_translation", "no_letter", "untranslated", "duplicate_pair")
SPLITS = ("train", "test")

# Translations put the accelerator in parentheses when their script has no such letter: "নাম (~o):", "১ সেমি (~1)".
_PAREN_MNEMONIC = re.compile(r"\s*\([~_][^\W_]\)")
# Only at the start of a word: inside one, `_` is part of a placeholder or an identifier ("%FILE_NAME", "sal_Int8").
_GTK_MNEMONIC = re.compile(r"(?<![\w%$])_(?=[^\W\d_])")
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
  text = _PAREN_MNEMONIC.sub("", text).replace("~", "")
  return _SPACE.sub(" ", _GTK_MNEMONIC.sub("", text)).strip()


def split_of(english: str) -> str:
  """The split of a pair, from a stable hash of its (cleaned) English text: "test" for one string in TEST_EVERY."""
  return "test" if int(hashlib.sha1(english.encode("utf-8")).hexdigest()[:8], 16) % TEST_EVERY == 0 else "train"


def _package(lang: str) -> debian.DebianPackage:
  if lang not in PACKAGES:
    raise UserError(f"libreoffice: no pinned language pack for {lang!r}; known: {', '.join(sorted(PACKAGES))}")
  return PACKAGES[lang]


def read_deb(lang: str, *, deb_path: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> bytes:
  """The pinned .deb of `lang`'s language pack: `deb_path`, or the cached download (fetched if missing)."""
  pkg = _package(lang)
  if deb_path is None:
    root = pathlib.Path(cache) if cache else assets.default_cache_dir() / "libreoffice"
    deb_path = debian.fetch(pkg, root, label=pkg.package)
  try:
    data = pathlib.Path(deb_path).read_bytes()
  except OSError as e:
    raise UserError(f"{deb_path}: cannot read ({e.strerror or e})") from None
  return debian.check(pkg, data, str(deb_path))  # a file given by hand is held to the same pin


def catalogues(deb: bytes, lang: str) -> dict[str, bytes]:
  """Catalogue name ("sw", "vcl", ...) -> .mo contents, in name order."""
  prefix = CATALOGUE_DIR.format(lang=lang)
  files = debian.deb_files(deb, (".mo",))
  out = {path[len(prefix):-len(".mo")]: data for path, data in sorted(files.items())
         if path.startswith(prefix) and "/" not in path[len(prefix):]}
  if not out:
    raise UserError(f"libreoffice {lang}: the .deb holds no {prefix}*.mo catalogue")
  return out


def bitext_pairs(lang: str = "bn", *, deb_path: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None, stats: dict | None = None) -> list[Pair]:
  """[(id, translation, English)], cleaned and filtered (see the module docstring); `stats` receives the counts:
  catalogues, entries, pairs, skipped[reason], and per split split_pairs[split], split_skipped[split][reason]."""
  import polib  # pylint: disable=g-import-not-at-top  # only when building the dataset
  skipped = {split: collections.Counter() for split in SPLITS}
  split_pairs = collections.Counter()
  pairs, used_ids, seen = [], set(), set()
  mos = catalogues(read_deb(lang, deb_path=deb_path, cache=cache), lang)
  entries = 0
  for name, data in mos.items():
    mo = polib.mofile(data)  # bytes: parsed in memory (the .deb is sha256-pinned, so its catalogues are sound)
    for entry in sorted(mo, key=lambda e: (e.msgctxt or "", e.msgid)):
      entries += 1
      key = f"{lang}-en:libreoffice:{name}:{entry.msgctxt or ''}"
      ex_id, n = key, 1
      while ex_id in used_ids:
        n += 1
        ex_id = f"{key}#{n}"
      used_ids.add(ex_id)
      english, target = clean(entry.msgid), clean(entry.msgstr)
      split = split_of(english)
      if entry.msgid_plural:
        reason = "plural"
      elif not target:
        reason = "empty_translation"
      elif not any(ch.isalpha() for ch in english):
        reason = "no_letter"
      elif target == english:
        reason = "untranslated"
      elif (english, target) in seen:
        reason = "duplicate_pair"
      else:
        seen.add((english, target))
        pairs.append((ex_id, target, english))
        split_pairs[split] += 1
        continue
      skipped[split][reason] += 1
  if stats is not None:
    stats.update(catalogues=len(mos), entries=entries, pairs=len(pairs),
                 skipped={r: sum(skipped[s][r] for s in SPLITS) for r in REASONS},
                 split_pairs={s: split_pairs[s] for s in SPLITS},
                 split_skipped={s: {r: skipped[s][r] for r in REASONS} for s in SPLITS})
  return pairs
