"""Lexicons: TSV files, FreeDict's .deb / dictd format (on a fixture built here), coverage, the word-by-word stand-in,
and induction from OT plans (a constructed case whose plan is known)."""
import gzip
import io

from fake_deb import deb_bytes
import numpy as np
import pytest

from optical_jax.data import debian
from optical_jax.data import lexicon as L
from optical_jax.errors import UserError

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
  out = ""
  while True:
    out = _B64[n % 64] + out
    n //= 64
    if not n:
      return out


ENTRIES = {
    "00databaseshort": "00-database-short\nTiny test dictionary\n",
    "abiria": "abiria /ˌabirˈia/ <n> (pl: {maabiria})\n\npassenger\n",
    "acha": "acha /ˈatʃa/ <v>\n1.\nleave\n2.\nquit, stop doing sth\n",
    "adhuhuri": "adhuhuri /ˌaðuhˈuri/ <n> [sg=pl]\n\nmidday\n period between noon and 2 p.m.\n\n",
    "hakuna": "hakuna /hakˈuna/ <v, infl>\n\nthere is not\n; there are not\n   See also: {wa na}\n\n",
    "kope": "kope /kˈope/ <n>\n\n Plural of {ukope}: 1. eyelid 2. eyelash\n\n",
    "mjomba": "mjomba /mɟˈomba/ <n>\n\n(maternal) uncle\n",
    "Mungu": "Mungu /mˈuŋɡu/ <n>\n\nGod\n",
}


def _dictd(entries: dict[str, str]) -> tuple[str, bytes]:
  data, index = b"", []
  for head, text in entries.items():
    raw = text.encode("utf-8")
    index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
    data += raw
  return "\n".join(index) + "\n", data


def _deb(name: str, entries: dict[str, str]) -> bytes:
  """The FreeDict package's layout: the dictd files under usr/share/dictd, beside other files."""
  index, data = _dictd(entries)
  return deb_bytes({f"./usr/share/dictd/freedict-{name}.index": index.encode(),
                    f"./usr/share/dictd/freedict-{name}.dict.dz": gzip.compress(data),
                    "./usr/share/doc/README": b"readme"})


EXPECTED = {"abiria": ["passenger"], "acha": ["leave"], "adhuhuri": ["midday"],
            "hakuna": ["there is not", "there are not"], "kope": ["eyelid"], "mjomba": ["uncle"], "mungu": ["god"]}


def test_dictd_entries_first_sense_without_notes():
  index, data = _dictd(ENTRIES)
  assert L.parse_dictd(index, data) == EXPECTED


def test_freedict_deb_is_read_with_the_standard_library():
  members = debian.read_ar(_deb("swh-eng", ENTRIES))
  assert list(members) == ["debian-binary", "control.tar.xz", "data.tar.xz"] and members["debian-binary"] == b"2.0\n"
  assert L.parse_freedict_deb(_deb("swh-eng", ENTRIES), "swh-eng") == EXPECTED
  with pytest.raises(ValueError, match="ar archive"):
    debian.read_ar(b"PK\x03\x04")


def test_fetch_is_pinned_cached_and_inverted(tmp_path, monkeypatch):
  deb = _deb("eng-swh", {"god": "god /ɡˈɒd/ <n>\n\nmungu\n", "leave": "leave /lˈiːv/ <v>\n\nacha, ondoka\n"})
  pkg = L.FreeDictPackage("dict-freedict-eng-swh", "0-test", debian.sha256(deb), len(deb), invert=True)
  monkeypatch.setitem(L.FREEDICT, "eng-swh", pkg)
  calls = []

  def urlopen(url, timeout):
    calls.append(url)
    return io.BytesIO(deb)

  monkeypatch.setattr(debian.urllib.request, "urlopen", urlopen)
  assert L.freedict("eng-swh", tmp_path) == {"mungu": ["god"], "acha": ["leave"], "ondoka": ["leave"]}
  assert (tmp_path / pkg.filename).read_bytes() == deb
  L.load("freedict:eng-swh", tmp_path)
  assert calls == [pkg.url]  # the second load read the cache
  assert L.FREEDICT["swh-eng"].url == ("http://deb.debian.org/debian/pool/main/f/freedict/"
                                       "dict-freedict-swh-eng_2022.04.21-1_all.deb")
  monkeypatch.setitem(L.FREEDICT, "eng-swh", L.FreeDictPackage(pkg.package, "1-test", "0" * 64, 1, True))
  with pytest.raises(UserError, match="does not match the pinned"):
    L.freedict("eng-swh", tmp_path)
  with pytest.raises(UserError, match="no Bengali"):
    L.load("freedict:ben-eng", tmp_path)


def test_real_freedict_swahili_english(tmp_path):
  """Downloads the pinned Debian package (86,792 bytes) when deb.debian.org answers; skipped otherwise."""
  try:
    lexicon = L.freedict("swh-eng", tmp_path)
  except UserError as e:
    if "cannot download" in str(e):
      pytest.skip(f"no network: {e}")
    raise
  assert len(lexicon) > 2500 and lexicon["mungu"] == ["god"] and lexicon["katika"] == ["in"]


def test_tsv_round_trip_orders_by_score(tmp_path):
  path = tmp_path / "lex.tsv"
  path.write_text("source\ttarget\tscore\n# a comment\nMbwa\tdog\t0.2\nmbwa\thound\t0.7\npaka\tcat\n")
  lexicon = L.read_tsv(path)
  assert lexicon == {"mbwa": ["hound", "dog"], "paka": ["cat"]}
  L.write_tsv(lexicon, tmp_path / "out.tsv", {("mbwa", "hound"): 0.7, ("mbwa", "dog"): 0.2}, header="test")
  assert L.read_tsv(tmp_path / "out.tsv") == lexicon
  (tmp_path / "bad.tsv").write_text("mbwa\tdog\nonly-one-column\n")
  with pytest.raises(UserError, match="bad.tsv:2: expected"):
    L.read_tsv(tmp_path / "bad.tsv")
  with pytest.raises(UserError, match="no such lexicon file"):
    L.load(str(tmp_path / "missing.tsv"))
  assert L.load(f"{path},{tmp_path / 'out.tsv'}") == lexicon


def test_words_strip_punctuation_but_keep_marks():
  assert [w for _, _, w in L.words("«Mungu», akasema: ni-nani?  ")] == ["mungu", "akasema", "ni-nani"]
  bengali = "আদিতে ঈশ্বর আকাশমণ্ডল ও পৃথিবী সৃষ্টি করিলেন।"
  assert [w for _, _, w in L.words(bengali)][-1] == "করিলেন"  # the danda goes, the vowel signs stay
  assert L.match_case("Mungu", "god") == "God" and L.match_case("mungu", "god") == "god"


def test_coverage_counts_types_and_running_words():
  lexicon = {"mungu": ["god"], "na": ["and"], "nchi": ["country"]}
  texts = ["Mungu aliumba mbingu na nchi.", "Na nchi ilikuwa ukiwa"]
  cov = L.coverage(lexicon, texts)
  # words: mungu aliumba mbingu na nchi | na nchi ilikuwa ukiwa -> 9 tokens, 7 types; covered: mungu na nchi
  assert (cov["tokens"], cov["types"], cov["covered_tokens"], cov["covered_types"]) == (9, 7, 5, 3)
  assert cov["token_coverage"] == pytest.approx(5 / 9) and cov["type_coverage"] == pytest.approx(3 / 7)


def test_word_by_word_stand_in_writes_a_flagged_bitext(tmp_path):
  from optical_jax.data import bitext, readers
  lexicon = {"mungu": ["god"], "na": ["and"], "nchi": ["earth", "country"]}
  assert L.word_by_word("Mungu aliumba mbingu na nchi.", lexicon) == ("God aliumba mbingu and earth.", 3)
  examples = [readers.BitextExample("v1", "Mungu na nchi", "God and the earth."),
              readers.BitextExample("v2", "aliumba mbingu", "created the heavens")]
  out = tmp_path / "wbw.tsv"
  assert L.write_word_by_word_bitext(examples, lexicon, out) == {"written": 1, "dropped": 1}
  pairs = list(readers.read_bitext(out))
  assert [(p.id, p.source, p.target) for p in pairs] == [("wbw:v1", "Mungu na the nchi.", "God and the earth.")]
  sources = bitext.parse_sources(f"tfds:bible/sw_en@2,{out}[synthetic]@0.5")
  assert [(s.spec, s.weight, s.synthetic) for s in sources] == [("tfds:bible/sw_en", 2.0, False),
                                                                 (str(out), 0.5, True)]
  assert bitext.parse_sources(f"{out}@0.5[synthetic]")[0].synthetic


def test_token_words_map_pieces_to_words_past_the_prefix():
  from optical_jax.data import encoding
  tok = encoding.byte_tokenizer()
  prefix, text = "query: ", "Ni nani?"
  enc = tok(prefix + text, return_offsets_mapping=True)
  owner, words = L.token_words(text, enc["offset_mapping"], len(prefix))
  assert words == ["ni", "nani"]
  # [CLS] + 7 prefix bytes | N i | space | n a n i | ? | [SEP]
  assert owner.tolist() == [-1] * 8 + [0, 0, -1, 1, 1, 1, 1, -1, -1]


def test_alignment_of_a_known_plan_and_the_thresholds():
  # 3 source tokens (words 0, 0, 1), 3 target tokens (words 0, 1, 1); word 0 sends 0.5 of its 0.6 to target 1.
  plan = np.array([[0.1, 0.2, 0.0], [0.0, 0.1, 0.2], [0.3, 0.0, 0.1]])
  got = L.word_alignments(plan, np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2)
  assert [(i, j) for i, j, _ in got] == [(0, 1), (1, 0)]
  assert [s for _, _, s in got] == pytest.approx([0.5 / 0.6, 0.3 / 0.4])
  counts = L.AlignmentCounts()
  for _ in range(3):
    counts.add(["mbwa", "paka"], ["cat", "dog"], [(0, 1, 0.9), (1, 0, 0.2)])
  counts.add(["mbwa"], ["the"], [(0, 0, 0.95)])
  lexicon, scores = counts.lexicon(min_mass=0.3, min_count=2)
  assert lexicon == {"mbwa": ["dog"]} and scores == {("mbwa", "dog"): 0.75}  # paka: share 0.2; "the": seen once


def test_ot_plans_of_the_loss_recover_a_permutation():
  import ml_collections
  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(1, 4, 16)).astype(np.float32)
  order = np.array([2, 0, 3, 1])
  student = teacher[:, order] + 0.01 * rng.normal(size=(1, 4, 16)).astype(np.float32)
  ot = ml_collections.ConfigDict(dict(epsilon=0.01, iterations=200, grad="envelope", relative_epsilon="",
                                      lse_mode=True, tau_student=1.0, tau_teacher=1.0, plan_centering=False))
  plan = L.ot_plans(student, np.ones((1, 4)), teacher, np.ones((1, 4)), ot)[0]
  assert plan.shape == (4, 4) and plan.sum() == pytest.approx(1.0, abs=1e-4)
  np.testing.assert_array_equal(plan.argmax(axis=1), order)
  got = L.word_alignments(plan, np.arange(4), np.arange(4), 4, 4)
  assert [j for _, j, _ in got] == order.tolist() and min(s for _, _, s in got) > 0.95
