"""The dev curve: retrieval on pairs held out of the training bitext, scored while training (`train.eval_every`).

`data.dev_pairs` English texts are drawn (seeded by `data.sample_seed`) and every pair with one of them as its
English side leaves the training set. Queries = their low-resource side, encoded by the student being trained;
documents = their stored teacher tokens, so no teacher runs and no document is encoded twice. Scored by MaxSim
over the tokens the ranking term uses (content tokens with `ot.tokens=content`), like `losses.ranking_scores`.
The stored tokens are the teacher's English in the mode teacher.targets names (query-mode by default), and the
pool is small, so the figure follows the trend of the held-out collections rather than equalling them: it is there
to show when training has converged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from optical_jax import losses
from optical_jax import sharding as sharding_lib
from optical_jax.data.batch_spec import TrainingData

QUERY_CHUNK = 32  # queries scored per call: [chunk, docs, Lq, Ld] similarities stay in the low hundreds of MB


@dataclasses.dataclass(frozen=True)
class DevSet:
  student_ids: np.ndarray     # [Q, Ls] queries
  student_mask: np.ndarray    # [Q, Ls] real tokens (what the encoder attends to)
  query_mask: np.ndarray      # [Q, Ls] the tokens MaxSim scores
  doc_tokens: np.ndarray      # [D, Lt, dim] stored teacher tokens
  doc_mask: np.ndarray        # [D, Lt] the tokens MaxSim scores
  relevant: np.ndarray        # [Q] the row of doc_tokens that is query q's translation


def hold_out(data: TrainingData, dev_pairs: int, seed: int) -> TrainingData:
  """`data` without the dev pairs, with `dev` set (unchanged when dev_pairs is 0)."""
  if dev_pairs <= 0:
    return data
  groups = data.teacher_rows if data.teacher_rows is not None else np.arange(data.num_examples)
  distinct = np.unique(groups)
  if dev_pairs >= len(distinct) // 2:
    raise ValueError(f"data.dev_pairs={dev_pairs} would hold out half or more of the {len(distinct)} training texts")
  picked = np.sort(np.random.default_rng([seed, 1]).choice(distinct, dev_pairs, replace=False))
  is_dev = np.isin(groups, picked)
  dev_rows, train_rows = np.flatnonzero(is_dev), np.flatnonzero(~is_dev)
  # Query count capped at dev_pairs (sources sharing English would multiply it); every picked text stays a document.
  queries = dev_rows[np.random.default_rng([seed, 2]).permutation(len(dev_rows))[:dev_pairs]]
  queries.sort()
  first_of = {g: int(r) for r, g in reversed(list(zip(dev_rows, groups[dev_rows])))}
  rows = data.load_rows(queries)
  docs = data.load_rows(np.asarray([first_of[g] for g in picked]))
  dev = DevSet(
      student_ids=rows["student_ids"], student_mask=rows["student_mask"],
      query_mask=rows.get("student_ot_mask", rows["student_mask"]),
      doc_tokens=docs["teacher_tokens"].astype(np.float32),
      doc_mask=docs.get("teacher_ot_mask", docs["teacher_mask"]),
      relevant=np.searchsorted(picked, groups[queries]).astype(np.int32))
  starts = np.cumsum([0] + [size for size, _ in data.sources])
  sources = tuple((int(np.sum((train_rows >= a) & (train_rows < b))), w)
                  for (a, b), (_, w) in zip(zip(starts[:-1], starts[1:]), data.sources))
  pick = lambda lengths: None if lengths is None else lengths[train_rows]
  return dataclasses.replace(
      data, load_rows=lambda indices: data.load_rows(train_rows[np.asarray(indices)]), num_examples=len(train_rows),
      description=f"{data.description}; {len(queries)} dev queries over {dev_pairs} held-out English texts",
      student_lengths=pick(data.student_lengths), teacher_lengths=pick(data.teacher_lengths),
      english_lengths=pick(data.english_lengths),
      teacher_rows=pick(data.teacher_rows), sources=sources, dev=dev)


def make_dev_eval(model: Any, dev: DevSet, mesh: jax.sharding.Mesh) -> Callable[[Any], dict[str, float]]:
  """params -> {"dev_mrr@10", "dev_top1"} of the student with those parameters on the dev set.

  Every process scores every query (the dev set is small); the scores come back replicated, so each process can
  read them whatever the parameters' sharding.
  """

  @functools.partial(jax.jit, out_shardings=sharding_lib.replicated(mesh))
  def scores(params, ids, mask, query_mask, docs, doc_mask):
    tokens = model.apply({"params": params}, ids, mask, head=True)
    return losses.ranking_scores(tokens, query_mask, docs, doc_mask)

  def evaluate(params) -> dict[str, float]:
    q = len(dev.relevant)
    pad = -q % QUERY_CHUNK
    padded = [np.pad(a, ((0, pad), (0, 0))) for a in (dev.student_ids, dev.student_mask, dev.query_mask)]
    out = [np.asarray(scores(params, *(a[i:i + QUERY_CHUNK] for a in padded), dev.doc_tokens, dev.doc_mask))
           for i in range(0, q + pad, QUERY_CHUNK)]
    all_scores = np.concatenate(out)[:q]
    own = all_scores[np.arange(q), dev.relevant]
    rank = np.sum(all_scores > own[:, None], axis=1)  # ties counted in the query's favour
    return {"dev_mrr@10": float(np.mean(np.where(rank < 10, 1.0 / (rank + 1), 0.0))),
            "dev_top1": float(np.mean(rank == 0))}

  return evaluate
