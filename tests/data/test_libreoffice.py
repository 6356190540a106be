"""LibreOffice UI translations as bitext: a fake language-pack .deb built here (two polib-written catalogues), the
pinned download, the split rule, the tfds builder, and the real package when deb.debian.org answers."""
import collections
import hashlib
import io
import urllib.error

from fake_deb import deb_bytes
import polib
import pytest

from optical_jax.data import debian, libreoffice, tfds_bitext
from optical_jax.data.readers import BitextExample
from optical_jax.data.report import DataReport
from optical_jax.errors import UserError

MO_DIR = "./usr/lib/libreoffice/program/resource/bn/LC_MESSAGES"

# (msgctxt, msgid, msgstr) per catalogue; msgstr None: a plural entry. Written here, not taken from the package.
CATALOGUES = {
    "cui": [
        ("dlg|open", "_Open", "খুলুন (_O)"),                     # GTK mnemonic, "(_X)" suffix
        ("STR_SAVE", "~Save as...", "এভাবে সংরক্ষণ... (~a)"),   # `~`, "(~x)" suffix
        ("STR_NEXT", "~Next >", "পরবর্তী (~N) >"),               # "(~X)" inside the text
        ("STR_CM", "~1 cm", "১ সেমি (~1)"),                      # a digit accelerator
        ("STR_LINES", "Line one\n\tline two ", " লাইন এক\nলাইন দুই"),  # newline and tab
        ("STR_EXT", "Adding %EXTENSION_NAME", "%EXTENSION_NAME যোগ"),  # `_` inside a placeholder stays
        ("STR_HELP", "~Help", "(~H)"),                            # empty_translation
        ("STR_DOTS", "...", "…"),                                 # no_letter
        ("STR_OK", "OK", "OK"),                                   # untranslated
        ("STR_PDF", "~PDF", "PDF (~P)"),                          # untranslated once cleaned
        ("STR_FILES", "%1 file", None),                           # plural
        ("liststore1", "Right", "ডান"),                           # a repeated msgctxt: sorted by msgid,
        ("liststore1", "Left", "বাম"),                            # "Left" keeps the plain id
    ],
    "sw": [
        ("STR_OPEN", "Open", "খুলুন"),       # duplicate_pair of cui's "_Open" once cleaned
        ("STR_OPEN2", "Open", "খোলা"),       # same English, another translation: kept
        ("STR_LEFT", "Left", "বাম"),         # duplicate_pair
    ],
}
EXPECTED = [  # catalogues in name order, entries sorted by (msgctxt, msgid)
    ("bn-en:libreoffice:cui:STR_CM", "১ সেমি", "1 cm"),
    ("bn-en:libreoffice:cui:STR_EXT", "%EXTENSION_NAME যোগ", "Adding %EXTENSION_NAME"),
    ("bn-en:libreoffice:cui:STR_LINES", "লাইন এক লাইন দুই", "Line one line two"),
    ("bn-en:libreoffice:cui:STR_NEXT", "পরবর্তী >", "Next >"),
    ("bn-en:libreoffice:cui:STR_SAVE", "এভাবে সংরক্ষণ...", "Save as..."),
    ("bn-en:libreoffice:cui:dlg|open", "খুলুন", "Open"),
    ("bn-en:libreoffice:cui:liststore1", "বাম", "Left"),
    ("bn-en:libreoffice:cui:liststore1#2", "ডান", "Right"),
    ("bn-en:libreoffice:sw:STR_OPEN2", "খোলা", "Open"),
]
SKIPPED = {"plural": 1, "empty_translation": 1, "no_letter": 1, "untranslated": 2, "duplicate_pair": 2}


def _mo(entries) -> bytes:
  po = polib.POFile()
  po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
  for ctx, msgid, msgstr in entries:
    if msgstr is None:
      po.append(polib.POEntry(msgctxt=ctx, msgid=msgid, msgid_plural=msgid + "s",
                              msgstr_plural={0: "%1 ফাইল", 1: "%1 ফাইল"}))
    else:
      po.append(polib.POEntry(msgctxt=ctx, msgid=msgid, msgstr=msgstr))
  return po.to_binary()


def _fake_deb() -> bytes:
  files = {f"{MO_DIR}/{name}.mo": _mo(entries) for name, entries in CATALOGUES.items()}
  files["./usr/lib/libreoffice/program/resource/hi/LC_MESSAGES/cui.mo"] = _mo([("x", "Yes", "हाँ")])  # not bn
  files["./usr/share/doc/libreoffice-l10n-bn/copyright"] = b"MPL-2.0"
  return deb_bytes(files)


@pytest.fixture
def fake_pack(tmp_path, monkeypatch):
  """The fake .deb, pinned as the bn package; returns its path."""
  deb = _fake_deb()
  pkg = debian.DebianPackage("libreoffice-l10n-bn", "4:0-test", debian.sha256(deb), len(deb),
                             "pool/main/libr/libreoffice")
  monkeypatch.setitem(libreoffice.PACKAGES, "bn", pkg)
  path = tmp_path / pkg.filename
  path.write_bytes(deb)
  return path


def test_pairs_cleaning_skips_and_ids(fake_pack):
  stats = {}
  pairs = libreoffice.bitext_pairs("bn", deb_path=fake_pack, stats=stats)
  assert pairs == EXPECTED
  assert stats["catalogues"] == 2 and stats["entries"] == 16 and stats["pairs"] == len(EXPECTED)
  assert stats["skipped"] == SKIPPED
  # every entry is in one split's counts, pairs and skips alike
  split = collections.Counter(libreoffice.split_of(en) for _, _, en in pairs)
  assert stats["split_pairs"] == {"train": split["train"], "test": split["test"]}
  assert {r: sum(stats["split_skipped"][s][r] for s in ("train", "test")) for r in SKIPPED} == SKIPPED
  assert sum(stats["split_pairs"].values()) + sum(SKIPPED.values()) == stats["entries"]


def test_clean():
  assert libreoffice.clean("Save _As") == "Save As" and libreoffice.clean("sal_Int8 <wizard_name>") == (
      "sal_Int8 <wizard_name>")
  assert libreoffice.clean(" F~older\tname\n") == "Folder name" and libreoffice.clean("নাম (~o):") == "নাম:"


def test_split_is_a_hash_of_the_english_string():
  for text in ("Open", "Save as...", "Line one line two"):
    want = "test" if int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 10 == 0 else "train"
    assert libreoffice.split_of(text) == want
  share = sum(libreoffice.split_of(f"string {k}") == "test" for k in range(2000)) / 2000
  assert 0.08 < share < 0.12


def test_equal_english_strings_share_a_split(fake_pack):
  pairs = libreoffice.bitext_pairs("bn", deb_path=fake_pack)
  splits = collections.defaultdict(set)
  for _, _, en in pairs:
    splits[en].add(libreoffice.split_of(en))
  assert [en for _, _, en in pairs].count("Open") == 2 and all(len(s) == 1 for s in splits.values())


def test_download_is_pinned_and_cached(tmp_path, fake_pack, monkeypatch):
  deb = fake_pack.read_bytes()
  pkg = libreoffice.PACKAGES["bn"]
  calls = []

  def urlopen(url, timeout):
    calls.append(url)
    return io.BytesIO(deb)

  monkeypatch.setattr(debian.urllib.request, "urlopen", urlopen)
  cache = tmp_path / "cache"
  assert libreoffice.bitext_pairs("bn", cache=cache) == EXPECTED
  assert libreoffice.bitext_pairs("bn", cache=cache) == EXPECTED
  assert calls == [pkg.url] and (cache / pkg.filename).read_bytes() == deb
  assert pkg.url == ("http://deb.debian.org/debian/pool/main/libr/libreoffice/"
                     "libreoffice-l10n-bn_0-test_all.deb")  # the pool's file name has no epoch
  # a wrong file, downloaded or given by hand, is refused
  monkeypatch.setitem(libreoffice.PACKAGES, "bn", debian.DebianPackage(pkg.package, "4:1-test", "0" * 64, 1,
                                                                       pkg.pool_path))
  with pytest.raises(UserError, match="does not match the pinned"):
    libreoffice.bitext_pairs("bn", cache=cache)
  with pytest.raises(UserError, match=f"{fake_pack.name}: sha256 .* does not match the pinned"):
    libreoffice.bitext_pairs("bn", deb_path=fake_pack)
  with pytest.raises(UserError, match="no pinned language pack for 'xx'"):
    libreoffice.bitext_pairs("xx")


def test_a_failed_download_is_a_one_line_user_error(tmp_path, fake_pack, monkeypatch):
  def offline(url, timeout):
    raise urllib.error.URLError("no route to host")

  monkeypatch.setattr(debian.urllib.request, "urlopen", offline)
  with pytest.raises(UserError, match=r"^libreoffice-l10n-bn: cannot download http://deb\.debian\.org/.*\(.*no route "
                                      r"to host.*\); fetch it by hand into .*libreoffice-l10n-bn_0-test_all\.deb$"):
    libreoffice.bitext_pairs("bn", cache=tmp_path / "cache")


def test_train_stops_with_one_line_and_exit_2_when_the_download_fails(tmp_path, fake_pack, monkeypatch, capsys):
  from optical_jax import cli

  def offline(url, timeout):
    raise urllib.error.URLError("no route to host")

  monkeypatch.setattr(debian.urllib.request, "urlopen", offline)
  monkeypatch.setenv("OPTICAL_JAX_CACHE", str(tmp_path / "cache"))
  code = cli.main(["train", "--config", "configs/tiny.py:text", "--workdir", str(tmp_path / "run"),
                   "--config.data.bitext=tfds:libreoffice/bn_en"])
  err = capsys.readouterr().err.strip().splitlines()
  # the download is tried before tfds draws its progress bars: after the log line announcing it, one line
  errors = [line for line in err if "error" in line]
  assert code == 2 and len(errors) == 1 and errors == err[-1:] and "\x1b" not in "".join(err), err
  assert err[-1].startswith("optical-jax: error: libreoffice-l10n-bn: cannot download http://deb.debian.org/")


def test_build_from_the_pinned_package_after_a_failed_download(tmp_path, fake_pack, monkeypatch):
  """The real pairs function end to end: offline first (nothing half-built is left), then the .deb put by hand."""
  def offline(url, timeout):
    raise urllib.error.URLError("no route to host")

  monkeypatch.setattr(debian.urllib.request, "urlopen", offline)
  monkeypatch.setenv("OPTICAL_JAX_CACHE", str(tmp_path / "cache"))
  with pytest.raises(UserError, match="fetch it by hand into"):
    tfds_bitext.load_bitext("tfds:libreoffice/bn_en", data_dir=tmp_path / "tfds")
  (tmp_path / "cache" / "libreoffice").mkdir(parents=True)
  (tmp_path / "cache" / "libreoffice" / fake_pack.name).write_bytes(fake_pack.read_bytes())
  report = DataReport()
  got = [ex for split in ("train", "test")
         for ex in tfds_bitext.load_bitext("tfds:libreoffice/bn_en", split=split, data_dir=tmp_path / "tfds",
                                           report=report)]
  assert len(got) == len(EXPECTED) and set(got) == {BitextExample(*p) for p in EXPECTED}
  assert report.skipped == collections.Counter(empty_side=1, corpus_filter=6)
  assert report.lines_read == 16 and report.balanced


def _fake_pairs(calls):
  """60 English strings (some twice, with two translations), an empty side and a repeated id; like libreoffice.py,
  stats say which entries it already skipped, per split."""
  def pairs(lang, stats=None):
    calls.append(lang)
    out = [(f"bn-en:libreoffice:sw:S{k}", f"বাক্য {k}", f"string {k}") for k in range(60)]
    out += [(f"bn-en:libreoffice:cui:S{k}", f"অন্য {k}", f"string {k}") for k in range(0, 60, 3)]
    out += [("bn-en:libreoffice:sw:empty", " ", "string 61"), ("bn-en:libreoffice:sw:S1", "আবার", "string 1")]
    if stats is not None:
      stats["split_skipped"] = {"train": {"empty_translation": 2, "untranslated": 3, "duplicate_pair": 0},
                                "test": {"no_letter": 1, "duplicate_pair": 4}}
    return out
  return pairs


def test_builder_splits_by_english_and_balances_counts(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(tfds_bitext, "_libreoffice_pairs", _fake_pairs(calls))
  report = DataReport()
  train = tfds_bitext.load_bitext("tfds:libreoffice/bn_en", split="train", data_dir=tmp_path, report=report)
  test = tfds_bitext.load_bitext("tfds:libre_office_bitext/bn_en", split="test", data_dir=tmp_path, report=report)
  assert calls == ["bn"]  # read once for both splits
  every = _fake_pairs([])("bn")
  kept = {BitextExample(*p) for p in every[:-2]}
  assert set(train) | set(test) == kept and not set(train) & set(test)
  split = lambda ds: {libreoffice.split_of(ex.target) for ex in ds}
  assert split(train) == {"train"} and split(test) == {"test"} and len(test) > 0
  # the empty side and the repeated id are skipped here (both "string 61"/"string 1" land in their own split);
  # libreoffice.py's own skips arrive as empty_side / corpus_filter
  assert report.skipped == collections.Counter(empty_side=3, duplicate_id=1, corpus_filter=8)
  assert report.yielded == len(kept) and report.lines_read == len(every) + 10 and report.balanced
  assert report.sources == ["tfds:libreoffice/bn_en[train]", "tfds:libre_office_bitext/bn_en[test]"]
  description = tfds_bitext.LibreOfficeBitext(data_dir=tmp_path).info.description
  assert "libreoffice-l10n-bn" in description and "MPL-2.0" in description and "6,826 pairs" in description


def test_real_libreoffice_bengali(tmp_path):
  """Downloads the pinned Debian package (375,780 bytes) when deb.debian.org answers; skipped otherwise."""
  stats = {}
  try:
    pairs = libreoffice.bitext_pairs("bn", cache=tmp_path, stats=stats)
  except UserError as e:
    if "cannot download" in str(e):
      pytest.skip(f"no network: {e}")
    raise
  assert (stats["catalogues"], stats["entries"], stats["pairs"]) == (33, 11_236, 6_826)
  assert stats["skipped"] == {"plural": 0, "empty_translation": 0, "no_letter": 21, "untranslated": 720,
                              "duplicate_pair": 3_669}
  assert stats["split_pairs"] == {"train": 6_132, "test": 694}
  assert len({p[0] for p in pairs}) == len(pairs) and all(p[0].startswith("bn-en:libreoffice:") for p in pairs)
  assert not any("~" in text or "(_" in text for p in pairs for text in p[1:])
  english = {p[2] for p in pairs}
  assert {"Open", "Save", "Close", "Help"} <= english
  assert 5.0 < sum(len(en.split()) for _, _, en in pairs) / len(pairs) < 7.0
