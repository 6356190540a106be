"""Index and exact-search cost at growing corpus sizes, on SYNTHETIC vectors (no encoder runs).

  python -m benchmarks.index_search --docs 10000 100000 --out runs/index_bench [--queries 64] [--json PATH]

For each size: writes an index of N documents (random unit float16 token vectors, 20-60 tokens each, dim 384, the
mE5-small shapes) with the real `retrieval/doc_index.py` writer, then times `optical-jax search`'s streamed exact
MaxSim and pooled top 100 for a batch of queries (32 tokens each), and records the peak resident memory of each phase
in a fresh subprocess. The encoder's cost is left out on purpose: it is the teacher's forward pass, the same per
document whatever the index; this measures what grows with the corpus.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

DIM, MIN_TOKENS, MAX_TOKENS, QUERY_TOKENS, K = 384, 20, 60, 32, 100


def _synthetic_encode(seed: int):
  from optical_jax.retrieval.encode import Encoded
  rng = np.random.default_rng(seed)

  def encode(texts):
    n = len(texts)
    lengths = rng.integers(MIN_TOKENS, MAX_TOKENS + 1, n)
    mask = np.arange(MAX_TOKENS)[None] < lengths[:, None]
    tokens = rng.standard_normal((n, MAX_TOKENS, DIM), np.float32)
    tokens /= np.linalg.norm(tokens, axis=-1, keepdims=True)
    tokens *= mask[..., None]
    pooled = tokens.sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    return Encoded(tokens.astype(np.float16), mask, mask, pooled)
  return encode


def build(out: str, docs: int) -> None:
  from optical_jax.retrieval import doc_index
  identity = {"teacher": "synthetic", "teacher_checksum": "-", "prefix": "", "max_len": MAX_TOKENS,
              "maxsim_tokens": "all", "dim": DIM}
  documents = [(f"d{i}", "") for i in range(docs)]
  doc_index.build(out, documents, _synthetic_encode(0), identity=identity, docs_per_shard=8192)


def search(out: str, queries: int, scorer: str) -> None:
  from optical_jax import index_search
  from optical_jax.retrieval import doc_index
  from optical_jax.retrieval.encode import Encoded
  rng = np.random.default_rng(1)
  tokens = rng.standard_normal((queries, QUERY_TOKENS, DIM)).astype(np.float32)
  mask = np.ones((queries, QUERY_TOKENS), bool)
  pooled = tokens.mean(1)
  q = Encoded(tokens.astype(np.float16), mask, mask, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True))
  index_search._full_search(doc_index.DocIndex(out), q, [f"q{i}" for i in range(queries)], scorer, K)  # pylint: disable=protected-access


def _phase(args: list[str]) -> dict[str, float]:
  """Runs one phase in a fresh interpreter: wall seconds and its peak RSS."""
  started = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "benchmarks.index_search", "--phase", *args], capture_output=True,
                        text=True, check=True)
  return {"seconds": time.perf_counter() - started, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
  parser.add_argument("--queries", type=int, default=64)
  parser.add_argument("--out", default="runs/index_bench")
  parser.add_argument("--json", dest="json_path")
  parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.phase:
    kind, out, value = args.phase[0], args.phase[1], args.phase[2]
    build(out, int(value)) if kind == "build" else search(out, args.queries, value)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return
  rows = []
  for docs in args.docs:
    out = os.path.join(args.out, f"n{docs}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
      built = _phase(["build", out, str(docs)])
    else:
      built = {"seconds": float("nan"), "peak_rss_mb": float("nan")}
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    row = {"docs": docs, "index_gb": size / 1e9, "build_s": built["seconds"], "build_peak_rss_mb": built["peak_rss_mb"]}
    for scorer in ("maxsim", "pooled"):
      timed = _phase(["search", out, scorer, "--queries", str(args.queries)])
      row[f"{scorer}_s"], row[f"{scorer}_peak_rss_mb"] = timed["seconds"], timed["peak_rss_mb"]
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.json_path:
    with open(args.json_path, "w", encoding="utf-8") as f:
      json.dump({"queries": args.queries, "k": K, "dim": DIM, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
