"""The masked-LM head of BERT / XLM-R in Flax, and its Hugging Face weights (for `optical-jax pretrain`).

The layout of transformers' XLMRobertaLMHead / BertLMPredictionHead: dense [H, H] -> exact GELU -> LayerNorm ->
decoder tied to the word embeddings (logits = x E^T) + a per-token bias [V]. Parameters, kept under HEAD_KEY beside
the encoder's own (so the encoder's part of the tree is exactly the student's):

  lm_head/dense/{kernel [H, H], bias [H]}   lm_head/layer_norm/{scale, bias}   lm_head/bias [V]

Hugging Face names: XLM-R `lm_head.dense.*`, `lm_head.layer_norm.*`, `lm_head.bias`; BERT
`cls.predictions.transform.dense.*`, `cls.predictions.transform.LayerNorm.*`, `cls.predictions.bias`. The decoder
matrix is never stored: it is the word-embedding table, as transformers' own save_pretrained leaves it out.
"""
from __future__ import annotations

import json
import os
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from optical_jax.errors import UserError
from optical_jax.models import hf
from optical_jax.models.bert import DTYPES, EncoderConfig, exact_gelu

HEAD_KEY = "lm_head"
_ENCODER_PREFIX = {"xlm-roberta": "roberta.", "bert": "bert."}
_ARCHITECTURE = {"xlm-roberta": "XLMRobertaForMaskedLM", "bert": "BertForMaskedLM"}
# Our leaf -> its HF name, per model type.
_HF_NAMES = {
    "xlm-roberta": {("dense", "kernel"): "lm_head.dense.weight", ("dense", "bias"): "lm_head.dense.bias",
                    ("layer_norm", "scale"): "lm_head.layer_norm.weight",
                    ("layer_norm", "bias"): "lm_head.layer_norm.bias", ("bias",): "lm_head.bias"},
    "bert": {("dense", "kernel"): "cls.predictions.transform.dense.weight",
             ("dense", "bias"): "cls.predictions.transform.dense.bias",
             ("layer_norm", "scale"): "cls.predictions.transform.LayerNorm.weight",
             ("layer_norm", "bias"): "cls.predictions.transform.LayerNorm.bias", ("bias",): "cls.predictions.bias"},
}
# Where an older checkpoint may keep the same tensor instead (the decoder's own bias, TF-era LayerNorm names).
_ALIASES = {"lm_head.bias": "lm_head.decoder.bias", "cls.predictions.bias": "cls.predictions.decoder.bias",
            "cls.predictions.transform.LayerNorm.weight": "cls.predictions.transform.LayerNorm.gamma",
            "cls.predictions.transform.LayerNorm.bias": "cls.predictions.transform.LayerNorm.beta"}

_partitioned = nn.with_logical_partitioning
_zeros = nn.initializers.zeros_init()


class MLMHead(nn.Module):
  """hidden [..., H] and the word-embedding table [V, H] -> logits [..., V] float32."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    x = nn.Dense(cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32, name="dense",
                 kernel_init=_partitioned(nn.initializers.normal(0.02), ("embed", None)),
                 bias_init=_partitioned(_zeros, (None,)))(hidden)
    x = exact_gelu(x)
    # float32 statistics, as the encoder's own LayerNorms.
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32, name="layer_norm",
                     scale_init=_partitioned(nn.initializers.ones_init(), ("embed",)),
                     bias_init=_partitioned(_zeros, ("embed",)))(x.astype(jnp.float32))
    bias = self.param("bias", _partitioned(_zeros, ("vocab",)), (cfg.vocab_size,), jnp.float32)
    logits = jnp.einsum("...h,vh->...v", x.astype(dtype), word_embeddings.astype(dtype),
                        preferred_element_type=jnp.float32)
    return logits + bias


def head_to_hf(head: Any, model_type: str) -> dict[str, np.ndarray]:
  """Our head params -> HF tensors (torch Linear weights are [out, in])."""
  out = {}
  for path, name in _HF_NAMES[model_type].items():
    value = head
    for key in path:
      value = value[key]
    value = np.asarray(jax.device_get(value), np.float32)
    out[name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
  return out


def head_from_hf(state: dict[str, np.ndarray], config: EncoderConfig, source: str) -> dict | None:
  """The head in an HF state dict, or None when it has none (e.g. mE5, shipped as a bare encoder)."""
  names = _HF_NAMES[config.model_type]
  found = {name: state.get(name, state.get(_ALIASES.get(name, ""))) for name in names.values()}
  if all(v is None for v in found.values()):
    return None
  h, v = config.hidden_size, config.vocab_size
  shapes = {"dense": {"kernel": (h, h), "bias": (h,)}, "layer_norm": {"scale": (h,), "bias": (h,)}, "bias": (v,)}
  head: dict = {"dense": {}, "layer_norm": {}}
  for path, name in names.items():
    value, shape = found[name], shapes[path[0]] if len(path) == 1 else shapes[path[0]][path[1]]
    if value is None:
      raise UserError(f"{source}: has part of a masked-LM head but not {name!r}")
    value = np.asarray(value, np.float32)
    value = value.T if path[-1] == "kernel" else value
    if value.shape != shape:
      raise UserError(f"{source}: weight {name!r} has shape {value.shape}, config.json implies {shape}")
    if len(path) == 1:
      head[path[0]] = value
    else:
      head[path[0]][path[1]] = value
  return head


def read_head(path: str | os.PathLike, config: EncoderConfig) -> dict | None:
  """The masked-LM head saved in an HF directory, or None. Reads only the head's tensors where it can."""
  path = epath.Path(path)
  weights = path / hf.WEIGHTS_FILE
  wanted = set(_HF_NAMES[config.model_type].values()) | set(_ALIASES.values())
  if "://" not in os.fspath(path) and weights.exists():
    # A lazy read: the whole file is the ~470 MB embedding table for mE5, and from_pretrained has just read it.
    try:
      with safetensors.safe_open(os.fspath(weights), framework="numpy") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k in wanted}
    except Exception as e:  # safetensors raises several types
      raise UserError(f"{weights}: cannot read safetensors weights ({type(e).__name__}: {e})") from None
    source = str(weights)
  else:
    state, source = hf._read_state(path)  # pylint: disable=protected-access  (sharded / torch / remote weights)
  return head_from_hf(state, config, source)


def save_masked_lm(encoder: hf.Encoder, head: Any, path: str | os.PathLike) -> None:
  """An HF directory that transformers' AutoModelForMaskedLM loads (and `models.from_pretrained`, which drops the
  head): the encoder as `save_pretrained` writes it, with the encoder prefix, the head and the masked-LM
  architecture. The pooler, which the masked-LM classes lack, stays for the encoder's later exports."""
  config = encoder.config
  if config.projection_dim:
    raise ValueError("a masked-LM export has no projection head")
  path = epath.Path(path)
  hf.save_pretrained(encoder, path)  # tokenizer, config.json, and the weights rewritten below
  prefix = _ENCODER_PREFIX[config.model_type]
  state = {prefix + k: v for k, v in hf.params_to_hf_state_dict(encoder.params, config).items()}
  state.update({prefix + k: v for k, v in encoder.extra.get("pooler", {}).items()})
  state.update(head_to_hf(head, config.model_type))
  (path / hf.WEIGHTS_FILE).write_bytes(safetensors.numpy.save(state, metadata={"format": "pt"}))
  hf_config = json.loads((path / hf.CONFIG_FILE).read_text())
  hf_config.update(architectures=[_ARCHITECTURE[config.model_type]], tie_word_embeddings=True)
  (path / hf.CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
