"""Texts to token embeddings with any encoder, in fixed-shape sharded batches (teacher store, document index).

Also the byte-level tokenizer that random (test-sized) encoders use, so the whole text path runs with no asset
package: configs/tiny.py's `:text` variant trains a random student against a random tiny teacher on a real file.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import jax
import numpy as np

from optical_jax import sharding as sharding_lib

BYTE_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
  """A deterministic byte-level tokenizer (5 specials + 256 bytes): BERT-style [CLS] text [SEP], pad id 0."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
  vocab.update({ch: len(BYTE_SPECIALS) + i for i, ch in enumerate(sorted(alphabet))})
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                 unk_token="[UNK]", mask_token="[MASK]")


def student_tokenizer(config):
  """The student's tokenizer: its init directory's, or the byte-level one for a random student."""
  if config.student.init == "random":
    return byte_tokenizer()
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(config.student.init))


def load_encoder(path: str, *, random_dims: dict | None = None, seed: int = 0, dtype: str = "float32"):
  """An HF directory through models.from_pretrained, or "random": a random BERT with the byte tokenizer."""
  from optical_jax import models
  if path != "random":
    return models.from_pretrained(path, dtype=dtype)
  dims = dict(random_dims or {})
  config = models.EncoderConfig(model_type="bert", vocab_size=dims.get("vocab_size", 512),
                                hidden_size=dims["hidden_size"], num_layers=dims.get("num_layers", 2),
                                num_heads=dims.get("num_heads", 4), intermediate_size=dims.get("intermediate_size",
                                                                                                 2 * dims["hidden_size"]),
                                max_position_embeddings=dims.get("max_position_embeddings", 512), pad_token_id=0,
                                dtype=dtype)
  return models.random_encoder(config, seed=seed, tokenizer=byte_tokenizer())


def make_encode_fn(encoder, *, max_len: int, batch_size: int, mesh: jax.sharding.Mesh | None = None,
                   prefix: str = "", head: bool = False, length_buckets: Sequence[int] = ()
                   ) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
  """texts -> (token embeddings [n, max_len, D] float32, mask [n, max_len] int32).

  Every call runs at the same [batch_size, max_len] shape (short batches are padded with empty rows), so the model
  compiles once (or once per length bucket: with `length_buckets`, a batch runs cut to the smallest bucket that holds
  its longest text, and its output is padded back to max_len); with a mesh the batch is split over its data x fsdp axes and the parameters are replicated.
  """
  if mesh is not None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards
    params = jax.device_put(encoder.params, sharding_lib.replicated(mesh))
    in_sharding = sharding_lib.data_sharding(mesh, 2)
    apply = jax.jit(functools.partial(encoder.module.apply, head=head), in_shardings=(None, in_sharding, in_sharding),
                    out_shardings=sharding_lib.data_sharding(mesh, 3))
  else:
    params = encoder.params
    apply = jax.jit(functools.partial(encoder.module.apply, head=head))

  def encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    texts = list(texts)
    out_tokens, out_mask = [], []
    for start in range(0, len(texts), batch_size):
      chunk = texts[start:start + batch_size]
      ids, mask = encoder.tokenize(chunk, max_len, prefix=prefix)
      pad = batch_size - len(chunk)
      if pad:
        ids = np.concatenate([ids, np.zeros((pad, max_len), ids.dtype)])
        mask = np.concatenate([mask, np.zeros((pad, max_len), mask.dtype)])
      length = _bucket(length_buckets, max_len, mask)
      with sharding_lib.mesh_context(mesh) if mesh is not None else contextlib.nullcontext():
        hidden = apply({"params": params}, ids[:, :length], mask[:, :length])
      hidden = np.asarray(hidden, np.float32)[:len(chunk)]
      if length < max_len:
        hidden = np.pad(hidden, ((0, 0), (0, max_len - length), (0, 0)))
      out_tokens.append(hidden)
      out_mask.append(mask[:len(chunk)])
    if not out_tokens:
      dim = encoder.config.projection_dim if head and encoder.config.projection_dim else encoder.config.hidden_size
      return np.zeros((0, max_len, dim), np.float32), np.zeros((0, max_len), np.int32)
    return np.concatenate(out_tokens), np.concatenate(out_mask)

  return encode


def _bucket(buckets: Sequence[int], max_len: int, mask: np.ndarray) -> int:
  """The smallest of buckets (and max_len) >= the last real position of any row of mask."""
  longest = int(np.max(np.flatnonzero(mask.any(0)), initial=-1)) + 1
  return min([b for b in buckets if b >= longest] + [max_len])
