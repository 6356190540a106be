"""The dev curve: held-out pairs leave training whole (every pair of a held-out English text), and the dev score
equals a loop-by-loop numpy MaxSim MRR@10."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from optical_jax import dev_eval
from optical_jax import sharding as sharding_lib
from optical_jax.data.batch_spec import TrainingData

N, LS, LT, D, VOCAB = 60, 6, 5, 8, 40


def _data(shared: bool = True) -> TrainingData:
  rng = np.random.default_rng(0)
  student_len = rng.integers(2, LS + 1, N)
  teacher_len = rng.integers(1, LT + 1, N)
  arrays = {
      "student_ids": np.where(np.arange(LS) < student_len[:, None], rng.integers(1, VOCAB, (N, LS)), 0),
      "student_mask": (np.arange(LS) < student_len[:, None]).astype(np.int32),
      "teacher_mask": (np.arange(LT) < teacher_len[:, None]).astype(np.int32),
  }
  arrays["student_ids"] = arrays["student_ids"].astype(np.int32)
  arrays["student_ot_mask"] = arrays["student_mask"] * (np.arange(LS) > 0)  # the first token is not scored
  arrays["teacher_tokens"] = (rng.normal(size=(N, LT, D)) * arrays["teacher_mask"][..., None]).astype(np.float16)
  # Two sources of 40 and 20 examples; the second translates the English of the first's examples 0..19.
  teacher_rows = np.concatenate([np.arange(40), np.arange(20)]) if shared else np.arange(N)
  for key in ("teacher_tokens", "teacher_mask"):
    arrays[key][40:] = arrays[key][teacher_rows[40:]] if shared else arrays[key][40:]
  load_rows = lambda indices: {k: v[np.asarray(indices)] for k, v in arrays.items()}
  return TrainingData(load_rows, N, D, {}, "test rows", student_lengths=student_len, teacher_lengths=teacher_len,
                      sources=((40, 1.0), (20, 2.0)), teacher_rows=teacher_rows)


def test_hold_out_removes_every_pair_of_a_held_out_text():
  data = _data()
  held = dev_eval.hold_out(data, 8, seed=0)
  dev = held.dev
  kept = held.load_rows(np.arange(held.num_examples))
  dev_groups = set(np.unique(data.teacher_rows[np.isin(data.teacher_rows, held.teacher_rows, invert=True)]))
  assert len(dev_groups) == 8 and not dev_groups & set(held.teacher_rows.tolist())
  assert held.num_examples == sum(size for size, _ in held.sources) == N - np.isin(data.teacher_rows,
                                                                                   list(dev_groups)).sum()
  assert [w for _, w in held.sources] == [1.0, 2.0]
  np.testing.assert_array_equal(kept["student_ids"], data.load_rows(
      np.flatnonzero(~np.isin(data.teacher_rows, list(dev_groups))))["student_ids"])
  # Each dev query's relevant document is its own translation, and the documents are distinct texts.
  assert len(dev.doc_tokens) == 8 and len(dev.relevant) == 8
  for q in range(len(dev.relevant)):
    row = int(np.flatnonzero((data.load_rows(np.arange(N))["student_ids"] == dev.student_ids[q]).all(1))[0])
    np.testing.assert_array_equal(dev.doc_tokens[dev.relevant[q]], data.load_rows([row])["teacher_tokens"][0])
  assert dev_eval.hold_out(data, 0, seed=0) is data
  with pytest.raises(ValueError, match="half or more"):
    dev_eval.hold_out(data, 30, seed=0)


@dataclasses.dataclass
class _LookupModel:
  """Token i -> embedding row i: an encoder whose output the test can recompute."""

  def apply(self, variables, ids, mask, head=True):
    del mask, head
    return variables["params"]["embedding"][ids]


def _numpy_mrr(embedding, dev):
  q_tokens = embedding[dev.student_ids]
  mrr = []
  for q in range(len(dev.relevant)):
    scores = []
    for d in range(len(dev.doc_tokens)):
      best = []
      for i in np.flatnonzero(dev.query_mask[q]):
        a = q_tokens[q, i] / np.linalg.norm(q_tokens[q, i])
        sims = [a @ (dev.doc_tokens[d, j] / np.linalg.norm(dev.doc_tokens[d, j])) for j in np.flatnonzero(dev.doc_mask[d])]
        best.append(max(sims))
      scores.append(np.mean(best))
    rank = sum(s > scores[dev.relevant[q]] + 1e-6 for s in scores)
    mrr.append(1.0 / (rank + 1) if rank < 10 else 0.0)
  return float(np.mean(mrr))


def test_dev_score_matches_numpy_maxsim_mrr():
  held = dev_eval.hold_out(_data(shared=False), 12, seed=1)
  embedding = np.random.default_rng(2).normal(size=(VOCAB, D)).astype(np.float32)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  params = jax.device_put({"embedding": jnp.asarray(embedding)}, sharding_lib.replicated(mesh))
  scores = dev_eval.make_dev_eval(_LookupModel(), held.dev, mesh)(params)
  assert scores["dev_mrr@10"] == pytest.approx(_numpy_mrr(embedding, held.dev), abs=1e-5)
  assert 0 <= scores["dev_top1"] <= scores["dev_mrr@10"] <= 1
