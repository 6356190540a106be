"""bench.torch_reference (the --compare peer): both POT OT losses against a numpy log-domain Sinkhorn; the step."""
import dataclasses
import importlib.util
import json
import pathlib

import numpy as np
import ot
import pytest
import torch

from optical_jax.bench import torch_reference as ref
from optical_jax.errors import UserError

TINY = ref.ReferenceConfig(batch=4, student_len=8, teacher_len=12, hidden=32, layers=2, heads=4, ffn=64, vocab=100,
                           iterations=20, lr=1e-3)


def _logsumexp(x, axis):
  m = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def numpy_sinkhorn_loss(student, student_mask, teacher, teacher_mask, *, epsilon, iterations, row_first):
  """Mean <P, C> with a plain numpy log-domain Sinkhorn on each example's real tokens (no padding anywhere).

  row_first=True updates the row potential first in each iteration (POT's batch solver); False the column
  potential first (POT's `sinkhorn_log`).
  """
  losses = []
  for s, sm, t, tm in zip(student, student_mask, teacher, teacher_mask):
    s, t = s[sm != 0], t[tm != 0]
    s = s / np.linalg.norm(s, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    cost = 1.0 - s @ t.T
    log_k = -cost / epsilon
    log_a, log_b = np.full(len(s), -np.log(len(s))), np.full(len(t), -np.log(len(t)))
    f, g = np.zeros(len(s)), np.zeros(len(t))
    for _ in range(iterations):
      if row_first:
        f = log_a - _logsumexp(log_k + g[None, :], axis=1)
        g = log_b - _logsumexp(log_k + f[:, None], axis=0)
      else:
        g = log_b - _logsumexp(log_k + f[:, None], axis=0)
        f = log_a - _logsumexp(log_k + g[None, :], axis=1)
    plan = np.exp(log_k + f[:, None] + g[None, :])
    losses.append(np.sum(plan * cost))
  return float(np.mean(losses))


def _padded_problem(seed=0, batch=5, ls=7, lt=11, dim=6, dtype=torch.float64):
  g = torch.Generator().manual_seed(seed)
  student = torch.randn(batch, ls, dim, generator=g, dtype=dtype)
  teacher = torch.randn(batch, lt, dim, generator=g, dtype=dtype)
  # Ragged lengths including a full row and a length-1 row; mask holes in the middle too (not only suffixes).
  student_mask = torch.ones(batch, ls, dtype=torch.long)
  teacher_mask = torch.ones(batch, lt, dtype=torch.long)
  student_mask[1, 4:] = 0
  student_mask[2, 1:] = 0
  student_mask[3, 2] = 0
  teacher_mask[0, 6:] = 0
  teacher_mask[3, 3:5] = 0
  teacher_mask[4, 1:] = 0
  # Garbage in padded positions must not matter.
  student = torch.where(student_mask[..., None].bool(), student, torch.full_like(student, 7.0))
  teacher = torch.where(teacher_mask[..., None].bool(), teacher, torch.full_like(teacher, -3.0))
  return student, student_mask, teacher, teacher_mask


def _numpy(*tensors):
  return [t.numpy() for t in tensors]


@pytest.mark.parametrize("iterations", [1, 7])
def test_batched_equals_numpy_before_convergence(iterations):
  # Same update order, few iterations: agreement is exact up to rounding, so padding must be handled exactly.
  problem = _padded_problem()
  got = ref.ot_loss_batched(*problem, epsilon=0.1, iterations=iterations).item()
  want = numpy_sinkhorn_loss(*_numpy(*problem), epsilon=0.1, iterations=iterations, row_first=True)
  assert got == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("iterations", [1, 7])
def test_loop_equals_numpy_before_convergence(iterations):
  problem = _padded_problem()
  got = ref.ot_loss_loop(*problem, epsilon=0.1, iterations=iterations).item()
  want = numpy_sinkhorn_loss(*_numpy(*problem), epsilon=0.1, iterations=iterations, row_first=False)
  assert got == pytest.approx(want, abs=1e-10)


def test_batched_equals_loop_and_numpy_converged():
  problem = _padded_problem(seed=1)
  kw = dict(epsilon=0.1, iterations=400)
  batched = ref.ot_loss_batched(*problem, **kw).item()
  loop = ref.ot_loss_loop(*problem, **kw).item()
  want = numpy_sinkhorn_loss(*_numpy(*problem), row_first=True, **kw)
  assert batched == pytest.approx(loop, abs=1e-5)
  assert batched == pytest.approx(want, abs=1e-5)
  # The fixed-iteration runs are not trivially equal: the orders differ before convergence.
  few = dict(epsilon=0.1, iterations=2)
  assert abs(ref.ot_loss_batched(*problem, **few).item() - ref.ot_loss_loop(*problem, **few).item()) > 1e-6


def test_float32_batched_close_to_float64():
  problem64 = _padded_problem(seed=2)
  problem32 = [t.float() if t.is_floating_point() else t for t in problem64]
  kw = dict(epsilon=0.05, iterations=50)
  assert ref.ot_loss_batched(*problem32, **kw).item() == pytest.approx(
      ref.ot_loss_batched(*problem64, **kw).item(), rel=1e-4)


@pytest.mark.parametrize("loss_fn", [ref.ot_loss_batched, ref.ot_loss_loop], ids=["batched", "loop"])
def test_envelope_gradient(loss_fn):
  student, student_mask, teacher, teacher_mask = _padded_problem(seed=3)
  student.requires_grad_(True)
  kw = dict(epsilon=0.1, iterations=30)
  loss_fn(student, student_mask, teacher, teacher_mask, **kw).backward()
  grad = student.grad
  assert torch.isfinite(grad).all()
  assert torch.all(grad[student_mask == 0] == 0)  # padding gets exactly zero gradient

  # Envelope gradient: d/ds of <P, C(s)> with P held fixed at its value for the current s.
  with torch.no_grad():
    cost = ref.cosine_cost(student, teacher)
    plan = ot_plans(cost, student_mask, teacher_mask, loss_fn, kw)
  s = student.detach().clone().requires_grad_(True)
  (ref.cosine_cost(s, teacher) * plan).sum(dim=(1, 2)).mean().backward()
  torch.testing.assert_close(grad, s.grad, rtol=1e-9, atol=1e-12)


def ot_plans(cost, student_mask, teacher_mask, loss_fn, kw):
  """The plans each variant uses, recovered from POT directly (padded layout)."""
  a = ref.uniform_marginal(student_mask, cost.dtype)
  b = ref.uniform_marginal(teacher_mask, cost.dtype)
  if loss_fn is ref.ot_loss_batched:
    pairs = (student_mask != 0)[:, :, None] & (teacher_mask != 0)[:, None, :]
    cost = cost.masked_fill(~pairs, 1e4)
    return ot.batch.solve_batch(cost, kw["epsilon"], a, b, max_iter=kw["iterations"], tol=0.0,
                                method="log_sinkhorn", grad="detach").plan
  plans = torch.zeros_like(cost)
  for i in range(cost.shape[0]):
    rows, cols = student_mask[i] != 0, teacher_mask[i] != 0
    sub = cost[i][rows][:, cols]
    p = ot.sinkhorn(a[i][rows], b[i][cols], sub, kw["epsilon"], method="sinkhorn_log",
                    numItermax=kw["iterations"], stopThr=0.0, warn=False)
    plans[i][rows.nonzero()[:, 0][:, None], cols.nonzero()[:, 0][None, :]] = p
  return plans


@pytest.mark.parametrize("overrides", [
    {}, {"model_type": "xlm-roberta", "projection_dim": 16}, {"ot_variant": "pot_loop"}],
    ids=["bert", "xlmr_projection", "pot_loop"])
def test_reference_step_loss_decreases(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  batch = ref.synthetic_batch(cfg)
  assert batch["teacher_tokens"].shape == (cfg.batch, cfg.teacher_len, cfg.output_dim)
  assert (batch["attention_mask"].sum(1) >= cfg.student_len // 2).all()
  step = ref.make_reference_step(cfg)
  losses = [step(batch) for _ in range(6)]
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 1e-3, losses


def test_time_reference_and_cli(tmp_path):
  result = ref.time_reference(TINY, steps=2, warmup=1, ot_repeats=1)
  assert result["step_time_median_s"] > 0 and result["step_time_p90_s"] >= result["step_time_median_s"]
  assert set(result["ot"]) == {"pot_batched", "pot_loop"}
  assert result["ot"]["pot_batched"]["fwd_bwd_median_s"] > 0
  assert result["torch_num_threads"] == torch.get_num_threads()
  assert len(result["losses"]) == 3 and result["train_step_flops"] > 0

  out = tmp_path / "ref.json"
  argv = ["--batch", "2", "--student-len", "6", "--teacher-len", "6", "--hidden", "16", "--layers", "1",
          "--heads", "2", "--ffn", "32", "--vocab", "50", "--iterations", "5", "--steps", "1", "--warmup", "0",
          "--no-loop", "--json", str(out)]
  assert ref.main(argv) == 0
  assert json.loads(out.read_text())["config"]["hidden"] == 16
  assert ref.main(["--hidden", "30", "--heads", "4"]) == 2  # not a multiple: one-line error, exit 2


def test_config_errors_and_from_optical_config():
  with pytest.raises(UserError, match="teacher_dim"):
    dataclasses.replace(TINY, teacher_dim=24)
  with pytest.raises(UserError, match="ot_variant"):
    dataclasses.replace(TINY, ot_variant="sinkhorn2")
  spec = importlib.util.spec_from_file_location("tiny_config", pathlib.Path(__file__).parents[1] / "configs/tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  tiny = module.get_config()
  cfg = ref.from_optical_config(tiny)
  assert (cfg.batch, cfg.student_len, cfg.hidden, cfg.iterations) == (
      tiny.train.batch_size, tiny.data.max_len_student, tiny.student.hidden_size, tiny.ot.iterations)
