"""A ColBERT checkpoint as the teacher: a PyLate layout (written by export_formats.write_pylate, or by hand with the
transformer in a subfolder and two Dense modules) and a Stanford ColBERT directory load with their linear head as
the projection head, give the document vectors of sentence-transformers' MultiVectorEncoder (to 1e-4, before its
normalisation), and the head is applied wherever the teacher encodes (store, evaluation) with its out_features as
the dim; a plain HF teacher is unchanged."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
import safetensors.numpy

from optical_jax import config as config_lib
from optical_jax import export_formats, models
from optical_jax.data import collections as collections_lib
from optical_jax.data import encoding, teacher_store
from optical_jax.data import teacher as teacher_lib
from optical_jax.errors import UserError
from optical_jax.retrieval import evaluation

pytest.importorskip("sentence_transformers")

HIDDEN, DIM = 32, 16
DOCS = ["good morning", "god is very good", "the first word and the second and the third", "a"]
MAX_LEN = 32


def _encoders(projection_dim: int = DIM, seed: int = 3):
  """(a random tiny encoder with a head whose bias is not zero, the same encoder without its head)."""
  base = encoding.load_encoder("random", random_dims={"hidden_size": HIDDEN, "max_position_embeddings": 64},
                               seed=seed)
  with_head = models.random_encoder(dataclasses.replace(base.config, projection_dim=projection_dim), seed=seed,
                                    tokenizer=base.tokenizer)
  params = dict(with_head.params)
  rng = np.random.default_rng(seed)
  params["projection"] = {"kernel": np.asarray(params["projection"]["kernel"]) * 10,
                          "bias": rng.normal(0, 0.1, projection_dim).astype(np.float32)}
  with_head.params = params
  plain = models.Encoder(models.BertEncoder(base.config), {k: v for k, v in params.items() if k != "projection"},
                         base.config, base.tokenizer, with_head.extra)
  return with_head, plain


def _save_plain(plain, out, markers=()):
  """The HF directory of the headless encoder; `markers` added to its tokenizer as PyLate adds [Q] / [D] (ids
  inside the tiny vocabulary, so no embedding resize). The byte tokenizer is a shared cached object: copy it."""
  from transformers import AutoTokenizer
  models.save_pretrained(plain, out)
  if markers:
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.add_tokens(list(markers))
    assert max(tokenizer.convert_tokens_to_ids(list(markers))) < plain.config.vocab_size
    tokenizer.save_pretrained(str(out))


def _pylate_settings(out, **changes):
  file = out / "config_sentence_transformers.json"
  settings = json.loads(file.read_text())
  settings.update(changes)
  file.write_text(json.dumps(settings, indent=2))


def _metadata():
  return {"max_len_query": MAX_LEN, "max_len_doc": MAX_LEN, "query_prefix": "", "passage_prefix": "",
          "maxsim_tokens": "content"}


@pytest.fixture(scope="module")
def pylate_dir(tmp_path_factory):
  """write_pylate's layout (transformer in the root, one Dense) with PyLate's "[Q] " / "[D] " marker tokens."""
  with_head, plain = _encoders()
  out = tmp_path_factory.mktemp("pylate")
  _save_plain(plain, out, markers=("[Q] ", "[D] "))
  export_formats.write_pylate(with_head, out, _metadata())
  _pylate_settings(out, query_prefix="[Q] ", document_prefix="[D] ", prompts={"query": "", "document": ""})
  return out, with_head


def _two_dense_dir(root):
  """By hand: the transformer in 0_Transformer, then two Dense modules (32 -> 24 with bias, 24 -> 16 without)."""
  _, plain = _encoders(seed=7)
  _save_plain(plain, root / "0_Transformer")
  rng = np.random.default_rng(7)
  layers = [(HIDDEN, 24, True), (24, DIM, False)]
  modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]
  for i, (d_in, d_out, bias) in enumerate(layers, start=1):
    folder = root / f"{i}_Dense"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"in_features": d_in, "out_features": d_out, "bias": bias,
                                                    "activation_function": "torch.nn.modules.linear.Identity"}))
    weights = {"linear.weight": rng.normal(0, 0.3, (d_out, d_in)).astype(np.float32)}
    if bias:
      weights["linear.bias"] = rng.normal(0, 0.1, d_out).astype(np.float32)
    (folder / "model.safetensors").write_bytes(safetensors.numpy.save(weights))
    modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "pylate.models.Dense.Dense"})
  (root / "modules.json").write_text(json.dumps(modules))
  (root / "config_sentence_transformers.json").write_text(json.dumps(
      {"model_type": "ColBERT", "query_prefix": "", "document_prefix": "", "prompts": {"document": "doc: "},
       "do_query_expansion": False, "skiplist_words": [], "query_length": MAX_LEN, "document_length": MAX_LEN}))
  return root


def _stanford_dir(root):
  """An HF directory (bert.* keys) whose weights also hold ColBERT's linear.weight [16, 32], artifact.metadata, and
  a WordPiece tokenizer whose vocabulary has BERT's [unused0] / [unused1] (ColBERT's markers)."""
  from transformers import BertTokenizerFast
  _, plain = _encoders(seed=11)
  models.save_pretrained(plain, root)
  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab = (["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[", "]", "#"] + list(letters)
           + [f"##{c}" for c in letters + "0123456789"] + ["good", "the", "and", "word", "unused", "##1"])
  (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
  BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(str(root))
  state = safetensors.numpy.load((root / "model.safetensors").read_bytes())
  state = {"bert." + k: v for k, v in state.items()}
  state["linear.weight"] = np.random.default_rng(11).normal(0, 0.3, (DIM, HIDDEN)).astype(np.float32)
  (root / "model.safetensors").write_bytes(safetensors.numpy.save(state, metadata={"format": "pt"}))
  hf_config = json.loads((root / "config.json").read_text())
  hf_config["architectures"] = ["HF_ColBERT"]
  (root / "config.json").write_text(json.dumps(hf_config))
  # No punctuation skiplist: the byte tokenizer spells "[unused1]" with "[" and "]" pieces, and we keep every token.
  (root / "artifact.metadata").write_text(json.dumps(
      {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "doc_maxlen": MAX_LEN, "query_maxlen": MAX_LEN,
       "mask_punctuation": False, "dim": DIM}))
  return root


def _multi_vector_documents(path, docs):
  from sentence_transformers import MultiVectorEncoder
  model = MultiVectorEncoder(str(path), device="cpu")
  return model, [np.asarray(v, np.float32) for v in model.encode_document(docs, convert_to_numpy=True)]


def _ours(encoder, docs, prefix):
  ids, mask = encoder.tokenize(docs, MAX_LEN, prefix=prefix)
  out = np.asarray(encoder(ids, mask, head=teacher_lib.teacher_head(encoder)))
  return ids, mask, [o[m > 0] for o, m in zip(out, mask)]


def _assert_same_directions(ours, theirs):
  assert [len(o) for o in ours] == [len(t) for t in theirs]
  for o, t in zip(ours, theirs):
    np.testing.assert_allclose(o / np.linalg.norm(o, axis=1, keepdims=True), t, atol=1e-4)


def _config(path, dim=DIM, **teacher):
  config = config_lib.load_config("configs/tiny.py:text", ["data.bitext=unused.tsv"])
  config.teacher.path, config.teacher.dim = str(path), dim
  for key, value in teacher.items():
    config.teacher[key] = value
  return config


def test_pylate_teacher_gives_multi_vector_encoder_document_vectors(pylate_dir, caplog):
  path, with_head = pylate_dir
  with caplog.at_level("WARNING", logger="optical_jax"):
    teacher = teacher_lib.load_teacher(_config(path, query_prefix="", passage_prefix="[D] "))
  # Advised, never changed: the query prefix differs from the declared one, the passage prefix does not.
  assert "set --config.teacher.query_prefix='[Q] '" in caplog.text and "teacher.passage_prefix" not in caplog.text
  assert teacher.config.projection_dim == DIM and not teacher.config.normalize
  assert teacher_lib.teacher_head(teacher) and teacher_lib.teacher_dim(teacher) == DIM
  head = with_head.params["projection"]
  np.testing.assert_array_equal(np.asarray(teacher.params["projection"]["kernel"]), head["kernel"])
  np.testing.assert_array_equal(np.asarray(teacher.params["projection"]["bias"]), head["bias"])
  colbert = teacher.extra["colbert"]
  assert colbert["format"] == "pylate" and colbert["document_prefix"] == "[D] " and colbert["query_prefix"] == "[Q] "

  ids, mask, ours = _ours(teacher, DOCS, "[D] ")
  marker = teacher.tokenizer.convert_tokens_to_ids("[D] ")
  assert (ids[:, 1] == marker).all() and ids[0, 2] != marker  # one marker piece after [CLS], as PyLate inserts it
  model, theirs = _multi_vector_documents(path, DOCS)
  assert model.prompts["document"] == "[D] "
  _assert_same_directions(ours, theirs)
  # The head is what makes them equal: the hidden states are another space.
  hidden = np.asarray(teacher(ids, mask))
  assert hidden.shape[-1] == HIDDEN and ours[0].shape[-1] == DIM


def test_subfolder_transformer_and_a_chain_of_dense_modules(tmp_path):
  path = _two_dense_dir(tmp_path / "two_dense")
  teacher = models.from_pretrained(path)
  assert teacher.config.projection_dim == DIM and teacher.extra["model_dir"].endswith("0_Transformer")
  assert teacher.extra["colbert"]["document_prefix"] == "doc: " and len(teacher.extra["colbert"]["head_files"]) == 4
  _, _, ours = _ours(teacher, DOCS, "doc: ")
  _, theirs = _multi_vector_documents(path, DOCS)
  _assert_same_directions(ours, theirs)
  identity = teacher_lib.teacher_identity(_config(path), teacher)
  assert identity["dim"] == DIM and len(identity["teacher_checksum"]) == 64


def test_stanford_colbert_directory_loads_with_its_head(tmp_path):
  path = _stanford_dir(tmp_path / "stanford")
  teacher = models.from_pretrained(path)
  state = safetensors.numpy.load((path / "model.safetensors").read_bytes())
  np.testing.assert_array_equal(np.asarray(teacher.params["projection"]["kernel"]), state["linear.weight"].T)
  assert not np.asarray(teacher.params["projection"]["bias"]).any()
  colbert = teacher.extra["colbert"]
  assert colbert["format"] == "stanford" and colbert["document_prefix"] == "[unused1] "
  ids, _, ours = _ours(teacher, DOCS, "[unused1] ")
  # The marker is ColBERT's single vocabulary id, not the pieces "[", "unused", "##1", "]" a plain tokenizer makes.
  assert (ids[:, 1] == 2).all() and ids[0, 2] == teacher.tokenizer.convert_tokens_to_ids("good")
  model, theirs = _multi_vector_documents(path, DOCS)
  assert model.prompts["document"] == "[unused1] "
  _assert_same_directions(ours, theirs)


def test_plain_teacher_is_unchanged_and_an_identity_dense_is_no_head(tmp_path):
  _, plain = _encoders()
  models.save_pretrained(plain, tmp_path / "plain")
  teacher = models.from_pretrained(tmp_path / "plain")
  assert not teacher_lib.teacher_head(teacher) and "colbert" not in teacher.extra
  identity = teacher_lib.teacher_identity(_config(tmp_path / "plain", dim=HIDDEN), teacher)
  assert identity["dim"] == HIDDEN
  assert identity["teacher_checksum"] == hashlib.sha256((tmp_path / "plain" / "model.safetensors").read_bytes()
                                                        ).hexdigest()
  # `export --format pylate` of a student without a head writes an identity Dense: read back, still no head.
  models.save_pretrained(plain, tmp_path / "export")
  export_formats.write_pylate(plain, tmp_path / "export", _metadata())
  assert models.from_pretrained(tmp_path / "export").config.projection_dim == 0


def test_refusals(pylate_dir, tmp_path):
  path, _ = pylate_dir
  with pytest.raises(UserError, match="conflicts with the ColBERT head"):
    models.from_pretrained(path, projection_dim=8)
  bad = _two_dense_dir(tmp_path / "tanh")
  settings = json.loads((bad / "2_Dense" / "config.json").read_text())
  (bad / "2_Dense" / "config.json").write_text(json.dumps(dict(settings, activation_function="torch.nn.Tanh")))
  with pytest.raises(UserError, match="only a linear"):
    models.from_pretrained(bad)


def test_store_and_evaluation_apply_the_head(pylate_dir, tmp_path, monkeypatch):
  from optical_jax import precompute
  path, _ = pylate_dir
  pairs = [(f"p{i}", f"maneno {i} ya leo", f"words {i} of the day" + " again" * (i % 3)) for i in range(10)]
  (tmp_path / "pairs.tsv").write_text("id\tsource\ttarget\n" + "".join("\t".join(p) + "\n" for p in pairs))
  config = config_lib.load_config("configs/tiny.py:text", [f"data.bitext={tmp_path / 'pairs.tsv'}",
                                                           "data.teacher_dtype=float32"])
  config.teacher.path, config.teacher.dim = str(path), DIM
  config.teacher.query_prefix, config.teacher.passage_prefix = "[Q] ", "[D] "
  manifest = precompute.precompute_teacher(config, str(tmp_path / "run"))
  assert manifest.complete and manifest.dim == DIM
  teacher = teacher_lib.load_teacher(config)
  store = teacher_store.TeacherStore.open(tmp_path / "run" / "teacher_store",
                                          expect=teacher_lib.teacher_identity(config, teacher))
  rows = np.asarray([store.index_of(p[0]) for p in pairs])
  tokens, mask = store.lookup_batch(rows)
  ids, want_mask = teacher.tokenize([p[2] for p in pairs], config.data.max_len_teacher, prefix="[Q] ")
  want = np.asarray(teacher(ids, want_mask, head=True))
  width = tokens.shape[1]
  np.testing.assert_array_equal(mask, want_mask[:, :width])
  np.testing.assert_allclose(np.where(mask[..., None] > 0, tokens, 0), np.where(want_mask[:, :width, None] > 0,
                                                                                 want[:, :width], 0), atol=1e-4)

  # Evaluation: the documents and the teacher's own queries go through the head; a student projecting to DIM
  # searches them.
  calls = []
  encode = evaluation.encode_texts

  def recording(encoder, texts, **kw):
    out = encode(encoder, texts, **kw)
    calls.append((kw.get("desc"), kw["head"], out.tokens.shape[-1]))
    return out

  monkeypatch.setattr(evaluation, "encode_texts", recording)
  student, _ = _encoders(seed=5)
  queries = {f"q{i}": f"swali {i}" for i in range(4)}
  collection = collections_lib.EvalCollection("toy", "sw", queries, {f"d{i}": DOCS[i] for i in range(4)},
                                              {f"q{i}": {f"d{i}": 1} for i in range(4)},
                                              english_queries={f"q{i}": DOCS[i] for i in range(4)})
  systems = [evaluation.System("teacher_en", teacher, "[Q] ", head=False, english=True),
             evaluation.System("student", student, "")]
  summary = evaluation.evaluate_systems([collection], systems, teacher, tmp_path / "eval", doc_prefix="[D] ",
                                        k=4, max_len_query=16, max_len_doc=MAX_LEN, batch_size=8)
  assert calls == [("documents (teacher)", True, DIM), ("queries (teacher_en)", True, DIM),
                   ("queries (student)", True, DIM)]
  # English queries equal to the documents: the teacher finds each one first.
  assert summary["systems"]["teacher_en_maxsim"]["toy"]["mrr@10"] == pytest.approx(1.0)
