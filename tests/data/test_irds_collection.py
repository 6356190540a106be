"""`irds:NAME` collections (optical_jax.data.collections.irds_collection) on datasets registered in ir_datasets from
fixture files: nothing downloads (LocalDownload reads the files; any network connection fails the test) and
ir_datasets' cache is a temporary directory."""
import importlib.util
import socket
import sys
import uuid
from typing import NamedTuple

import pytest

from optical_jax import config as config_lib
from optical_jax.data import collections
from optical_jax.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ir_datasets") is None,
                                reason="ir-datasets is not installed (extra irds)")


class TitledDoc(NamedTuple):
  """A document type with a title and no default_text(): read as "title text"."""
  doc_id: str
  title: str
  text: str


@pytest.fixture(autouse=True)
def offline_irds_home(tmp_path, monkeypatch):
  """ir_datasets' cache in tmp_path (set before ir_datasets is first imported: its import makes folders there), and
  no internet connection."""
  monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "ir_datasets_home"))
  monkeypatch.setenv("IR_DATASETS_TMP", str(tmp_path / "ir_datasets_tmp"))
  connect = socket.socket.connect

  def refuse(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
      raise OSError(f"test: no network (connect to {address})")
    return connect(sock, address)

  monkeypatch.setattr(socket.socket, "connect", refuse)


def register(tmp_path, *, docs=None, queries=None, qrels=None, doc_cls=None, query_cls=None) -> str:
  """A fresh dataset `optical-test/<hex>/test` in ir_datasets' registry from text written in tmp_path; None leaves
  that part out."""
  import ir_datasets
  from ir_datasets.formats import GenericDoc, GenericQuery, TrecQrels, TsvDocs, TsvQueries
  from ir_datasets.util import LocalDownload
  name = f"optical-test/{uuid.uuid4().hex[:8]}/test"
  folder = tmp_path / "irds_files" / name.replace("/", "_")
  folder.mkdir(parents=True)
  parts = []
  if docs is not None:
    (folder / "docs.tsv").write_text(docs, encoding="utf-8")
    parts.append(TsvDocs(LocalDownload(folder / "docs.tsv"), doc_cls=doc_cls or GenericDoc, lang="en"))
  if queries is not None:
    (folder / "queries.tsv").write_text(queries, encoding="utf-8")
    parts.append(TsvQueries(LocalDownload(folder / "queries.tsv"), query_cls=query_cls or GenericQuery, lang="sw"))
  if qrels is not None:
    (folder / "qrels.txt").write_text(qrels, encoding="utf-8")
    parts.append(TrecQrels(LocalDownload(folder / "qrels.txt"), {0: "not relevant", 1: "relevant"}))
  ir_datasets.registry.register(name, ir_datasets.datasets.base.Dataset(*parts))
  return name


DOCS = "d0\tRivers\tThe Nile is long.\nd1\tSeas\tThe sea is salty.\nd2\t\tNo title here.\nd3\tLakes\tA lake.\n"
QUERIES = "q0\tmto mrefu\nq1\tbahari ina chumvi\nq2\tswali lisilohukumiwa\nq3\tziwa\n"
# q2 is never judged; q3's only judgement names a document the corpus lacks; q9 is not a query; q1-d0 is judged twice.
QRELS = ("q0 0 d0 2\nq0 0 d1 0\nq1 0 d1 1\nq1 0 d0 -1\nq1 1 d1 3\nq3 0 d99 1\nq9 0 d0 1\n")


def test_queries_documents_and_qrels_are_read(tmp_path):
  name = register(tmp_path, docs=DOCS, queries=QUERIES, qrels=QRELS, doc_cls=TitledDoc)
  c = collections.irds_collection(name)
  assert c.name == name.replace("/", "_") and c.language == "sw" and c.english_queries is None
  assert c.documents == {"d0": "Rivers The Nile is long.", "d1": "Seas The sea is salty.", "d2": "No title here.",
                         "d3": "Lakes A lake."}
  # Grades as ir_datasets gives them (0 and -1 judged non-relevant, as read_qrels keeps them); a pair judged twice
  # keeps its highest grade; judgements of documents or queries the dataset lacks are dropped, as for files.
  assert c.qrels == {"q0": {"d0": 2, "d1": 0}, "q1": {"d1": 3, "d0": -1}}
  assert c.queries == {"q0": "mto mrefu", "q1": "bahari ina chumvi"}  # only judged queries
  assert name in c.description


def test_default_text_of_topic_and_document_types(tmp_path):
  """TREC-style topics have no `text`: their type's default_text() (the title) is the query; a document type's
  default_text() wins over its fields."""
  from ir_datasets.formats import TitleUrlTextDoc, TrecQuery
  name = register(tmp_path, docs="d0\tA title\thttp://x\tthe body\n",
                  queries="q0\tmto\tmaelezo marefu ya mto\tmasimulizi\n", qrels="q0 0 d0 1\n",
                  doc_cls=TitleUrlTextDoc, query_cls=TrecQuery)
  c = collections.irds_collection(name)
  assert c.queries == {"q0": "mto"} and c.documents == {"d0": "A title the body"}


def test_unknown_dataset_missing_parts_and_missing_package(tmp_path, monkeypatch):
  with pytest.raises(UserError, match=r"^irds:optical-test/no-such: ir_datasets has no dataset 'optical-test/no-such'"):
    collections.irds_collection("optical-test/no-such")
  with pytest.raises(UserError, match="has no dataset"):
    collections.check_names(["bible_sw_en", "irds:optical-test/no-such"])
  with pytest.raises(UserError, match="names no dataset"):
    collections.check_names(["irds:"])
  no_qrels = register(tmp_path, docs=DOCS, queries=QUERIES, doc_cls=TitledDoc)
  with pytest.raises(UserError, match="has no qrels"):
    collections.irds_collection(no_qrels)
  spaced = register(tmp_path, docs="d 0\tT\tx\n", queries="q0\ty\n", qrels="q0 0 d 1\n", doc_cls=TitledDoc)
  with pytest.raises(UserError, match="whitespace"):
    collections.irds_collection(spaced)
  unrelated = register(tmp_path, docs=DOCS, queries=QUERIES, qrels="q9 0 d0 1\n", doc_cls=TitledDoc)
  with pytest.raises(UserError, match="no qrels judgement"):
    collections.irds_collection(unrelated)
  # A file ir_datasets cannot read (as when a download fails): one line, saying the first use needs the network.
  unreadable = register(tmp_path, docs=DOCS, queries=QUERIES, qrels=QRELS, doc_cls=TitledDoc)
  (tmp_path / "irds_files" / unreadable.replace("/", "_") / "docs.tsv").unlink()
  with pytest.raises(UserError, match="could not read it.*network") as e:
    collections.irds_collection(unreadable)
  assert "\n" not in str(e.value)
  monkeypatch.setitem(sys.modules, "ir_datasets", None)  # as if not installed
  with pytest.raises(UserError, match=r"pip install 'optical-jax\[irds\]'"):
    collections.irds_collection("miracl/sw/dev")


def test_build_and_evaluate_config_take_irds_names(tmp_path):
  """collections.build reads irds: names in the order given, as evaluate passes them; in eval.collections an irds
  name (slashes and all) is never taken for a folder and mixes with BEIR folders and eval.files."""
  from optical_jax import evaluate
  name = register(tmp_path, docs=DOCS, queries=QUERIES, qrels=QRELS, doc_cls=TitledDoc)
  other = register(tmp_path, docs="x0\tT\tdoc\n", queries="y0\tswali\n", qrels="y0 0 x0 1\n", doc_cls=TitledDoc)
  assert collections.check_names([f"irds:{name}", "bible_sw_en"]) == [("irds", "", name, False),
                                                                       ("translation", "sw", None, False)]
  built = collections.build([f"irds:{other}", f"irds:{name}"])
  assert [c.name for c in built] == [other.replace("/", "_"), name.replace("/", "_")]
  assert built[1].qrels == collections.irds_collection(name).qrels
  beir = tmp_path / "mini"
  (beir / "qrels").mkdir(parents=True)
  (beir / "corpus.jsonl").write_text('{"_id": "b0", "text": "beir doc"}\n')
  (beir / "queries.jsonl").write_text('{"_id": "bq0", "text": "beir swali"}\n')
  (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nbq0\tb0\t1\n")
  config = config_lib.load_config("configs/tiny.py", [f"eval.collections={beir},irds:{name}"])
  assert [c.name for c in evaluate.load_collections(config.eval)] == [name.replace("/", "_"), "mini"]
  with pytest.raises(UserError, match="names no dataset"):
    config_lib.load_config("configs/tiny.py", ["eval.collections=irds:"])
