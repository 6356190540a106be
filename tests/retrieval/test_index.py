"""DocumentIndex: pooling against torch, build_index from a fake encoder, save/load round trip, errors."""
import json
import zlib

import numpy as np
import pytest
import torch

from optical_jax.errors import UserError
from optical_jax.retrieval import index as index_lib
from optical_jax.retrieval.index import DocumentIndex, build_index, pool_embeddings

D = 8


def fake_encoder(texts):
  """Deterministic per text; token count = word count (batch padded to its longest), values from a hash of the word."""
  length = max(len(t.split()) for t in texts)
  embs = np.zeros((len(texts), length, D), np.float32)
  mask = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    for j, word in enumerate(text.split()):
      embs[i, j] = np.random.default_rng(zlib.crc32(word.encode())).normal(size=D) * 3
      mask[i, j] = 1
  embs[mask == 0] = 123.0  # garbage under padding must not leak into pooling
  return embs, mask


def torch_mean_pool(embs, mask):
  """The E5 model card's average_pool + F.normalize."""
  hidden = torch.tensor(embs).masked_fill(~torch.tensor(mask, dtype=torch.bool)[..., None], 0.0)
  pooled = hidden.sum(dim=1) / torch.tensor(mask).sum(dim=1)[..., None]
  return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_mean_and_cls_pooling_match_torch():
  rng = np.random.default_rng(0)
  embs = rng.normal(size=(5, 7, D)).astype(np.float32)
  mask = (np.arange(7)[None] < np.array([1, 3, 7, 5, 2])[:, None]).astype(np.int64)
  np.testing.assert_allclose(pool_embeddings(embs, mask, "mean"), torch_mean_pool(embs, mask), atol=1e-6)
  cls = torch.nn.functional.normalize(torch.tensor(embs[:, 0]), dim=1).numpy()
  np.testing.assert_allclose(pool_embeddings(embs, mask, "cls"), cls, atol=1e-6)
  with pytest.raises(UserError, match="pooling"):
    pool_embeddings(embs, mask, "max")


TEXTS = ["the cat sat", "a dog", "one two three four five six seven", "x", "cat dog bird", "lorem ipsum dolor"]
IDS = [f"doc{i}" for i in range(len(TEXTS))]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_build_index_pads_truncates_and_pools(monkeypatch, pooling):
  monkeypatch.setenv("CI", "1")
  max_len = 4
  index = build_index(fake_encoder, TEXTS, IDS, max_len=max_len, batch_size=4, pooling=pooling)
  assert index.doc_ids == IDS and len(index) == 6 and index.pooling == pooling
  assert index.token_embeddings.shape == (6, max_len, D) and index.token_embeddings.dtype == np.float16
  assert index.mask.dtype == bool and index.pooled.dtype == np.float32
  np.testing.assert_array_equal(index.mask.sum(1), [3, 2, 4, 1, 3, 3])  # 7 words cut to 4
  for i, text in enumerate(TEXTS):  # each row equals encoding the text alone (batching must not change it)
    alone, alone_mask = fake_encoder([text])
    kept = alone[:, :max_len]
    n = int(alone_mask[:, :max_len].sum())
    np.testing.assert_allclose(index.token_embeddings[i, :n], kept[0, :n], rtol=1e-3, atol=1e-3)
    assert (index.token_embeddings[i, n:] == 0).all()
    kept_mask = alone_mask[:, :max_len]
    if pooling == "mean":
      expected = torch_mean_pool(kept, kept_mask)
    else:
      expected = torch.nn.functional.normalize(torch.tensor(kept[:, 0]), dim=1).numpy()
    np.testing.assert_allclose(index.pooled[i], expected[0], atol=1e-5)


def test_save_load_round_trip(tmp_path):
  index = build_index(fake_encoder, TEXTS, IDS, max_len=5, batch_size=2)
  index.save(tmp_path / "idx")
  assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["doc_ids.json", "index.json", "index.safetensors"]
  loaded = DocumentIndex.load(tmp_path / "idx")
  assert loaded.doc_ids == index.doc_ids and loaded.pooling == "mean"
  for name in ("token_embeddings", "mask", "pooled"):
    a, b = getattr(index, name), getattr(loaded, name)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_load_errors(tmp_path):
  with pytest.raises(UserError, match="missing"):
    DocumentIndex.load(tmp_path)
  index = build_index(fake_encoder, TEXTS, IDS, max_len=3, batch_size=8)
  index.save(tmp_path)
  (tmp_path / "index.json").write_text(json.dumps({"format": 99, "pooling": "mean"}))
  with pytest.raises(UserError, match="format"):
    DocumentIndex.load(tmp_path)
  index.save(tmp_path)
  (tmp_path / "doc_ids.json").write_text(json.dumps(IDS[:2]))
  with pytest.raises(UserError, match="2 ids for 6"):
    DocumentIndex.load(tmp_path)
  index.save(tmp_path)
  (tmp_path / "index.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(UserError, match="cannot read"):
    DocumentIndex.load(tmp_path)


def test_build_errors():
  with pytest.raises(UserError, match="twice"):
    build_index(fake_encoder, TEXTS[:2], ["a", "a"], max_len=3, batch_size=2)
  with pytest.raises(UserError, match="ids"):
    build_index(fake_encoder, TEXTS, IDS[:3], max_len=3, batch_size=2)
  with pytest.raises(UserError, match="no documents"):
    build_index(fake_encoder, [], [], max_len=3, batch_size=2)
  with pytest.raises(ValueError, match="encode_fn"):
    build_index(lambda t: (np.zeros((len(t), 3)), np.ones((len(t), 3))), TEXTS, IDS, max_len=3, batch_size=2)
  with pytest.raises(ValueError, match="float16"):
    build_index(lambda t: (np.full((len(t), 3, D), 1e6), np.ones((len(t), 3))), TEXTS, IDS, max_len=3, batch_size=2)


def test_progress_bar_off_in_ci(monkeypatch):
  monkeypatch.setenv("CI", "true")
  assert index_lib.progress_disabled()
  monkeypatch.delenv("CI")
  monkeypatch.setattr(index_lib.sys.stderr, "isatty", lambda: True, raising=False)
  assert not index_lib.progress_disabled()
