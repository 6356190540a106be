"""Run by tests/test_export_formats.py in the PyLate environment (tests/pylate_env): loads an `export --format
pylate` directory with pylate.models.ColBERT and writes its query token vectors and MaxSim scores.

  python encode_queries.py EXPORT_DIR IN.json OUT.npz
IN.json: {"queries": [...], "documents": [[[float, ...], ...], ...]} (document token vectors, as the teacher's index
holds them). OUT.npz: q0, q1, ... (every query token PyLate keeps, its prompt included), prompts (JSON) and scores
(pylate.scores.colbert_scores of the sliced query vectors against the documents: PyLate's summed MaxSim).
"""
import json
import sys

import numpy as np
import pylate
from pylate import models, scores
import torch


def main(export_dir: str, in_json: str, out_npz: str) -> None:
  given = json.load(open(in_json))
  model = models.ColBERT(export_dir, device="cpu")
  vectors = model.encode(given["queries"], is_query=True, prompt_name="query", convert_to_numpy=True,
                         show_progress_bar=False)
  start, stop = given["slice"]
  sliced = [v[start:stop] if len(v[start:stop]) else v for v in vectors]
  docs = [torch.tensor(np.asarray(d, np.float32)) for d in given["documents"]]
  width = max(len(s) for s in sliced)
  q = torch.zeros(len(sliced), width, sliced[0].shape[1])
  q_mask = torch.zeros(len(sliced), width)
  for i, s in enumerate(sliced):
    q[i, :len(s)], q_mask[i, :len(s)] = torch.tensor(s), 1
  dl = max(len(d) for d in docs)
  d = torch.zeros(len(docs), dl, docs[0].shape[1])
  d_mask = torch.zeros(len(docs), dl)
  for i, t in enumerate(docs):
    d[i, :len(t)], d_mask[i, :len(t)] = t, 1
  score = scores.colbert_scores(q, d, queries_mask=q_mask, documents_mask=d_mask, backend="torch")
  np.savez(out_npz, scores=score.numpy(), prompts=json.dumps(model.prompts), version=pylate.__version__,
           **{f"q{i}": v for i, v in enumerate(vectors)})


if __name__ == "__main__":
  main(*sys.argv[1:])
