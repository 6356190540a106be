"""Hugging Face directories <-> optical_jax encoders: load, save, convert weights, tokenize.

A directory written by `save_pretrained` is what transformers' PyTorch `BertModel` / `XLMRobertaModel` / `AutoModel`
load (config.json, model.safetensors with HF key names, tokenizer files). An optional projection head lives beside it
in `optical_jax_head.safetensors`, announced by an "optical_jax" field in config.json; transformers ignores both.
"""
from __future__ import annotations

import functools
import io
import json
import os
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
  pooler weights under "pooler", the source config.json under "hf_config").
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


def from_pretrained(path: str | os.PathLike, *, projection_dim: int = 0, normalize: bool = False,
                    dtype: str = "float32") -> Encoder:
  """Load a Hugging Face BERT / XLM-R directory (local or gs://).

  A head saved by `save_pretrained` is restored; `projection_dim` > 0 on a directory without one adds a fresh head
  (seed 0); `normalize=True` turns on L2 normalisation of the head output.
  """
  path = epath.Path(path)
  config_file = path / CONFIG_FILE
  if not config_file.exists():
    raise UserError(f"{config_file}: not found (expected a Hugging Face model directory)")
  try:
    hf_config = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{config_file}: invalid JSON ({e})") from None
  stored = hf_config.get("optical_jax") or {}
  stored_dim = int(stored.get("projection_dim", 0))
  if stored_dim and not (path / HEAD_FILE).exists():
    raise UserError(f"{config_file}: optical_jax.projection_dim={stored_dim} but {path / HEAD_FILE} is missing")
  if projection_dim and stored_dim and projection_dim != stored_dim:
    raise UserError(f"projection_dim={projection_dim} conflicts with the saved head ({stored_dim}) in {path}")
  try:
    config = EncoderConfig.from_hf_dict(hf_config, projection_dim=projection_dim or stored_dim,
                                        normalize=normalize or bool(stored.get("normalize", False)), dtype=dtype)
  except (UserError, TypeError) as e:
    raise UserError(f"{config_file}: {e}") from None

  state, source = _read_state(path)
  params, extra = _convert_from_hf(state, config, source)
  extra["hf_config"] = hf_config
  if config.projection_dim:
    params["projection"] = _read_head(path / HEAD_FILE, config) if stored_dim else _new_head(config, seed=0)
  params = jax.tree.map(jnp.asarray, params)
  return Encoder(BertEncoder(config), params, config, _load_tokenizer(path), extra)


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
