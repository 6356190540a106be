"""`optical-jax export --format`: transformers and sentence-transformers load the export and give optical_jax's own
vectors (to 1e-4), and the PyLate layout gives its MaxSim scores (to 1e-4) in sentence-transformers and in PyLate;
optical_jax.json names the prompts, the paired teacher and the MaxSim token rule; the model card carries the
evaluation table."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from optical_jax import cli, models
from optical_jax.data import encoding
from optical_jax.retrieval.encode import encode_texts

pytest.importorskip("sentence_transformers")

TEXTS = ["habari ya asubuhi", "mungu ni mwema sana", "x", "neno la kwanza na la pili na la tatu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny student trained 4 steps on a generated file through the real text path, then evaluated."""
  from optical_jax.demo import synthetic
  root = tmp_path_factory.mktemp("export")
  files = synthetic.write_files(root / "data", train_pairs=64, test_pairs=16)
  workdir = root / "run"
  overrides = [f"--config.data.bitext={files['bitext.tsv']}", "--config.train.steps=4", "--config.train.log_every=2",
               "--config.train.checkpoint_every=4", "--config.train.warmup_steps=1", "--config.student.prefix=q: ",
               "--config.teacher.passage_prefix=p: ", "--config.eval.baselines=",
               f"--config.eval.files=toy={files['queries.tsv']},{files['documents.jsonl']},{files['qrels.txt']}"]
  for command in ("precompute-teacher", "train", "evaluate"):
    assert cli.main([command, "--config", "configs/tiny.py:text", "--workdir", str(workdir), *overrides]) == 0
  return workdir


def test_sentence_transformers_export_gives_our_pooled_vectors(trained, tmp_path):
  from sentence_transformers import SentenceTransformer
  out = tmp_path / "st"
  assert cli.main(["export", "--workdir", str(trained), "--out", str(out), "--format", "sentence-transformers"]) == 0
  ours = models.from_pretrained(out)
  assert ours.config.projection_dim == 32  # configs/tiny.py's head (hidden 64 -> teacher dim 32) is exported
  expected = encode_texts(ours, TEXTS, prefix="q: ", max_len=48, batch_size=8).pooled
  model = SentenceTransformer(str(out), device="cpu")
  got = model.encode(TEXTS, convert_to_numpy=True)  # the default prompt is the student's prefix
  got = got / np.linalg.norm(got, axis=1, keepdims=True)
  np.testing.assert_allclose(got, expected, atol=1e-4)
  meta = json.loads((out / "optical_jax.json").read_text())
  assert meta["query_prefix"] == "q: " and meta["passage_prefix"] == "p: " and meta["maxsim_tokens"] == "content"
  assert meta["teacher"]["path"] == "random" and meta["teacher"]["dim"] == 32 and meta["step"] == 4
  assert model.prompts["document"] == "p: "
  card = (out / "README.md").read_text()
  assert "| toy |" in card and "MaxSim" in card


def test_hf_export_loads_in_transformers_with_the_same_hidden_states(trained, tmp_path):
  import torch
  from transformers import AutoModel, AutoTokenizer
  out = tmp_path / "hf"
  assert cli.main(["export", "--workdir", str(trained), "--out", str(out)]) == 0
  ours = models.from_pretrained(out)
  ids, mask = ours.tokenize(TEXTS, 48, prefix="q: ")
  expected = np.asarray(ours(ids, mask))
  tokenizer, model = AutoTokenizer.from_pretrained(str(out)), AutoModel.from_pretrained(str(out)).eval()
  batch = tokenizer(["q: " + t for t in TEXTS], padding="max_length", max_length=48, return_tensors="pt")
  np.testing.assert_array_equal(batch["input_ids"].numpy(), ids)
  with torch.no_grad():
    got = model(**batch).last_hidden_state.numpy()
  real = mask[..., None] > 0
  np.testing.assert_allclose(np.where(real, got, 0), np.where(real, expected, 0), atol=1e-4)
  assert json.loads((out / "optical_jax.json").read_text())["format"] == "hf"
  assert not (out / "modules.json").exists()


DOCS = ["good morning", "god is very good", "the first word and the second and the third", "a",
        "news of the day, told twice: news of the day"]


def _pylate_export_and_our_scores(trained, out):
  """Exports `trained` in the PyLate layout to `out`; returns (queries, our query encodings, the teacher's document
  encodings, our MaxSim scores) for the tests to compare with what the other library computes."""
  from optical_jax import config as config_lib
  from optical_jax.data.teacher import load_teacher
  from optical_jax.retrieval import search
  assert cli.main(["export", "--workdir", str(trained), "--out", str(out), "--format", "pylate"]) == 0
  queries = TEXTS + ["neno " * 30]  # the last is cut to 48 tokens on both sides, its final special token kept
  q = encode_texts(models.from_pretrained(out), queries, prefix="q: ", max_len=48, batch_size=8)
  teacher = load_teacher(config_lib.from_json(trained / "config.json"))
  d = encode_texts(teacher, DOCS, prefix="p: ", max_len=48, batch_size=8, head=False)  # as evaluation encodes them
  return queries, q, d, np.asarray(search.maxsim_scores(q.tokens, q.maxsim_mask, d.tokens, d.maxsim_mask))


def test_pylate_export_gives_our_maxsim_scores_in_multi_vector_encoder(trained, tmp_path):
  """sentence-transformers' MultiVectorEncoder reads PyLate checkpoints (it maps pylate.models.Dense.Dense and
  PyLate's config knobs onto its own modules); PyLate itself is tested in its own environment below."""
  from sentence_transformers import MultiVectorEncoder
  out = tmp_path / "pylate"
  queries, q, d, expected = _pylate_export_and_our_scores(trained, out)

  model = MultiVectorEncoder(str(out), device="cpu")
  assert model[0].query_expansion is None and model.prompts == {"query": "q: ", "document": "p: "}
  meta = json.loads((out / "optical_jax.json").read_text())
  window = meta["query_token_slice"]
  assert meta["format"] == "pylate" and (window["start"], window["stop"]) == (4, -1)  # [CLS], "q", ":", " "
  vectors = model.encode_query(queries, convert_to_numpy=True)  # every real token, prompt included
  assert [len(v) for v in vectors] == list(q.mask.sum(1))
  scored = [v[window["start"]:window["stop"]] for v in vectors]
  scored = [s if len(s) else v for s, v in zip(scored, vectors)]
  assert [len(s) for s in scored] == list(q.maxsim_mask.sum(1))
  docs = [t[m].astype(np.float32) for t, m in zip(d.tokens, d.maxsim_mask)]
  docs = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in docs]
  got = model.similarity(scored, docs, length_normalize=True).cpu().numpy()  # "meanmaxsim": our mean reduction
  np.testing.assert_allclose(got, expected, atol=1e-4)
  every_token = model.similarity(vectors, docs, length_normalize=True).cpu().numpy()
  assert np.abs(every_token - expected).max() > 1e-3  # the slice is what makes the scores ours
  summed = model.similarity(scored, docs).cpu().numpy()  # PyLate's MaxSim: the sum, the same ranking
  np.testing.assert_allclose(summed / q.maxsim_mask.sum(1, keepdims=True), expected, atol=1e-4)

  # What PyLate reads: its own layout, with its defaults ([Q]/[D] tokens, [MASK] expansion, punctuation) off.
  settings = json.loads((out / "config_sentence_transformers.json").read_text())
  assert settings["model_type"] == "ColBERT" and settings["query_prefix"] == settings["document_prefix"] == ""
  assert settings["do_query_expansion"] is False and settings["skiplist_words"] == []
  assert settings["query_length"] == settings["document_length"] == 48
  assert [m["type"] for m in json.loads((out / "modules.json").read_text())] == [
      "sentence_transformers.models.Transformer", "pylate.models.Dense.Dense"]
  card = (out / "README.md").read_text()
  assert "| toy |" in card and "vectors[4:-1]" in card and "query encoder" in card and "`random`" in card


def _pylate_python() -> str | None:
  """The PyLate environment's interpreter (`make test` builds it: tests/pylate_env/requirements.txt)."""
  python = os.environ.get("OPTICAL_JAX_PYLATE_PYTHON")
  if python and os.path.exists(python):
    return python
  if os.environ.get("CI"):
    pytest.fail("CI must run the PyLate test: OPTICAL_JAX_PYLATE_PYTHON is not set (make test sets it)")
  return None


def test_pylate_export_loads_in_pylate_colbert(trained, tmp_path):
  """PyLate proper, in its own environment (its pins conflict with ours): pylate.models.ColBERT loads the export and
  gives our query token vectors and, through pylate.scores, our MaxSim scores (PyLate's sum = our mean x length)."""
  python = _pylate_python()
  if python is None:
    pytest.skip("no PyLate environment: `make test` builds one, or set OPTICAL_JAX_PYLATE_PYTHON")
  out = tmp_path / "pylate"
  queries, q, d, expected = _pylate_export_and_our_scores(trained, out)
  docs = [t[m].astype(np.float32) for t, m in zip(d.tokens, d.maxsim_mask)]
  docs = [(t / np.linalg.norm(t, axis=1, keepdims=True)).tolist() for t in docs]
  window = json.loads((out / "optical_jax.json").read_text())["query_token_slice"]
  given = tmp_path / "in.json"
  given.write_text(json.dumps({"queries": queries, "documents": docs, "slice": [window["start"], window["stop"]]}))
  script = pathlib.Path(__file__).parent / "pylate_env" / "encode_queries.py"
  result = subprocess.run([python, str(script), str(out), str(given), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  assert str(got["version"]) == "1.6.0" and json.loads(str(got["prompts"]))["query"] == "q: "
  for i, (tokens, mask) in enumerate(zip(q.tokens, q.maxsim_mask)):
    vectors = got[f"q{i}"]
    assert len(vectors) == q.mask[i].sum()  # every real token, prompt included: no expansion, no skiplist
    mine = tokens[mask].astype(np.float32)
    # 2e-4 per coordinate: PyTorch's and XLA's float32 arithmetic after the head and L2 norm (sentence-transformers'
    # MultiVectorEncoder differs from us by the same 1.6e-4); the scores, the contract, agree to 1e-4.
    np.testing.assert_allclose(vectors[window["start"]:window["stop"]],
                               mine / np.linalg.norm(mine, axis=1, keepdims=True), atol=2e-4)
  np.testing.assert_allclose(got["scores"] / q.maxsim_mask.sum(1, keepdims=True), expected, atol=1e-4)
