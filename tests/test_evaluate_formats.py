"""One student, trained from a non-demo config (configs/xlmr_base.py shrunk by overrides), evaluated in one
`optical-jax evaluate` on the same collection written three ways: a BEIR folder, a TREC triple (eval.files) and an
ir_datasets dataset (`irds:NAME`, registered from fixture files; nothing downloads)."""
import importlib.util
import json
import pathlib
import uuid

import pytest

from optical_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ir_datasets") is None,
                                reason="ir-datasets is not installed (extra irds)")

# configs/xlmr_base.py (XLM-R architecture, OT + ranking loss, IDF marginals, relative epsilon) at toy size.
TINY_XLMR = ["student.init=random", "student.vocab_size=512", "student.hidden_size=64", "student.num_layers=1",
             "student.num_heads=4", "student.intermediate_size=128", "student.max_position_embeddings=66",
             "student.projection_dim=32", "student.dtype=float32", "teacher.path=random", "teacher.dim=32",
             "data.max_len_student=32", "data.max_len_teacher=32", "data.length_buckets=()", "data.length_group=0",
             "data.dev_pairs=0", "ot.iterations=10", "train.batch_size=8", "train.steps=2", "train.warmup_steps=1",
             "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=0", "eval.baselines="]


def _write_three_ways(root: pathlib.Path, pairs: list[tuple[str, str]]) -> dict[str, str]:
  """The same queries, titled documents and graded qrels as a BEIR folder, a TREC triple and ir_datasets files."""
  queries = {f"q{i}": lr for i, (lr, _) in enumerate(pairs)}
  docs = {f"d{i}": (f"T{i % 3}", en) for i, (_, en) in enumerate(pairs)}
  n = len(pairs)
  qrels = [(f"q{i}", f"d{i}", 1 + i % 2) for i in range(n)] + [(f"q{i}", f"d{(i + 1) % n}", 0) for i in range(0, n, 4)]
  beir = root / "beir_toy"
  (beir / "qrels").mkdir(parents=True)
  (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n"
                                             for d, (t, x) in docs.items()))
  (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x in queries.items()))
  (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n"
                                                                                    for q, d, g in qrels))
  trec = root / "trec"
  trec.mkdir()
  (trec / "queries.tsv").write_text("".join(f"{q}\t{x}\n" for q, x in queries.items()))
  (trec / "docs.jsonl").write_text("".join(json.dumps({"id": d, "title": t, "text": x}) + "\n"
                                           for d, (t, x) in docs.items()))
  (trec / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in qrels))
  irds = root / "irds"
  irds.mkdir()
  (irds / "docs.tsv").write_text("".join(f"{d}\t{t}\t{x}\n" for d, (t, x) in docs.items()))
  (irds / "queries.tsv").write_text("".join(f"{q}\t{x}\n" for q, x in queries.items()))
  (irds / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in qrels))
  return {"beir": str(beir), "trec": f"{trec}/queries.tsv,{trec}/docs.jsonl,{trec}/qrels.txt", "irds": str(irds)}


def _register_irds(folder: str) -> str:
  import ir_datasets
  from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
  from ir_datasets.util import LocalDownload
  from typing import NamedTuple

  class TitledDoc(NamedTuple):
    doc_id: str
    title: str
    text: str

  name = f"optical-test/{uuid.uuid4().hex[:8]}/test"
  folder = pathlib.Path(folder)
  ir_datasets.registry.register(name, ir_datasets.datasets.base.Dataset(
      TsvDocs(LocalDownload(folder / "docs.tsv"), doc_cls=TitledDoc, lang="en"),
      TsvQueries(LocalDownload(folder / "queries.tsv"), lang="sw"),
      TrecQrels(LocalDownload(folder / "qrels.txt"), {0: "not relevant", 1: "relevant", 2: "highly relevant"})))
  return name


@pytest.mark.slow
def test_one_student_scores_alike_on_beir_trec_and_irds_copies(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "ir_datasets_home"))  # before ir_datasets' first import
  monkeypatch.setenv("IR_DATASETS_TMP", str(tmp_path / "ir_datasets_tmp"))
  from optical_jax.demo import synthetic
  files = synthetic.write_files(tmp_path / "data", train_pairs=64, test_pairs=12)
  test_pairs = synthetic.sentences(64 + 12, 0)[64:]  # the held-out pairs write_files put in queries/documents
  where = _write_three_ways(tmp_path / "eval", test_pairs)
  name = _register_irds(where["irds"])  # in this process's registry: evaluate runs in-process below
  workdir = tmp_path / "run"
  overrides = [f"--config.{o}" for o in TINY_XLMR] + [
      f"--config.data.bitext={files['bitext.tsv']}", f"--config.eval.collections={where['beir']},irds:{name}",
      f"--config.eval.files=trec_toy={where['trec']}"]
  config = f"{REPO / 'configs' / 'xlmr_base.py'}:random"
  for command in ("precompute-teacher", "train", "evaluate"):
    assert cli.main([command, "--config", config, "--workdir", str(workdir), *overrides]) == 0, capsys.readouterr().err
  summary = json.loads((workdir / "eval" / "metrics.json").read_text())
  irds_name = name.replace("/", "_")
  assert set(summary["collections"]) == {irds_name, "beir_toy", "trec_toy"}
  assert summary["student_step"] == 2
  sizes = {c: (v["queries"], v["documents"], v["relevant"]) for c, v in summary["collections"].items()}
  assert set(sizes.values()) == {(12, 12, 15)}, sizes
  assert summary["collections"][irds_name]["language"] == "sw"
  (system,) = {s.rsplit("_", 1)[0] for s in summary["systems"]}
  for scorer in ("maxsim", "pooled"):
    per = summary["systems"][f"{system}_{scorer}"]
    assert set(per) == set(sizes)
    assert set(per["beir_toy"]) >= {"map", "ndcg@10", "mrr@10", "recall@100"}
    # Same texts, ids and grades, read by three readers: the same runs, so the same figures.
    assert per["beir_toy"] == per["trec_toy"] == per[irds_name], per
    runs = {c: (workdir / "eval" / f"{system}_{scorer}" / f"{c}.run").read_text().split("\n") for c in sizes}
    assert runs["beir_toy"] == runs["trec_toy"] == runs[irds_name]
    assert (workdir / "eval" / f"{irds_name}.qrels").read_text() == (workdir / "eval" / "beir_toy.qrels").read_text()
