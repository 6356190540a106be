"""Document index: every document's token embeddings (for MaxSim) and pooled vector (for cosine), on the host.

The encoder is the caller's: `encode_fn(texts) -> (token_embeddings [b, L, D] float32, mask [b, L])`. Token
embeddings are stored as float16 (half the host memory; MaxSim casts back to float32 on the device), padded or cut
to `max_len` tokens; pooled vectors stay float32.

On disk an index is a directory: `index.safetensors` (token_embeddings, mask, pooled), `doc_ids.json` (the ids in
row order) and `index.json` (format version, pooling, sizes).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import safetensors.numpy
from tqdm import tqdm

from optical_jax.errors import UserError

EncodeFn = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
POOLINGS = ("mean", "cls")
FORMAT_VERSION = 1
_ARRAYS_FILE, _IDS_FILE, _META_FILE = "index.safetensors", "doc_ids.json", "index.json"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def pool_embeddings(token_embeddings: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
  """[b, L, D] + mask [b, L] -> L2-normalised [b, D] float32.

  "mean": mean over real tokens (the E5 / mE5 recipe); "cls": the first token. Rows with no real token pool to 0.
  """
  if pooling not in POOLINGS:
    raise UserError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
  x = np.asarray(token_embeddings, dtype=np.float32)
  m = np.asarray(mask).astype(np.float32)
  if pooling == "mean":
    pooled = np.einsum("bld,bl->bd", x, m) / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
  else:
    pooled = x[:, 0, :] * (m[:, :1] > 0)
  norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
  return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclasses.dataclass
class DocumentIndex:
  """doc_ids[i] is row i of token_embeddings [N, Ld, D] float16, mask [N, Ld] bool and pooled [N, D] float32."""
  doc_ids: list[str]
  token_embeddings: np.ndarray
  mask: np.ndarray
  pooled: np.ndarray
  pooling: str = "mean"

  def __post_init__(self):
    n = len(self.doc_ids)
    if self.token_embeddings.ndim != 3 or self.token_embeddings.shape[0] != n:
      raise ValueError(f"token_embeddings {self.token_embeddings.shape} must be [{n}, Ld, D]")
    if self.mask.shape != self.token_embeddings.shape[:2]:
      raise ValueError(f"mask {self.mask.shape} must be {self.token_embeddings.shape[:2]}")
    if self.pooled.shape != (n, self.token_embeddings.shape[2]):
      raise ValueError(f"pooled {self.pooled.shape} must be {(n, self.token_embeddings.shape[2])}")
    if len(set(self.doc_ids)) != n:
      raise ValueError("doc_ids are not unique")

  def __len__(self) -> int:
    return len(self.doc_ids)

  @property
  def dim(self) -> int:
    return self.token_embeddings.shape[2]

  @property
  def max_len(self) -> int:
    return self.token_embeddings.shape[1]

  def save(self, path: os.PathLike | str) -> None:
    """Writes the index directory `path` (created if needed; existing index files are replaced)."""
    os.makedirs(path, exist_ok=True)
    arrays = {"token_embeddings": np.ascontiguousarray(self.token_embeddings, dtype=np.float16),
              "mask": np.ascontiguousarray(self.mask, dtype=bool),
              "pooled": np.ascontiguousarray(self.pooled, dtype=np.float32)}
    safetensors.numpy.save_file(arrays, os.path.join(path, _ARRAYS_FILE))
    with open(os.path.join(path, _IDS_FILE), "w", encoding="utf-8") as f:
      json.dump(list(self.doc_ids), f, ensure_ascii=False)
    meta = {"format": FORMAT_VERSION, "pooling": self.pooling, "num_docs": len(self), "max_len": self.max_len,
            "dim": self.dim}
    with open(os.path.join(path, _META_FILE), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)

  @classmethod
  def load(cls, path: os.PathLike | str) -> DocumentIndex:
    """Reads an index directory written by `save`."""
    for name in (_ARRAYS_FILE, _IDS_FILE, _META_FILE):
      if not os.path.isfile(os.path.join(path, name)):
        raise UserError(f"{path}: not a document index (missing {name})")
    try:
      with open(os.path.join(path, _META_FILE), encoding="utf-8") as f:
        meta = json.load(f)
      with open(os.path.join(path, _IDS_FILE), encoding="utf-8") as f:
        doc_ids = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path}: corrupt index metadata ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
      raise UserError(f"{path}/{_META_FILE}: index format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    try:
      arrays = safetensors.numpy.load_file(os.path.join(path, _ARRAYS_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
      raise UserError(f"{path}/{_ARRAYS_FILE}: cannot read ({e})") from None
    if not isinstance(doc_ids, list) or len(doc_ids) != arrays["pooled"].shape[0]:
      raise UserError(f"{path}/{_IDS_FILE}: {len(doc_ids)} ids for {arrays['pooled'].shape[0]} indexed documents")
    return cls(doc_ids=[str(d) for d in doc_ids], token_embeddings=arrays["token_embeddings"],
               mask=arrays["mask"].astype(bool), pooled=arrays["pooled"], pooling=meta["pooling"])


def progress_disabled() -> bool:
  """No progress bar in CI or when stderr is not a terminal (logs stay readable)."""
  return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def fit_length(token_embeddings: np.ndarray, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Cuts or zero-pads [b, L, D] / [b, L] to exactly `length` tokens (pad tokens are masked out)."""
  b, cur, d = token_embeddings.shape
  if cur >= length:
    return token_embeddings[:, :length], mask[:, :length]
  embs = np.zeros((b, length, d), dtype=token_embeddings.dtype)
  embs[:, :cur] = token_embeddings
  full_mask = np.zeros((b, length), dtype=bool)
  full_mask[:, :cur] = mask
  return embs, full_mask


def encode_batch(encode_fn: EncodeFn, texts: list[str], max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Calls `encode_fn` and checks its output: ([b, L, D] float32, [b, L] bool), L = max_len unless None.

  Embeddings under padding are set to 0.
  """
  embs, mask = encode_fn(texts)
  embs, mask = np.asarray(embs, dtype=np.float32), np.asarray(mask).astype(bool)
  if embs.ndim != 3 or embs.shape[0] != len(texts) or mask.shape != embs.shape[:2]:
    raise ValueError(f"encode_fn returned token embeddings {embs.shape} and mask {mask.shape} for {len(texts)} texts;"
                     " expected [b, L, D] and [b, L]")
  # Zero what sits under padding: stored rows then do not depend on the batch a document was encoded in.
  embs = np.where(mask[..., None], embs, 0.0).astype(np.float32)
  return (embs, mask) if max_len is None else fit_length(embs, mask, max_len)


def build_index(encode_fn: EncodeFn, texts: Sequence[str], doc_ids: Sequence[str], *, max_len: int,
                batch_size: int, pooling: str = "mean") -> DocumentIndex:
  """Encodes `texts` in batches of `batch_size` and returns their index (rows in the order given).

  Tokens beyond `max_len` are dropped (the pooled vector is computed from the kept tokens, so the two agree).
  """
  if len(texts) != len(doc_ids):
    raise UserError(f"{len(texts)} document texts but {len(doc_ids)} document ids")
  if not texts:
    raise UserError("no documents to index")
  if pooling not in POOLINGS:
    raise UserError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
  if max_len < 1 or batch_size < 1:
    raise UserError(f"max_len and batch_size must be ≥ 1, got {max_len} and {batch_size}")
  seen = set()
  for docid in doc_ids:
    if docid in seen:
      raise UserError(f"document id {docid!r} appears twice")
    seen.add(docid)

  n = len(texts)
  token_embeddings = mask = pooled = None
  with tqdm(total=n, desc="indexing documents", unit="doc", disable=progress_disabled()) as bar:
    for start in range(0, n, batch_size):
      batch = list(texts[start:start + batch_size])
      embs, m = encode_batch(encode_fn, batch, max_len)
      if token_embeddings is None:  # allocate once the embedding size is known
        token_embeddings = np.zeros((n, max_len, embs.shape[2]), np.float16)
        mask = np.zeros((n, max_len), bool)
        pooled = np.zeros((n, embs.shape[2]), np.float32)
      if embs.shape[2] != token_embeddings.shape[2]:
        raise ValueError(f"encode_fn returned embedding size {embs.shape[2]}, "
                         f"earlier batches {token_embeddings.shape[2]}")
      if np.abs(embs).max(initial=0.0) > _FLOAT16_MAX or not np.isfinite(embs).all():
        raise ValueError(f"encode_fn returned non-finite or float16-overflowing values (documents {start}..)")
      token_embeddings[start:start + len(batch)] = embs
      mask[start:start + len(batch)] = m
      pooled[start:start + len(batch)] = pool_embeddings(embs, m, pooling)
      bar.update(len(batch))
  return DocumentIndex(doc_ids=[str(d) for d in doc_ids], token_embeddings=token_embeddings, mask=mask,
                       pooled=pooled, pooling=pooling)
