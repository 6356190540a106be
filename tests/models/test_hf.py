"""Hugging Face directory I/O against transformers' PyTorch BertModel / XLMRobertaModel (tiny random models, no hub)."""
import json
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

from optical_jax.errors import UserError
from optical_jax.models import EncoderConfig, from_pretrained, random_encoder, save_pretrained
from optical_jax.models import hf

KINDS = {
    "bert": (transformers.BertConfig, transformers.BertModel, dict(max_position_embeddings=64)),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel,
                    dict(max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5)),
}


def _torch_model(kind: str, seed: int = 0):
  config_cls, model_cls, kw = KINDS[kind]
  torch.manual_seed(seed)
  config = config_cls(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, **kw)
  model = model_cls(config).eval()
  with torch.no_grad():  # BERT init has unit LayerNorm and zero biases: perturb so a swapped tensor shows
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model


def _batch(pad_id: int, lengths=(11, 6, 1, 9), length: int = 11, seed: int = 0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids = rng.integers(3, 99, (len(lengths), length))
  return np.where(mask > 0, ids, pad_id).astype(np.int32), mask


def _torch_hidden(model, ids, mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()


@pytest.fixture(scope="module", params=list(KINDS))
def saved(request, tmp_path_factory):
  """(kind, torch model, its save_pretrained dir)."""
  model = _torch_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(path)
  return request.param, model, path


def test_from_pretrained_matches_torch(saved):
  kind, model, path = saved
  enc = from_pretrained(path)
  assert enc.config.model_type == kind and enc.tokenizer is None
  ids, mask = _batch(model.config.pad_token_id)
  out = enc(ids, mask)
  assert out.dtype == np.float32 and out.shape == (4, 11, 32)
  np.testing.assert_allclose(np.asarray(out), _torch_hidden(model, ids, mask), atol=1e-4, rtol=0)


def test_keep_layers_is_the_bottom_of_the_pretrained_stack(saved, tmp_path):
  """A shallower student: the first N layers as trained, equal to torch's model with the rest removed."""
  kind, model, path = saved
  enc = from_pretrained(path, keep_layers=1)
  assert enc.config.num_layers == 1 and "layer_1" not in enc.params
  shallow = _torch_model(kind)
  shallow.encoder.layer = shallow.encoder.layer[:1]
  ids, mask = _batch(model.config.pad_token_id, seed=3)
  np.testing.assert_allclose(np.asarray(enc(ids, mask)), _torch_hidden(shallow, ids, mask), atol=1e-4, rtol=0)
  save_pretrained(enc, tmp_path)  # its export is a complete 1-layer model
  reloaded, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
  assert reloaded.config.num_hidden_layers == 1 and not info["missing_keys"] and not info["unexpected_keys"], info
  np.testing.assert_allclose(_torch_hidden(reloaded.eval(), ids, mask), _torch_hidden(shallow, ids, mask), atol=1e-5)
  with pytest.raises(UserError, match="keep_layers=3, but the checkpoint has 2 encoder layers"):
    from_pretrained(path, keep_layers=3)


def test_pytorch_bin_with_prefix_and_buffers_matches_torch(saved, tmp_path):
  kind, model, path = saved
  prefix = "bert." if kind == "bert" else "roberta."
  state = {prefix + k: v for k, v in model.state_dict().items()}
  state[prefix + "embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
  state["cls.predictions.bias"] = torch.zeros(99)  # a pre-training head: ignored
  torch.save(state, tmp_path / "pytorch_model.bin")
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  enc = from_pretrained(tmp_path)
  ids, mask = _batch(model.config.pad_token_id, seed=1)
  np.testing.assert_allclose(np.asarray(enc(ids, mask)), _torch_hidden(model, ids, mask), atol=1e-4, rtol=0)


def test_save_pretrained_round_trip(saved, tmp_path):
  kind, model, path = saved
  enc = from_pretrained(path)
  save_pretrained(enc, tmp_path)
  # transformers loads the export with nothing missing or unexpected, and computes the same thing
  reloaded, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
  assert type(reloaded) is type(model)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask = _batch(model.config.pad_token_id, seed=2)
  np.testing.assert_allclose(_torch_hidden(reloaded.eval(), ids, mask), _torch_hidden(model, ids, mask), atol=1e-6)
  # our params survive bit for bit, pooler included
  again = from_pretrained(tmp_path)
  for a, b in zip(jax.tree.leaves(enc.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  original = safetensors.numpy.load_file(path / "model.safetensors")
  exported = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  assert set(original) == set(exported)
  for k, v in original.items():
    np.testing.assert_array_equal(exported[k], v)


def test_projection_head_round_trip(tmp_path):
  model = _torch_model("bert")
  model.save_pretrained(tmp_path / "base")
  enc = from_pretrained(tmp_path / "base", projection_dim=8, normalize=True)
  ids, mask = _batch(0)
  out = np.asarray(enc(ids, mask, head=True))
  assert out.shape == (4, 11, 8)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  save_pretrained(enc, tmp_path / "headed")
  assert (tmp_path / "headed" / hf.HEAD_FILE).exists()
  assert json.loads((tmp_path / "headed" / "config.json").read_text())["optical_jax"] == {
      "projection_dim": 8, "normalize": True}
  again = from_pretrained(tmp_path / "headed")
  assert again.config.projection_dim == 8 and again.config.normalize
  np.testing.assert_array_equal(np.asarray(again.params["projection"]["kernel"]),
                                np.asarray(enc.params["projection"]["kernel"]))
  np.testing.assert_allclose(np.asarray(again(ids, mask, head=True)), out, atol=1e-6)
  # transformers still loads the encoder part and ignores the head
  _, info = transformers.AutoModel.from_pretrained(tmp_path / "headed", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  with pytest.raises(UserError, match="conflicts"):
    from_pretrained(tmp_path / "headed", projection_dim=4)


def test_random_encoder_exports_a_complete_model(tmp_path):
  config = EncoderConfig(model_type="xlm-roberta", vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=24, max_position_embeddings=20, type_vocab_size=1, pad_token_id=1,
                         layer_norm_eps=1e-5)
  enc = random_encoder(config, seed=0)
  save_pretrained(enc, tmp_path)
  model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
  assert isinstance(model, transformers.XLMRobertaModel)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask = _batch(1, lengths=(7, 3), length=7)
  ids = np.minimum(ids, 49)
  np.testing.assert_allclose(np.asarray(enc(ids, mask)), _torch_hidden(model.eval(), ids, mask), atol=1e-4)


def test_weight_errors_name_key_and_file(tmp_path):
  model = _torch_model("bert")
  model.save_pretrained(tmp_path)
  weights = tmp_path / "model.safetensors"
  state = safetensors.numpy.load_file(weights)
  del state["encoder.layer.1.output.dense.bias"]
  safetensors.numpy.save_file(state, weights, metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"model\.safetensors.*missing weight 'encoder\.layer\.1\.output\.dense\.bias'"):
    from_pretrained(tmp_path)
  state["encoder.layer.1.output.dense.bias"] = np.zeros(32, np.float32)
  state["encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)
  safetensors.numpy.save_file(state, weights, metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"model\.safetensors.*unexpected weight.*encoder\.layer\.2\.output"):
    from_pretrained(tmp_path)
  weights.unlink()
  with pytest.raises(UserError, match="no model.safetensors"):
    from_pretrained(tmp_path)
  with pytest.raises(UserError, match="config.json: not found"):
    from_pretrained(tmp_path / "nowhere")


def test_pytorch_bin_without_torch_is_a_user_error(tmp_path, monkeypatch):
  (tmp_path / "config.json").write_text(json.dumps(EncoderConfig(num_layers=1).to_hf_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  with pytest.raises(UserError, match="needs torch"):
    from_pretrained(tmp_path)


def _wordpiece_tokenizer() -> transformers.PreTrainedTokenizerFast:
  vocab = {w: i for i, w in enumerate(
      ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "foo", "bar", "baz", "query", ":", "##s"])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def test_tokenizer_round_trip_and_truncation(tmp_path):
  _torch_model("bert").save_pretrained(tmp_path / "base")
  enc = from_pretrained(tmp_path / "base")
  enc.tokenizer = _wordpiece_tokenizer()
  save_pretrained(enc, tmp_path / "with_tokenizer")
  enc = from_pretrained(tmp_path / "with_tokenizer")
  assert enc.tokenizer is not None
  ids, mask = enc.tokenize(["Hello world foo bar baz", "hello", "foos"], max_len=5)
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  np.testing.assert_array_equal(ids, [[2, 5, 6, 7, 3], [2, 5, 3, 0, 0], [2, 7, 12, 3, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
  ids, _ = enc.tokenize(["hello world"], max_len=6, prefix="query: ")
  np.testing.assert_array_equal(ids, [[2, 10, 11, 5, 6, 3]])
  assert enc.tokenize([], max_len=4)[0].shape == (0, 4)
  with pytest.raises(UserError, match="max_len"):
    enc.tokenize(["hello"], max_len=65)
