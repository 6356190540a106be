"""Bitext readers: TSV/JSONL round trips, every skip reason counted, strict errors naming file:line, fuzzing."""
import gzip
import json
import random
import re

import hypothesis
from hypothesis import strategies as st
import pytest

from optical_jax.data.readers import BitextExample, read_bitext
from optical_jax.data.report import REASONS, DataReport
from optical_jax.errors import UserError

FUZZ = hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                           suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


def _random_pairs(n, seed=0):
  """Generated (not corpus) text: mixed scripts, inner spaces, no tabs/newlines."""
  rng = random.Random(seed)
  words = ["habari", "ya", "asubuhi", "নমস্কার", "বই", "नमस्ते", "kumusta", "ñandú", "good", "morning",
           "🙂"]
  text = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
  return [(f"id{i}-{rng.randint(0, 99)}", text(), text()) for i in range(n)]


def _physical_lines(data: bytes) -> int:
  """Reference line count: pieces between b'\\n', the last one only if the file does not end with a newline."""
  if not data:
    return 0
  return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _read(path, **kwargs):
  report = DataReport()
  return list(read_bitext(path, report=report, **kwargs)), report


# ---- round trips ----

@pytest.mark.parametrize("layout", ["source_target", "id_source_target", "header_reordered", "header_no_id"])
def test_tsv_round_trip(tmp_path, layout):
  pairs = _random_pairs(40)
  path = tmp_path / "bitext.tsv"
  if layout == "source_target":
    lines = [f"{s}\t{t}" for _, s, t in pairs]
    want = [BitextExample(f"bitext.tsv:{i + 1}", s, t) for i, (_, s, t) in enumerate(pairs)]
  elif layout == "id_source_target":
    lines = [f"{i}\t{s}\t{t}" for i, s, t in pairs]
    want = [BitextExample(*p) for p in pairs]
  elif layout == "header_reordered":
    lines = ["Target\tID\tsource"] + [f"{t}\t{i}\t{s}" for i, s, t in pairs]
    want = [BitextExample(*p) for p in pairs]
  else:
    lines = ["source\ttarget"] + [f"{s}\t{t}" for _, s, t in pairs]
    want = [BitextExample(f"bitext.tsv:{i + 2}", s, t) for i, (_, s, t) in enumerate(pairs)]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  got, report = _read(path)
  assert got == want
  assert report.lines_read == len(pairs) and report.yielded == len(pairs) and report.total_skipped == 0
  assert report.header_lines == (1 if layout.startswith("header") else 0)


def test_tsv_crlf_bom_and_gzip(tmp_path):
  pairs = _random_pairs(10, seed=1)
  body = "\r\n".join(f"{i}\t {s} \t{t}" for i, s, t in pairs)  # CRLF, no final newline, padded text
  path = tmp_path / "b.tsv.gz"
  path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + body.encode("utf-8")))
  got, report = _read(path)
  assert got == [BitextExample(*p) for p in pairs]
  assert report.balanced and report.lines_read == 10


@pytest.mark.parametrize("with_ids", [False, True])
def test_jsonl_round_trip(tmp_path, with_ids):
  pairs = _random_pairs(30, seed=2)
  path = tmp_path / "b.jsonl"
  rows = [dict(id=i, source=s, target=t, note="ignored") if with_ids else dict(target=t, source=s)
          for i, s, t in pairs]
  rows.append(dict(id=12345, source="namba", target="number"))  # integer ids become strings
  path.write_text("".join(json.dumps(r, ensure_ascii=k % 2 == 0) + "\n" for k, r in enumerate(rows)))
  got, report = _read(path)
  want = [BitextExample(i if with_ids else f"b.jsonl:{k + 1}", s, t) for k, (i, s, t) in enumerate(pairs)]
  assert got == want + [BitextExample("12345", "namba", "number")]
  assert report.lines_read == report.yielded == len(rows)


# ---- bad input ----

BAD_TSV = [  # (line, reason or None)
    (b"id\tsource\ttarget", "header"),
    (b"ok1\tjambo\thello", None),
    (b"e1\t   \thello", "empty_side"),
    (b"m1\tonly two", "missing_column"),
    (b"x1\ta\tb\tc", "extra_column"),
    (b"u1\tjambo \xff\xfe\thello", "invalid_utf8"),
    (b"ok1\tjambo tena\thello again", "duplicate_id"),
    (b"l1\t" + b"a" * 101 + b"\tlong", "over_length"),
    (b"", "blank_line"),
    (b"ok2\tkwaheri\tgoodbye", None),
]
BAD_JSONL = [
    (b'{"id": "ok1", "source": "jambo", "target": "hello"}', None),
    (b'{"id": "e1", "source": "jambo", "target": ""}', "empty_side"),
    (b'{"id": "m1", "source": "jambo"}', "missing_column"),
    (b'{"id": "u1", "source": "\xc3\x28", "target": "x"}', "invalid_utf8"),
    (b'{"id": "s1", "source": "\\udc00", "target": "x"}', "invalid_utf8"),
    (b'{"id": "ok1", "source": "a", "target": "b"}', "duplicate_id"),
    (b'{"id": "l1", "source": "' + b"b" * 101 + b'", "target": "x"}', "over_length"),
    (b'{"id": "j1", "source": "a", "target": "b"', "bad_json"),
    (b'["a", "b"]', "bad_json"),
    (b'{"id": ["x"], "source": "a", "target": "b"}', "bad_json"),
    (b'{"id": "n1", "source": 3, "target": "b"}', "bad_json"),
    (b"[" * 100_000, "bad_json"),  # nesting deep enough to hit the recursion limit
    (b"   ", "blank_line"),
    (b'{"source": "kwaheri", "target": "goodbye"}', None),
]


@pytest.mark.parametrize("name,rows", [("bad.tsv", BAD_TSV), ("bad.jsonl", BAD_JSONL)])
def test_every_reason_counted(tmp_path, name, rows):
  path = tmp_path / name
  path.write_bytes(b"\n".join(line for line, _ in rows) + b"\n")
  got, report = _read(path, max_chars=100)
  reasons = [r for _, r in rows if r not in (None, "header")]
  assert {r: report.skipped[r] for r in REASONS if report.skipped[r]} == {r: reasons.count(r) for r in set(reasons)}
  assert report.yielded == len(got) == sum(r is None for _, r in rows)
  assert report.lines_read == len(rows) - report.header_lines
  assert report.balanced
  # each example names the right file:line
  bad = [(i + 1, r) for i, (_, r) in enumerate(rows) if r not in (None, "header")]
  first_few = {(line, r) for line, r in bad if [x for x in bad if x[1] == r].index((line, r)) < 3}
  assert {(e["line"], e["reason"]) for e in report.examples} == first_few
  assert all(e["file"] == str(path) for e in report.examples)


def test_both_fixtures_cover_every_reason():
  assert {r for _, r in BAD_TSV + BAD_JSONL} - {None, "header"} == set(REASONS) - {"corpus_filter"}  # tfds only


@pytest.mark.parametrize("name,rows", [("bad.tsv", BAD_TSV), ("bad.jsonl", BAD_JSONL)])
def test_strict_names_file_and_line(tmp_path, name, rows):
  good = rows[0 if name.endswith("jsonl") else 1][0]
  for line, reason in rows:
    if reason in (None, "header", "blank_line", "duplicate_id"):
      continue
    path = tmp_path / name
    path.write_bytes(good + b"\n" + line + b"\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:2: {reason}: "):
      list(read_bitext(path, strict=True, max_chars=100))
  path.write_bytes(good + b"\n" + good + b"\n")
  with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:2: duplicate_id: "):
    list(read_bitext(path, strict=True))


def test_strict_ignores_blank_lines(tmp_path):
  path = tmp_path / "b.tsv"
  path.write_text("\na\tb\n\n  \nc\td\n")
  got, report = _read(path, strict=True)
  assert [e.source for e in got] == ["a", "c"] and report.skipped["blank_line"] == 3


def test_file_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    read_bitext(tmp_path / "missing.tsv")
  with pytest.raises(UserError, match="unknown bitext file type"):
    read_bitext(tmp_path / "b.csv")
  (tmp_path / "d.tsv").mkdir()
  with pytest.raises(UserError, match="directory"):
    read_bitext(tmp_path / "d.tsv")
  (tmp_path / "bad.tsv.gz").write_bytes(b"not gzip at all\n")
  with pytest.raises(UserError, match="bad.tsv.gz"):
    list(read_bitext(tmp_path / "bad.tsv.gz"))


def test_report_write_and_summary(tmp_path):
  path = tmp_path / "bad.tsv"
  path.write_bytes(b"\n".join(line for line, _ in BAD_TSV) + b"\n")
  _, report = _read(path, max_chars=100)
  written = report.write(tmp_path / "workdir")
  assert written == tmp_path / "workdir" / "data_report.json"
  data = json.loads(written.read_text())
  assert data["lines_read"] == 9 and data["yielded"] == 2 and data["skipped_total"] == 7
  assert data["skipped"]["invalid_utf8"] == 1 and data["examples"][0]["line"] == 3
  summary = report.summary()
  assert "\n" not in summary and "9 lines read" in summary and "2 kept" in summary
  assert f"{path}:3 empty_side" in summary


# ---- fuzzing ----

@FUZZ
@hypothesis.given(data=st.binary(max_size=400), suffix=st.sampled_from([".tsv", ".jsonl"]), strict=st.booleans())
def test_fuzz_arbitrary_bytes(tmp_path, data, suffix, strict):
  _check_every_line_accounted(tmp_path / f"f{suffix}", data, strict)


_PIECES = ["\t", "\t", " ", "a", "ß", "জ", '"', "{", "}", ":", ",", "[", "]", "\\", "source", "target", "id",
           '"source"', '"target"', '"id"', "\x00", "\r", "\x85", "\u2028", "1", "-", "null"]


@FUZZ
@hypothesis.given(lines=st.lists(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join), max_size=25),
                  raw=st.lists(st.binary(max_size=3), max_size=3),
                  suffix=st.sampled_from([".tsv", ".jsonl"]), strict=st.booleans())
def test_fuzz_structured_lines(tmp_path, lines, raw, suffix, strict):
  data = "\n".join(lines).encode("utf-8") + b"\n".join(raw)
  _check_every_line_accounted(tmp_path / f"f{suffix}", data, strict)


def _check_every_line_accounted(path, data, strict):
  path.write_bytes(data)
  report = DataReport()
  got = []
  try:
    for ex in read_bitext(path, strict=strict, max_chars=50, report=report):
      got.append(ex)
  except UserError as e:
    assert strict and str(e).startswith(f"{path}:")
    assert report.balanced and report.yielded == len(got)
    return
  assert report.balanced and report.yielded == len(got)
  assert report.lines_read + report.header_lines == _physical_lines(data)
  assert len({ex.id for ex in got}) == len(got)
  assert all(ex.source and ex.target and len(ex.source) <= 50 and len(ex.target) <= 50 for ex in got)
  if strict:
    assert set(report.skipped) <= {"blank_line"}


_TEXT = st.text(st.characters(blacklist_characters="\t\n\ufeff", blacklist_categories=("Cs",)), min_size=1, max_size=30)


@FUZZ
@hypothesis.given(pairs=st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_.:-]{1,8}", fullmatch=True), _TEXT, _TEXT),
                                 max_size=15, unique_by=lambda p: p[0]),
                  fmt=st.sampled_from(["tsv2", "tsv3", "jsonl"]))
def test_fuzz_round_trip(tmp_path, pairs, fmt):
  pairs = [(i, s, t) for i, s, t in pairs if s.strip() and t.strip()]
  hypothesis.assume(not pairs or {pairs[0][1].strip().lower(), pairs[0][2].strip().lower()} != {"source", "target"})
  hypothesis.assume(not pairs or "id" not in {pairs[0][1].strip().lower(), pairs[0][2].strip().lower()})
  if fmt == "jsonl":
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(dict(id=i, source=s, target=t)) + "\n" for i, s, t in pairs))
  else:
    path = tmp_path / "r.tsv"
    cols = (lambda i, s, t: f"{s}\t{t}") if fmt == "tsv2" else (lambda i, s, t: f"{i}\t{s}\t{t}")
    path.write_bytes("".join(cols(*p) + "\n" for p in pairs).encode("utf-8"))
  got, report = _read(path, strict=True)
  ids = [f"r.tsv:{k + 1}" for k in range(len(pairs))] if fmt == "tsv2" else [i for i, _, _ in pairs]
  assert got == [BitextExample(i, s.strip(), t.strip()) for i, (_, s, t) in zip(ids, pairs)]
  assert report.lines_read == len(pairs)
