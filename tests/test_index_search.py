"""`optical-jax index` / `search`: the streamed top k over index shards equals an in-memory search of the same
vectors; rerank scores only the first stage's candidates; an interrupted build resumes; a changed corpus is refused."""
import json
import random

import numpy as np
import pytest

from optical_jax import cli, models
from optical_jax import config as config_lib
from optical_jax.data import encoding
from optical_jax.data.teacher import load_teacher
from optical_jax.errors import UserError
from optical_jax.retrieval import doc_index, trec
from optical_jax.retrieval.encode import encode_texts
from optical_jax.retrieval.search import rank

CONFIG = "configs/tiny.py:text"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 7))) for _ in range(60)]
  docs = {f"d{i}": " ".join(rng.sample(words, rng.randint(2, 9))) for i in range(23)}
  (root / "docs.jsonl").write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs.items()))
  queries = {f"q{i}": " ".join(rng.sample(words, 3)) for i in range(5)}
  (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
  student = encoding.load_encoder("random", random_dims={"hidden_size": 32}, seed=5)
  models.save_pretrained(student, root / "student")
  return root, docs, queries


def _config():
  return config_lib.load_config(CONFIG, ["data.bitext=unused.tsv"])


def test_streamed_search_equals_in_memory_search_and_rerank_keeps_candidates(corpus, tmp_path):
  root, docs, queries = corpus
  out = tmp_path / "index"
  assert cli.main(["index", "--config", CONFIG, "--config.data.bitext=unused.tsv", "--collection",
                   str(root / "docs.jsonl"), "--out", str(out), "--docs-per-shard", "7"]) == 0
  index = doc_index.DocIndex(str(out), verify=True)
  assert index.num_docs == 23 and len(index.manifest["shards"]) == 4 and index.manifest["complete"]
  config = _config()
  teacher = load_teacher(config)
  student = models.from_pretrained(root / "student")
  ids = sorted(docs)
  d = encode_texts(teacher, [docs[i] for i in ids], prefix="", max_len=48, batch_size=64, head=False)
  q = encode_texts(student, list(queries.values()), prefix="", max_len=48, batch_size=64)
  for scorer in ("maxsim", "pooled"):
    run_path = tmp_path / f"{scorer}.run"
    assert cli.main(["search", "--index", str(out), "--student", str(root / "student"), "--queries",
                     str(root / "queries.tsv"), "--run", str(run_path), "--k", "5", "--scorer", scorer]) == 0
    run = trec.read_run(run_path)
    scores, rows = rank(q, d, scorer, k=5)
    for i, qid in enumerate(queries):
      expected = {ids[r]: float(s) for s, r in zip(scores[i], rows[i])}
      assert list(run[qid]) == list(expected)  # same documents in the same order
      np.testing.assert_allclose([run[qid][x] for x in expected], list(expected.values()), atol=2e-3)
  # Rerank: only the first stage's candidates (one unknown to the index), in the full search's order.
  first = {qid: {"d3": 3.0, "d11": 2.0, "d20": 1.0, "nope": 0.5} for qid in queries}
  trec.write_run(tmp_path / "first.run", first, "bm25")
  assert cli.main(["search", "--index", str(out), "--student", str(root / "student"), "--queries",
                   str(root / "queries.tsv"), "--run", str(tmp_path / "re.run"), "--rerank",
                   str(tmp_path / "first.run"), "--depth", "3"]) == 0
  reranked = trec.read_run(tmp_path / "re.run")
  full = rank(q, d, "maxsim", k=23)
  for i, qid in enumerate(queries):
    order = [ids[r] for r in full[1][i] if ids[r] in ("d3", "d11", "d20")]
    assert list(reranked[qid]) == order


def test_interrupted_build_resumes_and_a_changed_corpus_is_refused(corpus, tmp_path):
  root, docs, _ = corpus
  config = _config()
  teacher = load_teacher(config)
  encode = lambda texts: encode_texts(teacher, texts, prefix="", max_len=48, batch_size=64, head=False)
  identity = {"teacher": "random", "teacher_checksum": "x", "prefix": "", "max_len": 48, "maxsim_tokens": "content",
              "dim": 32}
  documents = sorted(docs.items())
  calls = []

  def failing(texts):
    calls.append(len(texts))
    if len(calls) == 3:
      raise RuntimeError("killed")
    return encode(texts)

  with pytest.raises(RuntimeError):
    doc_index.build(str(tmp_path / "a"), documents, failing, identity=identity, docs_per_shard=5)
  manifest = doc_index.build(str(tmp_path / "a"), documents, encode, identity=identity, docs_per_shard=5)
  whole = doc_index.build(str(tmp_path / "b"), documents, encode, identity=identity, docs_per_shard=5)
  assert manifest["complete"] and manifest["shards"] == whole["shards"]  # same files, same hashes
  with pytest.raises(UserError, match="documents_sha256"):
    doc_index.build(str(tmp_path / "a"), documents[:-1], encode, identity=identity, docs_per_shard=5)
  with pytest.raises(UserError, match="not an index"):
    doc_index.DocIndex(str(tmp_path / "nothing"))


def test_evaluate_reads_an_index_instead_of_encoding(corpus, tmp_path):
  """eval.index: the same runs as encoding the documents again (the index stores what evaluation computes)."""
  from optical_jax import evaluate
  from optical_jax.data import collections as collections_lib
  from optical_jax.retrieval.evaluation import System
  root, docs, queries = corpus
  (root / "qrels.tsv").write_text("".join(f"q{i}\t0\td{3 * i}\t1\n" for i in range(5)))
  out = tmp_path / "index"
  assert cli.main(["index", "--config", CONFIG, "--config.data.bitext=unused.tsv", "--collection",
                   str(root / "docs.jsonl"), "--out", str(out), "--docs-per-shard", "9"]) == 0
  collection = collections_lib.file_collection(str(root / "queries.tsv"), str(root / "docs.jsonl"),
                                               str(root / "qrels.tsv"), name="mine")
  student = models.from_pretrained(root / "student")
  runs = {}
  for name, index in (("encoded", ""), ("indexed", str(out))):
    config = config_lib.load_config(CONFIG, ["data.bitext=unused.tsv", f"eval.index={index}", "eval.k=10"])
    teacher = load_teacher(config)
    summary = evaluate.run_evaluation(config, [collection], [System("s", student)], teacher, tmp_path / name)
    assert summary["collections"]["mine"]["index"] == index
    runs[name] = {s: trec.read_run(tmp_path / name / f"s_{s}" / "mine.run") for s in ("maxsim", "pooled")}
  for scorer, run in runs["encoded"].items():
    for qid, ranked in run.items():
      assert list(runs["indexed"][scorer][qid]) == list(ranked)
      np.testing.assert_allclose(list(runs["indexed"][scorer][qid].values()), list(ranked.values()), atol=1e-5)
  # Two indexes that each hold part of the documents (one per collection, say) serve together; the first to hold a
  # document is read. Neither alone covers them.
  ids = sorted(docs)
  halves = [tmp_path / "first", tmp_path / "second"]
  for half, part in zip(halves, (ids[:15], ids[10:])):
    (root / f"{half.name}.jsonl").write_text("".join(json.dumps({"id": d, "text": docs[d]}) + "\n" for d in part))
    assert cli.main(["index", "--config", CONFIG, "--config.data.bitext=unused.tsv", "--collection",
                     str(root / f"{half.name}.jsonl"), "--out", str(half), "--docs-per-shard", "4"]) == 0
  opened = [doc_index.DocIndex(str(h)) for h in halves]
  assert doc_index.gather_from(opened[1:], ids) is None and doc_index.gather_from(opened, []) is None
  (tokens, mask, pooled), read = doc_index.gather_from(opened, ids)
  whole = doc_index.DocIndex(str(out)).gather(ids)
  assert [x.root for x in read] == [str(h) for h in halves]
  np.testing.assert_array_equal(mask, whole[1])
  np.testing.assert_array_equal(tokens[mask], whole[0][whole[1]])
  np.testing.assert_array_equal(pooled, whole[2])
  config = config_lib.load_config(CONFIG, ["data.bitext=unused.tsv", f"eval.index={halves[0]},{halves[1]}",
                                           "eval.k=10"])
  summary = evaluate.run_evaluation(config, [collection], [System("s", student)], load_teacher(config),
                                    tmp_path / "two")
  assert summary["collections"]["mine"]["index"] == f"{halves[0]},{halves[1]}"
  for scorer, run in runs["indexed"].items():
    assert trec.read_run(tmp_path / "two" / f"s_{scorer}" / "mine.run") == run
  # An index of another token rule, or passages asked of whole-document vectors, is refused by name.
  for override, message in (("eval.maxsim_tokens=all", "maxsim_tokens"), ("eval.doc_window=5", "doc_window")):
    config = config_lib.load_config(CONFIG, ["data.bitext=unused.tsv", f"eval.index={out}", override])
    with pytest.raises(UserError, match=message):
      evaluate.open_indexes(config, load_teacher(config))
