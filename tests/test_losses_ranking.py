"""losses.ranking_loss against a loop-by-loop numpy InfoNCE, plus its masking and near-duplicate contract."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax import losses


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _numpy_scores(q, qm, d, dm, scorer):
  out = np.zeros((len(q), len(d)))
  for i in range(len(q)):
    for j in range(len(d)):
      qi, dj = q[i][qm[i] > 0], d[j][dm[j] > 0]
      if scorer == "pooled":
        out[i, j] = float(_unit(qi.mean(0)) @ _unit(dj.mean(0)))
      else:
        out[i, j] = np.mean([max(float(_unit(t) @ _unit(u)) for u in dj) for t in qi])
  return out


def _numpy_infonce(q, qm, d, dm, temperature, scorer, threshold=1.0, bank=None, bank_mask=None):
  docs, masks = (list(d), list(dm)) if bank is None else (list(d) + list(bank), list(dm) + list(bank_mask))
  scores = _numpy_scores(q, qm, docs, masks, scorer)
  teacher = _numpy_scores(d, dm, docs, masks, scorer)
  total = []
  for i in range(len(q)):
    logits = [scores[i, i] / temperature]
    for j in range(len(docs)):
      if j != i and teacher[i, j] < threshold:
        logits.append(scores[i, j] / temperature)
    total.append(np.logaddexp.reduce(logits) - scores[i, i] / temperature)
  return float(np.mean(total))


def _batch(seed, b=4, ls=6, lt=7, dim=8):
  rng = np.random.default_rng(seed)
  q, d = rng.normal(size=(b, ls, dim)), rng.normal(size=(b, lt, dim))
  qm = (np.arange(ls)[None] < rng.integers(1, ls + 1, size=b)[:, None]).astype(np.int32)
  dm = (np.arange(lt)[None] < rng.integers(1, lt + 1, size=b)[:, None]).astype(np.int32)
  return q, qm, d, dm


@pytest.mark.parametrize("scorer", ["maxsim", "pooled"])
def test_matches_numpy_infonce(scorer):
  q, qm, d, dm = _batch(0)
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(3, d.shape[1] + 2, d.shape[2]))   # padded to another length than the batch
  bank_mask = np.ones(bank.shape[:2], np.int32)
  bank_mask[1, 4:] = 0
  for kwargs in ({}, {"bank": bank, "bank_mask": bank_mask}):
    want = _numpy_infonce(q, qm, d, dm, 0.1, scorer, threshold=0.9, **kwargs)
    got, aux = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1, scorer=scorer,
                                   duplicate_threshold=0.9, bank_tokens=kwargs.get("bank"),
                                   bank_mask=kwargs.get("bank_mask"))
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    assert 0.0 <= float(aux["rank_accuracy"]) <= 1.0


def test_padding_changes_nothing():
  q, qm, d, dm = _batch(2)
  base, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.05)
  noisy_q = np.where(qm[..., None] > 0, q, 1e3)
  noisy_d = np.where(dm[..., None] > 0, d, -1e3)
  padded, _ = losses.ranking_loss(jnp.asarray(noisy_q), qm, jnp.asarray(noisy_d), dm, temperature=0.05)
  np.testing.assert_allclose(float(padded), float(base), rtol=1e-6)
  grad = jax.grad(lambda x: losses.ranking_loss(x, qm, jnp.asarray(d), dm, temperature=0.05)[0])(jnp.asarray(q))
  assert np.all(np.asarray(grad)[qm == 0] == 0) and np.any(np.asarray(grad)[qm > 0] != 0)


def test_near_duplicate_negative_is_dropped():
  q, qm, d, dm = _batch(3)
  d[1], dm[1] = d[0], dm[0]     # document 1 is an exact copy of document 0
  want = _numpy_infonce(q, qm, d, dm, 0.1, "maxsim", threshold=0.99)
  got, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1, duplicate_threshold=0.99)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  kept, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1)
  assert float(got) < float(kept)   # the copy no longer counts against queries 0 and 1


def test_perfect_student_ranks_first():
  _, _, d, dm = _batch(4)
  loss, aux = losses.ranking_loss(jnp.asarray(d), dm, jnp.asarray(d), dm, temperature=0.01)
  assert float(aux["rank_accuracy"]) == 1.0 and float(aux["rank_margin"]) > 0
  assert float(loss) < 1e-3


def test_unknown_scorer_is_a_user_error():
  q, qm, d, dm = _batch(5)
  with pytest.raises(Exception, match="rank_scorer"):
    losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1, scorer="bm25")


def test_teacher_target_is_cross_entropy_to_the_teachers_softmax():
  q, qm, d, dm = _batch(6)
  t = 0.1
  scores, teacher = _numpy_scores(q, qm, d, dm, "maxsim"), _numpy_scores(d, dm, d, dm, "maxsim")
  log_p = scores / t - np.logaddexp.reduce(scores / t, axis=1, keepdims=True)
  p_teacher = np.exp(teacher / t - np.logaddexp.reduce(teacher / t, axis=1, keepdims=True))
  want = float(np.mean(-(p_teacher * log_p).sum(1)))
  got, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=t, target="teacher")
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Excluded candidates (a bank row that is a query's own example) leave the gradient finite.
  grad = jax.grad(lambda x: losses.ranking_loss(
      x, qm, jnp.asarray(d), dm, temperature=t, target="teacher", bank_tokens=jnp.asarray(d[:2]), bank_mask=dm[:2],
      doc_index=np.arange(len(q)), bank_index=np.asarray([0, 1]))[0])(jnp.asarray(q))
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


def test_a_bank_row_of_the_query_itself_is_never_its_negative():
  q, qm, d, dm = _batch(7)
  index = np.arange(len(q), dtype=np.int32)
  plain, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1)
  # The bank holds document 0 again under its own example index: query 0 must not see it as a wrong answer, and
  # the other queries see one more (real) negative.
  with_self, _ = losses.ranking_loss(jnp.asarray(q), qm, jnp.asarray(d), dm, temperature=0.1,
                                     bank_tokens=jnp.asarray(d[:1]), bank_mask=dm[:1], doc_index=index,
                                     bank_index=np.asarray([0], np.int32))
  want = _numpy_infonce(q, qm, d, dm, 0.1, "maxsim", bank=d[:1], bank_mask=dm[:1])
  per_query_extra = want - float(plain)
  assert float(with_self) < want and float(with_self) > float(plain) and per_query_extra > 0
