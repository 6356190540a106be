"""Hugging Face directories <-> optical_jax encoders: load, save, convert weights, tokenize.

A directory written by `save_pretrained` is what transformers' PyTorch `BertModel` / `XLMRobertaModel` / `AutoModel`
load (config.json, model.safetensors with HF key names, tokenizer files). An optional projection head lives beside it
in `optical_jax_head.safetensors`, announced by an "optical_jax" field in config.json; transformers ignores both.
`from_pretrained` also reads a ColBERT checkpoint (PyLate / sentence-transformers layout, or Stanford ColBERT): its
linear head becomes the projection head.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import re
import tempfile
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from optical_jax.errors import UserError
from optical_jax.models.bert import BertEncoder, EncoderConfig

log = logging.getLogger("optical_jax")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TORCH_WEIGHTS_FILE = "pytorch_model.bin"
HEAD_FILE = "optical_jax_head.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model",
                   "special_tokens_map.json")

_PREFIXES = ("bert.", "roberta.")  # BertFor* / XLMRobertaFor* checkpoints nest the encoder under these
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # non-persistent in new HF, saved by old HF
_TASK_HEADS = ("cls.", "lm_head.")  # pre-training heads: dropped, as transformers' AutoModel drops them
_POOLER = ("pooler.dense.weight", "pooler.dense.bias")  # unused here, kept for a lossless export
_LAYER_PARTS = {  # our layer submodule -> HF name under encoder.layer.{i}.
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_EMBEDDINGS = {  # our top-level embedding module -> HF name
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
}


class Encoder:
  """A loaded encoder: `encoder(input_ids, attention_mask)` -> last hidden states [B, L, H] float32.

  Attributes: module (BertEncoder), params (nested dict of float32 jax arrays, unboxed), tokenizer (transformers
  tokenizer or None), config (EncoderConfig), extra (what the encoder does not use but an export keeps: the
  pooler weights under "pooler", the source config.json under "hf_config"; and where it came from: "model_dir" when
  the HF files sat in a sentence-transformers subfolder, "colbert" for a ColBERT checkpoint whose linear head is the
  projection head: {"format": "pylate" | "stanford", "query_prefix", "document_prefix" (the text prefixes it
  declares, [Q] / [D] markers included), "markers", "head_files" (the Dense modules' files)}).
  """

  def __init__(self, module: BertEncoder, params: dict, config: EncoderConfig, tokenizer=None,
               extra: dict | None = None):
    self.module = module
    self.params = params
    self.config = config
    self.tokenizer = tokenizer
    self.extra = extra if extra is not None else {}

  @functools.cached_property
  def _apply(self):
    return jax.jit(self.module.apply, static_argnames=("head",))

  def __call__(self, input_ids, attention_mask, *, head: bool = False) -> jax.Array:
    """[B, L, H] float32 hidden states (`head=True`: projected/normalised [B, L, output_dim])."""
    return self._apply({"params": self.params}, jnp.asarray(input_ids), jnp.asarray(attention_mask), head=head)

  def tokenize(self, texts: list[str], max_len: int, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int32 [len(texts), max_len], right-padded; truncation keeps the final
    special token ([SEP] / </s>)."""
    if self.tokenizer is None:
      raise UserError("this encoder has no tokenizer (its directory had no tokenizer files)")
    if max_len > self.config.max_length:
      raise UserError(f"max_len={max_len} exceeds the encoder's {self.config.max_length} positions")
    if not texts:
      empty = np.zeros((0, max_len), np.int32)
      return empty, empty.copy()
    if self.tokenizer.pad_token_id is None:
      raise UserError("the encoder's tokenizer has no pad token; cannot pad to max_len")
    enc = self.tokenizer([prefix + t for t in texts], padding="max_length", truncation=True, max_length=max_len,
                         padding_side="right", return_token_type_ids=False, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------
# Weight conversion (pure numpy; exact: only transposes and reshapes).


def _qkv_to_fused(q: np.ndarray, k: np.ndarray, v: np.ndarray, config: EncoderConfig) -> np.ndarray:
  """Three HF [out] or [out, in] tensors -> our fused layout with output columns ordered (head, q|k|v, head_dim)."""
  nh, hd = config.num_heads, config.head_dim
  if q.ndim == 1:
    return np.stack([t.reshape(nh, hd) for t in (q, k, v)], axis=1).reshape(3 * nh * hd)
  h = q.shape[1]
  return np.stack([t.T.reshape(h, nh, hd) for t in (q, k, v)], axis=2).reshape(h, 3 * nh * hd)


def _fused_to_qkv(fused: np.ndarray, config: EncoderConfig) -> tuple[np.ndarray, ...]:
  nh, hd = config.num_heads, config.head_dim
  if fused.ndim == 1:
    split = fused.reshape(nh, 3, hd)
    return tuple(split[:, j].reshape(nh * hd) for j in range(3))
  h = fused.shape[0]
  split = fused.reshape(h, nh, 3, hd)
  return tuple(np.ascontiguousarray(split[:, :, j].reshape(h, nh * hd).T) for j in range(3))


def _canonical_keys(state: dict[str, Any]) -> dict[str, Any]:
  """Strip the "bert." / "roberta." prefix and rename old LayerNorm gamma/beta."""
  out = {}
  for key, value in state.items():
    for prefix in _PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    if ".LayerNorm." in key:
      key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta", ".LayerNorm.bias")
    out[key] = value
  return out


def _convert_from_hf(state: dict[str, Any], config: EncoderConfig, source: str) -> tuple[dict, dict]:
  """HF state dict -> (our params as float32 numpy, extra). Raises UserError naming `source` on any mismatch."""
  state = _canonical_keys(state)
  used: set[str] = set()
  h, inter = config.hidden_size, config.intermediate_size

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
      raise UserError(f"{source}: missing weight {key!r}")
    used.add(key)
    a = np.asarray(state[key], dtype=np.float32)
    if a.shape != shape:
      raise UserError(f"{source}: weight {key!r} has shape {a.shape}, config.json implies {shape}")
    return a

  def dense(hf: str, d_in: int, d_out: int) -> dict:
    return {"kernel": take(hf + ".weight", (d_out, d_in)).T.copy(), "bias": take(hf + ".bias", (d_out,))}

  def norm(hf: str) -> dict:
    return {"scale": take(hf + ".weight", (h,)), "bias": take(hf + ".bias", (h,))}

  rows = {"word_embeddings": config.vocab_size, "position_embeddings": config.max_position_embeddings,
          "token_type_embeddings": config.type_vocab_size}
  params = {ours: {"embedding": take(hf + ".weight", (rows[ours], h))} for ours, hf in _EMBEDDINGS.items()}
  params["embeddings_norm"] = norm("embeddings.LayerNorm")
  for i in range(config.num_layers):
    pre = f"encoder.layer.{i}."
    att = pre + "attention.self."
    params[f"layer_{i}"] = {
        "qkv": {
            "kernel": _qkv_to_fused(*(take(att + n + ".weight", (h, h)) for n in ("query", "key", "value")), config),
            "bias": _qkv_to_fused(*(take(att + n + ".bias", (h,)) for n in ("query", "key", "value")), config),
        },
        "attention_out": dense(pre + _LAYER_PARTS["attention_out"], h, h),
        "attention_norm": norm(pre + _LAYER_PARTS["attention_norm"]),
        "mlp_in": dense(pre + _LAYER_PARTS["mlp_in"], h, inter),
        "mlp_out": dense(pre + _LAYER_PARTS["mlp_out"], inter, h),
        "mlp_norm": norm(pre + _LAYER_PARTS["mlp_norm"]),
    }
  extra = {}
  if all(k in state for k in _POOLER):
    extra["pooler"] = {k: np.asarray(state[k], np.float32) for k in _POOLER}
    used.update(_POOLER)
  unexpected = sorted(k for k in state if k not in used and not k.startswith(_TASK_HEADS) and k not in _BUFFERS)
  if unexpected:
    more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
    raise UserError(f"{source}: unexpected weight(s) {', '.join(map(repr, unexpected[:3]))}{more} "
                    f"for a {config.num_layers}-layer {config.model_type} encoder")
  return params, extra


def params_from_hf_state_dict(state: dict[str, np.ndarray], config: EncoderConfig) -> dict:
  """HF `BertModel` / `XLMRobertaModel` state dict (with or without "bert."/"roberta.") -> our params (float32
  numpy; no projection head)."""
  return _convert_from_hf(state, config, "state dict")[0]


def params_to_hf_state_dict(params, config: EncoderConfig) -> dict[str, np.ndarray]:
  """Our params -> HF `BertModel` / `XLMRobertaModel` key names (no prefix), contiguous float32 numpy."""
  p = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), nn.meta.unbox(params))
  state = {}

  def dense(hf: str, sub: dict):
    state[hf + ".weight"] = np.ascontiguousarray(sub["kernel"].T)
    state[hf + ".bias"] = sub["bias"]

  def norm(hf: str, sub: dict):
    state[hf + ".weight"], state[hf + ".bias"] = sub["scale"], sub["bias"]

  for ours, hf in _EMBEDDINGS.items():
    state[hf + ".weight"] = p[ours]["embedding"]
  norm("embeddings.LayerNorm", p["embeddings_norm"])
  for i in range(config.num_layers):
    layer, pre = p[f"layer_{i}"], f"encoder.layer.{i}."
    weights = _fused_to_qkv(layer["qkv"]["kernel"], config)
    biases = _fused_to_qkv(layer["qkv"]["bias"], config)
    for n, w, b in zip(("query", "key", "value"), weights, biases):
      state[f"{pre}attention.self.{n}.weight"], state[f"{pre}attention.self.{n}.bias"] = w, b
    for ours, hf in _LAYER_PARTS.items():
      (norm if ours.endswith("_norm") else dense)(pre + hf, layer[ours])
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------------
# Files.


def _read_safetensors(file: epath.Path) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load(file.read_bytes())
  except Exception as e:  # safetensors raises several types (bad header, dtype numpy lacks, ...)
    raise UserError(f"{file}: cannot read safetensors weights ({type(e).__name__}: {e})") from None


def _read_torch_bin(file: epath.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"{file}: reading pytorch_model.bin needs torch (pip install torch), "
                    "or convert it to model.safetensors") from None
  try:
    state = torch.load(io.BytesIO(file.read_bytes()), map_location="cpu", weights_only=True)
  except Exception as e:
    raise UserError(f"{file}: cannot read torch weights ({type(e).__name__}: {e})") from None
  # float() first: numpy has no bfloat16.
  return {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy() for k, v in state.items()}


def _read_state(path: epath.Path) -> tuple[dict[str, np.ndarray], str]:
  """The checkpoint's tensors and the file name to blame in errors."""
  if (path / WEIGHTS_FILE).exists():
    return _read_safetensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE)
  if (path / WEIGHTS_INDEX_FILE).exists():
    index_file = path / WEIGHTS_INDEX_FILE
    try:
      shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
      raise UserError(f"{index_file}: not a safetensors index ({e})") from None
    state = {}
    for shard in shards:
      state.update(_read_safetensors(path / shard))
    return state, str(index_file)
  if (path / TORCH_WEIGHTS_FILE).exists():
    return _read_torch_bin(path / TORCH_WEIGHTS_FILE), str(path / TORCH_WEIGHTS_FILE)
  raise UserError(f"{path}: no {WEIGHTS_FILE}, {WEIGHTS_INDEX_FILE} or {TORCH_WEIGHTS_FILE}")


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def _load_tokenizer(path: epath.Path):
  present = [f for f in TOKENIZER_FILES if (path / f).exists()]
  if not present:
    return None
  import transformers  # pylint: disable=g-import-not-at-top  (slow import; only when there is a tokenizer)
  try:
    if _is_local(path):
      return transformers.AutoTokenizer.from_pretrained(os.fspath(path))
    with tempfile.TemporaryDirectory() as tmp:  # transformers reads local files only
      for f in present + [CONFIG_FILE]:
        (path / f).copy(epath.Path(tmp) / f)
      return transformers.AutoTokenizer.from_pretrained(tmp)
  except Exception as e:  # transformers raises many types for a broken tokenizer
    raise UserError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def _new_head(config: EncoderConfig, seed: int) -> dict:
  """A fresh projection head, initialised like BertEncoder's (normal 0.02 kernel, zero bias)."""
  kernel = nn.initializers.normal(0.02)(jax.random.key(seed), (config.hidden_size, config.projection_dim))
  return {"kernel": np.asarray(kernel, np.float32), "bias": np.zeros((config.projection_dim,), np.float32)}


def _read_head(file: epath.Path, config: EncoderConfig) -> dict:
  state = _read_safetensors(file)
  shapes = {"projection.kernel": (config.hidden_size, config.projection_dim),
            "projection.bias": (config.projection_dim,)}
  for key, shape in shapes.items():
    if key not in state:
      raise UserError(f"{file}: missing weight {key!r}")
    if state[key].shape != shape:
      raise UserError(f"{file}: weight {key!r} has shape {state[key].shape}, expected {shape}")
  return {"kernel": state["projection.kernel"].astype(np.float32), "bias": state["projection.bias"].astype(np.float32)}


# ---------------------------------------------------------------------------------------------------------------
# ColBERT checkpoints: the transformer plus the linear head that projects each token vector.
#
# PyLate / sentence-transformers layout: modules.json lists a Transformer (HF files in the root or its `path`) and
# then token-level Dense modules (folders with config.json {in_features, out_features, bias, activation_function}
# and `linear.weight` [out, in], maybe `linear.bias`); config_sentence_transformers.json names the [Q] / [D] marker
# prefixes and the prompts. Stanford ColBERT: an HF directory whose weights also hold `linear.weight` (no bias),
# with the marker tokens in artifact.metadata.

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
STANFORD_METADATA_FILE = "artifact.metadata"
_STANFORD_HEAD = ("linear.weight", "linear.bias")
_DENSE_KEYS = ("linear.weight", "linear.bias", "residual.weight")
_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")
_PYLATE_DENSE = "pylate.models.Dense.Dense"


def _read_json(file: epath.Path) -> Any:
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{file}: invalid JSON ({e})") from None


def _kind(module: dict) -> str:
  return str(module.get("type", "")).rsplit(".", 1)[-1]


def _module_dir(root: epath.Path, module: dict) -> epath.Path:
  return root / module["path"] if module.get("path") else root


def _st_layout(path: epath.Path) -> tuple[epath.Path, list[tuple[epath.Path, dict]]]:
  """(the directory of the HF model files, the token-level Dense modules that follow the Transformer as (folder,
  modules.json entry)); (path, []) for a plain HF directory."""
  file = path / MODULES_FILE
  if not file.exists():
    return path, []
  modules = _read_json(file)
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise UserError(f"{file}: expected a list of modules")
  kinds = [_kind(m) for m in modules]
  if "Transformer" not in kinds:
    raise UserError(f"{file}: no Transformer module (types: {', '.join(kinds) or 'none'})")
  first = kinds.index("Transformer")
  token_level = []
  for module, kind in zip(modules[first + 1:], kinds[first + 1:]):
    if kind == "Pooling":
      break  # a Dense after pooling projects the one sentence vector (a single-vector model): not a token head
    token_level.append((module, kind))
  dense_at = [i for i, (_, kind) in enumerate(token_level) if kind == "Dense"]
  if not dense_at:
    return _module_dir(path, modules[first]), []
  # Only Dense modules may come between the transformer and the head's output: anything else (a Normalize, a
  # LayerNorm) would change the vectors in a way the projection head cannot reproduce.
  other = [kind for module, kind in token_level[:dense_at[-1]] if kind != "Dense"]
  if other:
    raise UserError(f"{file}: a {other[0]} module sits between the Transformer and the Dense head; only a chain of "
                    "linear Dense modules can be loaded as the projection head")
  return _module_dir(path, modules[first]), [(_module_dir(path, m), m) for m, _ in token_level[:dense_at[-1] + 1]]


def _read_dense(folder: epath.Path, module: dict, d_in: int) -> tuple[np.ndarray, np.ndarray, list[epath.Path]]:
  """One Dense module as float64 (kernel [in, out], bias [out]) and the files it was read from."""
  settings_file = folder / CONFIG_FILE
  if not settings_file.exists():
    raise UserError(f"{settings_file}: not found (the Dense module listed in {MODULES_FILE})")
  settings = _read_json(settings_file)
  # PyLate's Dense is linear unless told otherwise; sentence-transformers' defaults to Tanh.
  default = _IDENTITY[0] if module.get("type") == _PYLATE_DENSE else "torch.nn.modules.activation.Tanh"
  activation = settings.get("activation_function") or default
  if activation not in _IDENTITY:
    raise UserError(f"{settings_file}: activation_function {activation!r}: only a linear (Identity) Dense can be "
                    "loaded as the projection head")
  try:
    d_out, declared_in = int(settings["out_features"]), int(settings["in_features"])
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{settings_file}: needs integer in_features and out_features ({e})") from None
  if declared_in != d_in:
    raise UserError(f"{settings_file}: in_features={declared_in}, but the vectors reaching it have dim {d_in}")
  if (folder / WEIGHTS_FILE).exists():
    weights_file = folder / WEIGHTS_FILE
    state = _read_safetensors(weights_file)
  elif (folder / TORCH_WEIGHTS_FILE).exists():
    weights_file = folder / TORCH_WEIGHTS_FILE
    state = _read_torch_bin(weights_file)
  else:
    raise UserError(f"{folder}: no {WEIGHTS_FILE} or {TORCH_WEIGHTS_FILE} for the Dense module")
  unexpected = sorted(set(state) - set(_DENSE_KEYS))
  if unexpected:
    raise UserError(f"{weights_file}: unexpected weight(s) {', '.join(map(repr, unexpected))} in a Dense module")

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
      raise UserError(f"{weights_file}: missing weight {key!r}")
    if state[key].shape != shape:
      raise UserError(f"{weights_file}: weight {key!r} has shape {state[key].shape}, config.json implies {shape}")
    return np.asarray(state[key], np.float64)

  kernel = take("linear.weight", (d_out, d_in)).T
  bias = take("linear.bias", (d_out,)) if settings.get("bias", True) else np.zeros(d_out)
  if settings.get("use_residual"):
    # act(linear(x)) + residual(x) with an identity activation is affine too.
    kernel = kernel + (np.eye(d_in) if d_in == d_out else take("residual.weight", (d_out, d_in)).T)
  return kernel, bias, [settings_file, weights_file]


def _stanford_head(state: dict[str, np.ndarray], hidden: int, source: str) -> tuple[np.ndarray, np.ndarray] | None:
  """Pops a Stanford ColBERT `linear.weight` [dim, hidden] (and a bias, if any) out of the encoder's weights."""
  if _STANFORD_HEAD[0] not in state:
    return None
  weight = np.asarray(state.pop(_STANFORD_HEAD[0]), np.float64)
  if weight.ndim != 2 or weight.shape[1] != hidden:
    raise UserError(f"{source}: weight 'linear.weight' has shape {weight.shape}, a ColBERT head needs [dim, {hidden}]")
  bias = state.pop(_STANFORD_HEAD[1], None)
  if bias is not None and np.shape(bias) != (weight.shape[0],):
    raise UserError(f"{source}: weight 'linear.bias' has shape {np.shape(bias)}, expected ({weight.shape[0]},)")
  return weight.T, np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)


def _declared_prefixes(path: epath.Path, model_dir: epath.Path, fmt: str) -> tuple[dict[str, str], list[str]]:
  """({"query": text prefix, "document": text prefix} the checkpoint encodes with, its marker prefixes)."""
  if fmt == "stanford":
    file = model_dir / STANFORD_METADATA_FILE
    meta = _read_json(file) if file.exists() else {}
    # Stanford ColBERT inserts these vocabulary tokens after [CLS]; the defaults are its own.
    markers = {"query": (meta.get("query_token_id") or "[unused0]") + " ",
               "document": (meta.get("doc_token_id") or "[unused1]") + " "}
    return dict(markers), list(markers.values())
  file = path / ST_CONFIG_FILE
  settings = _read_json(file) if file.exists() else {}
  prompts = settings.get("prompts") or {}
  out, markers = {}, []
  for role, key in (("query", "query_prefix"), ("document", "document_prefix")):
    marker = settings.get(key) or ""
    # PyLate puts its marker token ahead of the prompt text (sentence-transformers' MultiVectorEncoder composes
    # them the same way).
    out[role] = marker + (prompts.get(role) or "").removeprefix(marker)
    if marker:
      markers.append(marker)
  return out, markers


def _register_markers(tokenizer, markers: list[str]) -> list[str]:
  """Makes each marker the checkpoint inserts as one token id (Stanford's [unused1], PyLate's added "[D] ") come
  out as that one piece when it is prepended as text, as sentence-transformers' MultiVectorEncoder does: a plain
  tokenizer shatters "[unused1]" into "[", "unused", "##1", "]". Only markers the vocabulary already holds: no new
  ids. Returns the markers registered."""
  if tokenizer is None:
    return []
  from transformers import AddedToken  # pylint: disable=g-import-not-at-top
  added = set(getattr(tokenizer, "added_tokens_encoder", None) or {})
  vocab = tokenizer.get_vocab()
  register = []
  for value in markers:
    if not value.split():
      continue
    for marker in (value, value.split(None, 1)[0]):  # PyLate adds "[D] " with its space as one token
      if marker not in added and marker not in vocab:
        continue
      if tokenizer.tokenize(marker) != [marker]:
        register.append(marker)
      break
  if register:
    # add_tokens, not add_special_tokens: its keyword for extending the list was renamed in transformers 5.
    tokenizer.add_tokens([AddedToken(m, normalized=False, special=True) for m in register], special_tokens=True)
  return register


def _colbert_head(path: epath.Path, model_dir: epath.Path, dense: list[tuple[epath.Path, dict]],
                  state: dict[str, np.ndarray], hidden: int, source: str
                  ) -> tuple[dict | None, str, list[epath.Path]]:
  """(the head as our {"kernel" [H, D], "bias" [D]} float32 or None, "pylate" | "stanford" | "", its files)."""
  files: list[epath.Path] = []
  if dense:
    kernel, bias = np.eye(hidden), np.zeros(hidden)
    for folder, module in dense:
      k, b, read = _read_dense(folder, module, kernel.shape[1])
      # Linear layers compose into one: W2 (W1 x + b1) + b2.
      kernel, bias = kernel @ k, bias @ k + b
      files += read
    if _STANFORD_HEAD[0] in state:
      log.warning("%s: ignoring 'linear.weight' in the transformer weights: %s lists the Dense head", source,
                  path / MODULES_FILE)
      for key in _STANFORD_HEAD:
        state.pop(key, None)
    fmt = "pylate"
  else:
    head = _stanford_head(state, hidden, source)
    if head is None:
      return None, "", []
    (kernel, bias), fmt = head, "stanford"
  if kernel.shape == (hidden, hidden) and np.array_equal(kernel, np.eye(hidden)) and not bias.any():
    # What `optical-jax export --format pylate` writes for a student without a head: no head at all.
    return None, "", []
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}, fmt, files


_LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def _truncated(config: EncoderConfig, state: dict, keep_layers: int, source: str) -> tuple[EncoderConfig, dict]:
  if not 0 < keep_layers <= config.num_layers:
    raise UserError(f"{source}: student.keep_layers={keep_layers}, but the checkpoint has {config.num_layers} "
                    f"encoder layers (give 1..{config.num_layers}, or 0 for all)")
  layer = lambda key: int(m.group(1)) if (m := _LAYER_KEY.search(key)) else -1
  return (dataclasses.replace(config, num_layers=keep_layers),
          {k: v for k, v in state.items() if layer(k) < keep_layers})


def from_pretrained(path: str | os.PathLike, *, projection_dim: int = 0, normalize: bool = False,
                    dtype: str = "float32", keep_layers: int = 0) -> Encoder:
  """Load a Hugging Face BERT / XLM-R directory (local or gs://), or a ColBERT checkpoint with its linear head.

  A head saved by `save_pretrained` is restored. Otherwise a ColBERT checkpoint's head becomes the projection head
  (projection_dim = its out_features, no normalisation: `head=True` gives the projected token vectors ColBERT
  L2-normalises): a PyLate / sentence-transformers layout (modules.json: a Transformer, then token-level Dense
  modules with no activation; several compose into one) or a Stanford ColBERT directory (`linear.weight` in the
  weights). Its [Q] / [D] marker prefixes are logged, recorded in `extra["colbert"]` and made single tokens of the
  tokenizer; nothing prepends them: pass them as the text prefix (teacher.query_prefix / teacher.passage_prefix).
  `projection_dim` > 0 on a directory without a head adds a fresh one (seed 0); `normalize=True` turns on L2
  normalisation of the head output. `keep_layers` > 0 keeps only the first N encoder layers (the embeddings and
  layers 0..N-1 as trained; the layers above are dropped), the usual way to get a shallower student that starts
  from pretrained weights.
  """
  path = epath.Path(path)
  model_dir, dense = _st_layout(path)
  config_file = model_dir / CONFIG_FILE
  if not config_file.exists():
    raise UserError(f"{config_file}: not found (expected a Hugging Face model directory)")
  hf_config = _read_json(config_file)
  stored = hf_config.get("optical_jax") or {}
  stored_dim = int(stored.get("projection_dim", 0))
  if stored_dim and not (model_dir / HEAD_FILE).exists():
    raise UserError(f"{config_file}: optical_jax.projection_dim={stored_dim} but {model_dir / HEAD_FILE} is missing")
  if projection_dim and stored_dim and projection_dim != stored_dim:
    raise UserError(f"projection_dim={projection_dim} conflicts with the saved head ({stored_dim}) in {path}")
  try:
    config = EncoderConfig.from_hf_dict(hf_config, projection_dim=projection_dim or stored_dim,
                                        normalize=normalize or bool(stored.get("normalize", False)), dtype=dtype)
  except (UserError, TypeError) as e:
    raise UserError(f"{config_file}: {e}") from None

  state, source = _read_state(model_dir)
  if keep_layers:
    config, state = _truncated(config, state, keep_layers, source)
  colbert, fmt, head_files = None, "", []
  if not stored_dim:  # our own head, when saved, is the one trained: a Dense beside it is its export
    colbert, fmt, head_files = _colbert_head(path, model_dir, dense, state, config.hidden_size, source)
  if colbert is not None:
    dim = colbert["kernel"].shape[1]
    if projection_dim and projection_dim != dim:
      raise UserError(f"projection_dim={projection_dim} conflicts with the ColBERT head ({config.hidden_size} -> "
                      f"{dim}) in {path}")
    config = dataclasses.replace(config, projection_dim=dim)
  params, extra = _convert_from_hf(state, config, source)
  extra["hf_config"] = hf_config
  if model_dir != path:
    extra["model_dir"] = os.fspath(model_dir)
  if colbert is not None:
    params["projection"] = colbert
  elif config.projection_dim:
    params["projection"] = _read_head(model_dir / HEAD_FILE, config) if stored_dim else _new_head(config, seed=0)
  params = jax.tree.map(jnp.asarray, params)
  tokenizer = _load_tokenizer(model_dir)
  if colbert is not None:
    prefixes, markers = _declared_prefixes(path, model_dir, fmt)
    registered = _register_markers(tokenizer, markers)
    extra["colbert"] = {"format": fmt, "query_prefix": prefixes["query"], "document_prefix": prefixes["document"],
                        "markers": markers, "head_files": [os.fspath(f) for f in head_files]}
    log.info("%s: %s ColBERT checkpoint, its linear head (%d -> %d) loaded as the projection head; it encodes "
             "queries with the prefix %r and documents with %r%s", path, fmt, config.hidden_size, dim,
             prefixes["query"], prefixes["document"],
             f" (marker tokens {', '.join(map(repr, registered))} kept whole)" if registered else "")
  return Encoder(BertEncoder(config), params, config, tokenizer, extra)


def save_pretrained(encoder: Encoder, path: str | os.PathLike) -> None:
  """Write config.json, model.safetensors (HF names, float32), tokenizer files and, with a projection head,
  optical_jax_head.safetensors, so that transformers' AutoModel and `from_pretrained` load the directory."""
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  config = encoder.config

  if encoder.tokenizer is not None:  # first: tokenizer.save_pretrained must not have the last word on any file
    if _is_local(path):
      encoder.tokenizer.save_pretrained(os.fspath(path))
    else:
      with tempfile.TemporaryDirectory() as tmp:
        for f in encoder.tokenizer.save_pretrained(tmp):
          epath.Path(f).copy(path / os.path.basename(f), overwrite=True)

  params = nn.meta.unbox(encoder.params)
  state = params_to_hf_state_dict(params, config)
  state.update(encoder.extra.get("pooler", {}))
  (path / WEIGHTS_FILE).write_bytes(safetensors.numpy.save(state, metadata={"format": "pt"}))

  head_file = path / HEAD_FILE
  if config.projection_dim:
    head = {f"projection.{k}": np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32))
            for k, v in params["projection"].items()}
    head_file.write_bytes(safetensors.numpy.save(head, metadata={"format": "np"}))
  elif head_file.exists():
    head_file.unlink()  # a stale head would otherwise outlive the model it belonged to

  hf_config = {k: v for k, v in encoder.extra.get("hf_config", {}).items()
               if k not in ("optical_jax", "torch_dtype", "architectures")}
  hf_config.update(config.to_hf_dict())  # ours win: the architecture fields must describe these weights
  (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


def random_encoder(config: EncoderConfig, seed: int = 0, tokenizer=None) -> Encoder:
  """A randomly initialised encoder (BERT init: normal 0.02, zero biases, unit LayerNorm), with a random pooler in
  `extra` so that its export loads into transformers without missing weights."""
  module = BertEncoder(config)
  length = min(8, config.max_length)
  ids = jnp.zeros((1, length), jnp.int32)
  variables = jax.jit(module.init)(jax.random.key(seed), ids, jnp.ones_like(ids))
  params = nn.meta.unbox(variables["params"])
  rng = np.random.default_rng(seed)
  h = config.hidden_size
  pooler = {"pooler.dense.weight": rng.normal(0.0, 0.02, (h, h)).astype(np.float32),
            "pooler.dense.bias": np.zeros((h,), np.float32)}
  return Encoder(module, params, config, tokenizer, {"pooler": pooler})
