"""Tests for optical_jax.losses against independent float64 references (numpy log-domain Sinkhorn, POT, finite
differences).

The numpy Sinkhorn runs on the *unpadded* problem with the same update order as OTT and POT (g from f, then f from
g, from zero potentials), so all three agree at any fixed iteration count, converged or not.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from scipy.special import logsumexp

from optical_jax import losses
from optical_jax.errors import UserError

D = 8
ITERATIONS = 100

# Tiny problems: XLA's backend optimisations cost more compile time than they save at run time here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# ----------------------------------------------------------------------------------------------------------------------
# numpy float64 reference (unpadded problems)


def np_cost(x, y):
  xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
  yn = y / np.linalg.norm(y, axis=-1, keepdims=True)
  return 1.0 - np.einsum("...id,...jd->...ij", xn, yn)


def np_plan(cost, a, b, eps, iterations):
  """Log-domain Sinkhorn; cost may carry leading batch axes (eps broadcasts over them)."""
  eps = np.asarray(eps)[..., None]
  f = np.zeros(cost.shape[:-1])
  g = np.zeros(cost.shape[:-2] + cost.shape[-1:])
  for _ in range(iterations):
    g = eps * np.log(b) - eps * logsumexp((f[..., :, None] - cost) / eps[..., None], axis=-2)
    f = eps * np.log(a) - eps * logsumexp((g[..., None, :] - cost) / eps[..., None], axis=-1)
  return np.exp((f[..., :, None] + g[..., None, :] - cost) / eps[..., None])


def np_epsilon(cost, epsilon, relative):
  if relative is None:
    return epsilon
  return epsilon * (np.std(cost) if relative == "std" else np.mean(cost))


def np_marginal(weights, mask):
  w = np.where(mask, 1.0, 0.0) if weights is None else np.where(mask, weights, 0.0).astype(np.float64)
  return w[mask] / w[mask].sum()


def np_example_loss(x, y, a, b, epsilon, relative, iterations):
  cost = np_cost(x, y)
  eps = np_epsilon(cost, epsilon, relative)
  plan = np_plan(cost, a, b, eps, iterations)
  return float(np.sum(plan * cost)), plan, cost, eps


def np_envelope_grad(x, y, plan):
  """d<P, C>/dx with P held fixed, through C = 1 - <x/|x|, y/|y|>."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  xn, yn = x / norm, y / np.linalg.norm(y, axis=-1, keepdims=True)
  g_xn = -plan @ yn
  return (g_xn - np.sum(g_xn * xn, axis=-1, keepdims=True) * xn) / norm


def np_fd_grad(x, y, a, b, epsilon, iterations, h=1e-6):
  """Central differences of the reference loss w.r.t. x, all coordinates perturbed at once (batched Sinkhorn)."""
  n = x.size
  steps = np.eye(n).reshape(n, *x.shape) * h
  xs = np.concatenate([x + steps, x - steps])
  cost = np_cost(xs, np.broadcast_to(y, (2 * n, *y.shape)))
  values = np.sum(np_plan(cost, a, b, np.full(2 * n, epsilon), iterations) * cost, axis=(1, 2))
  return ((values[:n] - values[n:]) / (2 * h)).reshape(x.shape)


def np_batch_reference(s, sm, t, tm, *, epsilon, relative=None, sw=None, tw=None, iterations=ITERATIONS, fd=False):
  """Batch-mean loss, per-example quantities and the loss gradient w.r.t. s (envelope; plus FD if asked)."""
  s, t = s.astype(np.float64), t.astype(np.float64)
  valid = [i for i in range(len(s)) if sm[i].any() and tm[i].any()]
  out = dict(losses=[], eps=[], plans=[], costs=[], env_grad=np.zeros_like(s), fd_grad=np.zeros_like(s))
  for i in valid:
    x, y = s[i][sm[i]], t[i][tm[i]]
    a = np_marginal(None if sw is None else sw[i], sm[i])
    b = np_marginal(None if tw is None else tw[i], tm[i])
    loss, plan, cost, eps = np_example_loss(x, y, a, b, epsilon, relative, iterations)
    for key, value in zip(("losses", "plans", "costs", "eps"), (loss, plan, cost, eps)):
      out[key].append(value)
    out["env_grad"][i][sm[i]] = np_envelope_grad(x, y, plan) / len(valid)
    if fd:
      out["fd_grad"][i][sm[i]] = np_fd_grad(x, y, a, b, eps, iterations) / len(valid)
  out["loss"] = float(np.mean(out["losses"]))
  return out


# ----------------------------------------------------------------------------------------------------------------------
# problems


def make_batch(seed, student_lengths, teacher_lengths, ls, lt, dim=D):
  """Random tokens; pads hold large garbage so any leak into the loss shows."""
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(len(student_lengths), ls, dim)).astype(np.float32)
  t = rng.normal(size=(len(teacher_lengths), lt, dim)).astype(np.float32)
  sm = np.arange(ls)[None] < np.asarray(student_lengths)[:, None]
  tm = np.arange(lt)[None] < np.asarray(teacher_lengths)[:, None]
  s[~sm] = 50 * rng.normal(size=s[~sm].shape)
  t[~tm] = 50 * rng.normal(size=t[~tm].shape)
  return s, sm, t, tm


def extra_padding(s, sm, t, tm, seed, ds=3, dt=2):
  """The same examples with more pad positions on both sides, holding garbage, NaN and inf; masks as int."""
  rng = np.random.default_rng(seed)
  pad = lambda x, k: np.concatenate([x, 30 * rng.normal(size=(x.shape[0], k, x.shape[2])).astype(x.dtype)], 1)
  pad_mask = lambda m, k: np.concatenate([m, np.zeros((m.shape[0], k), bool)], 1).astype(np.int32)
  s, t = pad(s, ds), pad(t, dt)
  s[0, -1], t[1, -1, 0], t[2, -1] = np.nan, np.inf, 0.0
  return s, pad_mask(sm, ds), t, pad_mask(tm, dt)


# Mixed lengths: an unpadded student, a one-token teacher side (the plan is then a b^T) and an example without any
# student token (it must drop out of the batch mean).
MIXED = dict(student_lengths=[6, 4, 3, 0], teacher_lengths=[5, 7, 1, 4], ls=6, lt=7)


@functools.cache
def grad_mode_results(grad):
  """Loss, aux and gradients (student, teacher) on the MIXED batch and on the same batch with extra padding."""
  f = jit(jax.value_and_grad(
      lambda s, sm, t, tm: losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=ITERATIONS, grad=grad),
      argnums=(0, 2), has_aux=True))
  batch = make_batch(0, **MIXED)
  padded = extra_padding(*batch, seed=1)
  out = {}
  for name, args in (("base", batch), ("padded", padded)):
    (loss, aux), (gs, gt) = f(*args)
    out[name] = dict(loss=float(loss), aux=jax.tree.map(float, aux), gs=np.asarray(gs), gt=np.asarray(gt))
  return batch, padded, out


# ----------------------------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("ls, lt", [(4, 5), (5, 4)], ids=["teacher_longer", "student_longer"])
def test_cosine_cost_matches_numpy_and_zeroes_pads(ls, lt):
  # Both shape orders: the product is laid out differently when the teacher side is the longer one.
  s, sm, t, tm = make_batch(0, [3, 2], [4, 1], ls, lt)
  s[0, -1], t[1, -1] = np.nan, np.inf  # pads
  cost = np.asarray(jit(losses.cosine_cost)(s, sm, t, tm))
  for i in range(2):
    np.testing.assert_allclose(cost[i][np.ix_(sm[i], tm[i])], np_cost(s[i][sm[i]], t[i][tm[i]]), atol=1e-6)
    assert np.all(cost[i][~sm[i]] == 0) and np.all(cost[i][:, ~tm[i]] == 0)
  unbatched = jit(losses.cosine_cost)(s[0], sm[0], t[0], tm[0].astype(np.float32))
  np.testing.assert_allclose(np.asarray(unbatched), cost[0], atol=1e-7)
  weights = np.random.default_rng(1).normal(size=cost.shape).astype(np.float32)
  gs, gt = jit(jax.grad(lambda a, b: jnp.sum(weights * losses.cosine_cost(a, sm, b, tm)), argnums=(0, 1)))(s, t)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
  assert np.all(np.asarray(gs)[~sm] == 0) and np.all(np.asarray(gt)[~tm] == 0)


@pytest.mark.parametrize("lse_mode", [True, False], ids=["log", "kernel"])
@pytest.mark.parametrize("relative, epsilon, weighted", [(None, 0.1, False), ("std", 0.5, True), ("mean", 0.1, False)])
def test_loss_and_envelope_grad_match_numpy_and_pot(relative, epsilon, weighted, lse_mode):
  s, sm, t, tm = make_batch(2, student_lengths=[5, 2, 4], teacher_lengths=[3, 6, 6], ls=5, lt=6)
  rng = np.random.default_rng(3)
  # Pads get weights too: they must be ignored.
  sw = rng.uniform(0.5, 3.0, size=sm.shape).astype(np.float32) if weighted else None
  tw = rng.uniform(0.5, 3.0, size=tm.shape).astype(np.float32) if weighted else None
  f = jit(jax.value_and_grad(
      lambda s: losses.ot_alignment_loss(s, sm, t, tm, epsilon=epsilon, iterations=ITERATIONS,
                                         relative_epsilon=relative, student_weights=sw, teacher_weights=tw,
                                         lse_mode=lse_mode),
      has_aux=True))
  (loss, aux), grad = f(s)
  ref = np_batch_reference(s, sm, t, tm, epsilon=epsilon, relative=relative, sw=sw, tw=tw)

  np.testing.assert_allclose(float(loss), ref["loss"], atol=1e-5)
  np.testing.assert_allclose(aux["ot_cost"], ref["loss"], atol=1e-5)
  np.testing.assert_allclose(aux["epsilon"], np.mean(ref["eps"]), rtol=1e-5)
  # Envelope gradient = the reference plan pushed through the cosine cost.
  np.testing.assert_allclose(np.asarray(grad), ref["env_grad"], atol=1e-5)
  assert np.all(np.asarray(grad)[~sm] == 0)

  # POT on each unpadded problem, same eps and iterations.
  pot_losses = []
  for i, (cost, eps) in enumerate(zip(ref["costs"], ref["eps"])):
    a = np_marginal(None if sw is None else sw[i], sm[i])
    b = np_marginal(None if tw is None else tw[i], tm[i])
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      plan = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=ITERATIONS, stopThr=0)
    pot_losses.append(np.sum(plan * cost))
  np.testing.assert_allclose(float(loss), np.mean(pot_losses), atol=1e-4)

  # Diagnostics on a converged plan.
  plans = ref["plans"]
  entropy = np.mean([-np.sum(p * np.log(p)) for p in plans])
  row_entropy = [np.mean(-np.sum((p / p.sum(1, keepdims=True)) * np.log(p / p.sum(1, keepdims=True)), 1))
                 for p in plans]
  assert aux["marginal_error"] < 1e-5
  np.testing.assert_allclose(aux["plan_entropy"], entropy, rtol=1e-4)
  np.testing.assert_allclose(aux["effective_support"], np.mean(np.exp(row_entropy)), rtol=1e-4)


@pytest.mark.parametrize("grad", ["envelope", "unroll", "implicit"])
def test_padding_invariance_and_reference_gradients(grad):
  batch, padded, out = grad_mode_results(grad)
  s, sm, t, tm = batch
  base, more = out["base"], out["padded"]
  for r in (base, more):
    assert np.isfinite(r["loss"]) and np.all(np.isfinite(r["gs"])) and np.all(np.isfinite(r["gt"]))
  # Padded token vectors get exactly zero gradient (the all-pad example included).
  assert np.all(base["gs"][~sm] == 0) and np.all(base["gt"][~tm] == 0)
  assert np.all(more["gs"][padded[1] == 0] == 0) and np.all(more["gt"][padded[3] == 0] == 0)
  # Extra padding changes neither the loss nor real-token gradients.
  np.testing.assert_allclose(more["loss"], base["loss"], atol=1e-6)
  np.testing.assert_allclose(more["gs"][:, :s.shape[1]], base["gs"], atol=1e-6)
  np.testing.assert_allclose(more["gt"][:, :t.shape[1]], base["gt"], atol=1e-6)

  # Against the unpadded float64 problems.
  ref = np_batch_reference(s, sm, t, tm, epsilon=0.1, fd=grad != "envelope")
  np.testing.assert_allclose(base["loss"], ref["loss"], atol=1e-5)
  expected = ref["env_grad"] if grad == "envelope" else ref["fd_grad"]
  np.testing.assert_allclose(base["gs"], expected, atol=1e-5)


def _loss_and_grads(args, *, epsilon, iterations, grad="envelope", lse_mode=True):
  f = jit(jax.value_and_grad(
      lambda s, sm, t, tm: losses.ot_alignment_loss(s, sm, t, tm, epsilon=epsilon, iterations=iterations, grad=grad,
                                                    lse_mode=lse_mode)[0], argnums=(0, 2)))
  loss, (gs, gt) = f(*args)
  return float(loss), np.asarray(gs), np.asarray(gt)


@pytest.mark.parametrize("grad", ["envelope", "unroll"])
def test_kernel_domain_matches_log_domain_with_padding(grad):
  batch = make_batch(0, **MIXED)
  padded = extra_padding(*batch, seed=1)
  log_loss, log_gs, log_gt = _loss_and_grads(batch, epsilon=0.05, iterations=ITERATIONS, grad=grad)
  for args in (batch, padded):
    loss, gs, gt = _loss_and_grads(args, epsilon=0.05, iterations=ITERATIONS, grad=grad, lse_mode=False)
    assert np.isfinite(loss) and np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
    np.testing.assert_allclose(loss, log_loss, atol=1e-5)
    np.testing.assert_allclose(gs[:, :log_gs.shape[1]], log_gs, atol=1e-5)
    np.testing.assert_allclose(gt[:, :log_gt.shape[1]], log_gt, atol=1e-5)
    assert np.all(gs[:, log_gs.shape[1]:] == 0) and np.all(gt[:, log_gt.shape[1]:] == 0)


def test_kernel_domain_survives_a_row_far_from_every_teacher_token():
  """A student token opposite to all teacher tokens: exp(-C/eps) of its whole row is < 1e-60 before the shift.

  The row and column shifts keep a kernel entry of 1 in every row and column, so the kernel-domain plan stays finite
  and converges to the log-domain one (their trajectories differ: the row shift acts as a warm start).
  """
  s, sm, t, tm = make_batch(5, student_lengths=[4, 3], teacher_lengths=[5, 5], ls=4, lt=5)
  t[0, :5] = np.abs(t[0, :5])
  s[0, 1] = -np.abs(t[0, :5]).mean(0)
  s[0, 2] = -np.abs(t[0, :5]).mean(0) + 0.1
  assert np.all(np_cost(s[0, 1:3], t[0, :5]) > 1.4)
  eps, iterations = 0.01, 2000
  log_loss, log_gs, _ = _loss_and_grads((s, sm, t, tm), epsilon=eps, iterations=iterations)
  loss, gs, _ = _loss_and_grads((s, sm, t, tm), epsilon=eps, iterations=iterations, lse_mode=False)
  assert np.isfinite(loss) and np.all(np.isfinite(gs))
  np.testing.assert_allclose(loss, log_loss, atol=1e-5)
  np.testing.assert_allclose(gs, log_gs, atol=1e-5)


@pytest.mark.parametrize("lse_mode", [True, False], ids=["log", "kernel"])
@pytest.mark.parametrize("tau_student, tau_teacher", [(1.0, 0.5), (0.8, 0.3)])
@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
def test_unbalanced_plan_matches_pot(tau_student, tau_teacher, lse_mode):
  """Unbalanced OT (tau < 1) against POT's sinkhorn_unbalanced on each unpadded problem, same eps."""
  s, sm, t, tm = make_batch(4, student_lengths=[5, 3], teacher_lengths=[6, 4], ls=5, lt=6)
  eps, iterations = 0.1, 300
  loss, aux = jit(lambda s: losses.ot_alignment_loss(
      s, sm, t, tm, epsilon=eps, iterations=iterations, lse_mode=lse_mode, tau_student=tau_student,
      tau_teacher=tau_teacher))(s)
  rho = lambda tau: float("inf") if tau == 1.0 else eps * tau / (1.0 - tau)
  expected = []
  for i in range(len(s)):
    cost = np_cost(s[i][sm[i]].astype(np.float64), t[i][tm[i]].astype(np.float64))
    a, b = np_marginal(None, sm[i]), np_marginal(None, tm[i])
    plan = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, eps, (rho(tau_student), rho(tau_teacher)),
                                             reg_type="entropy", numItermax=iterations, stopThr=0)
    expected.append(np.sum(plan * cost))
  np.testing.assert_allclose(float(loss), np.mean(expected), atol=1e-5)
  # A relaxed teacher marginal is not met: the plan's column sums differ from b.
  assert aux["marginal_error"] > 1e-3


@pytest.mark.parametrize("tau_student, tau_teacher", [(1.0, 0.5), (0.5, 1.0), (0.8, 0.3)])
def test_unbalanced_kernel_mode_survives_a_kernel_that_would_underflow(tau_student, tau_teacher):
  """min C / eps > 104: exp(-C/eps) is 0 in float32 (denormals included) on every pair; the shifted, rescaled
  kernel-domain solve equals the log-domain one (itself checked against POT above)."""
  rng = np.random.default_rng(7)
  base = rng.normal(size=(1, 1, 16))
  # Near-opposite token clouds: every cost is ~2, spread over a few eps, so one shift covers every row and column.
  s = (base + 0.05 * rng.normal(size=(2, 5, 16))).astype(np.float32)
  t = (-base + 0.05 * rng.normal(size=(2, 6, 16))).astype(np.float32)
  sm, tm = np.arange(5)[None] < np.array([[5], [3]]), np.arange(6)[None] < np.array([[6], [4]])
  cost = np.asarray(losses.cosine_cost(s, sm, t, tm))
  eps = 0.01
  real = cost[sm[:, :, None] & tm[:, None, :]]
  assert real.min() / eps > 104
  assert not np.any(np.exp(-real / np.float32(eps)) > 0)  # the unshifted kernel underflows on every real pair
  run = lambda lse_mode: jit(lambda s: losses.ot_alignment_loss(
      s, sm, t, tm, epsilon=eps, iterations=2000, lse_mode=lse_mode, tau_student=tau_student,
      tau_teacher=tau_teacher))(s)
  (log_loss, log_aux), (kernel_loss, kernel_aux) = run(True), run(False)
  assert np.isfinite(kernel_loss) and float(log_loss) > 0
  np.testing.assert_allclose(float(kernel_loss), float(log_loss), rtol=1e-4)
  np.testing.assert_allclose(float(kernel_aux["marginal_error"]), float(log_aux["marginal_error"]), rtol=1e-3,
                             atol=1e-6)


def test_plan_centering_solves_on_centred_vectors_and_keeps_the_raw_cost():
  """Plan from mean-centred tokens (numpy reference), loss <P, C> on the raw ones; an offset added to every token of
  a sentence leaves the plan unchanged but not the loss."""
  s, sm, t, tm = make_batch(6, student_lengths=[5, 3], teacher_lengths=[4, 6], ls=5, lt=6)
  eps = 0.1
  f = jit(jax.value_and_grad(lambda s, sm, t, tm: losses.ot_alignment_loss(
      s, sm, t, tm, epsilon=eps, iterations=ITERATIONS, relative_epsilon="std", plan_centering=True)[0]))
  loss, grad = f(s, sm, t, tm)
  expected, expected_grad = [], np.zeros_like(s, np.float64)
  for i in range(len(s)):
    x, y = s[i][sm[i]].astype(np.float64), t[i][tm[i]].astype(np.float64)
    centred = np_cost(x - x.mean(0), y - y.mean(0))
    plan = np_plan(centred, np_marginal(None, sm[i]), np_marginal(None, tm[i]), eps * np.std(centred), ITERATIONS)
    expected.append(np.sum(plan * np_cost(x, y)))
    expected_grad[i][sm[i]] = np_envelope_grad(x, y, plan) / len(s)
  np.testing.assert_allclose(float(loss), np.mean(expected), atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-5)

  shifted = s + np.where(sm[..., None], 2.0 * rng_vector(D), 0.0).astype(np.float32)
  plan_of = jit(lambda s: losses.ot_alignment_loss(s, sm, t, tm, epsilon=eps, iterations=ITERATIONS,
                                                   relative_epsilon="std", plan_centering=True)[1])
  np.testing.assert_allclose(plan_of(shifted)["plan_entropy"], plan_of(s)["plan_entropy"], rtol=1e-5)
  assert abs(float(f(shifted, sm, t, tm)[0]) - float(loss)) > 1e-3
  with pytest.raises(UserError, match="plan_centering"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=eps, iterations=5, grad="unroll", plan_centering=True)


def rng_vector(dim):
  return np.random.default_rng(11).normal(size=dim)


def test_implicit_and_unroll_gradients_agree_and_differ_from_envelope():
  unroll, implicit, envelope = (grad_mode_results(g)[2]["base"] for g in ("unroll", "implicit", "envelope"))
  np.testing.assert_allclose(implicit["gs"], unroll["gs"], atol=1e-5)
  np.testing.assert_allclose(implicit["gt"], unroll["gt"], atol=1e-5)
  # The envelope gradient drops the plan's own dependence on C: close, but not the same function.
  assert np.abs(envelope["gs"] - unroll["gs"]).max() > 1e-4


def test_unrolled_gradient_finite_differences_float64():
  with jax.enable_x64(True):
    s, sm, t, tm = make_batch(4, [3, 2], [4, 3], 3, 4, dim=4)
    s, t = s.astype(np.float64), t.astype(np.float64)
    # Few iterations and a small eps: far from convergence, where only unrolling is exact.
    loss = lambda s: losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.05, iterations=15, grad="unroll")[0]
    loss_fn = jit(loss)
    grad = np.asarray(jit(jax.grad(loss))(s))
    assert grad.dtype == np.float64
    h, fd = 1e-6, np.zeros_like(s)
    for idx in zip(*np.nonzero(sm)):
      for d in range(s.shape[-1]):
        step = np.zeros_like(s)
        step[idx + (d,)] = h
        fd[idx + (d,)] = (float(loss_fn(s + step)) - float(loss_fn(s - step))) / (2 * h)
  np.testing.assert_allclose(grad, fd, atol=1e-8)
  assert np.all(grad[~sm] == 0)


def test_effective_support_shrinks_with_epsilon_and_threshold_mode():
  s, sm, t, tm = make_batch(5, [6, 5], [7, 6], 6, 7)
  f = jit(lambda eps: losses.ot_alignment_loss(s, sm, t, tm, epsilon=eps, iterations=300)[1])
  supports = [float(f(eps)["effective_support"]) for eps in (1.0, 0.1, 0.02)]
  assert supports[0] > supports[1] > supports[2] >= 1.0
  assert supports[0] > 5.0  # near-uniform over the ~6.5 teacher tokens
  # Early stopping reaches the same converged loss as the fixed-count scan.
  fixed = f(0.1)
  early = jit(lambda: losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=300, threshold=1e-7)[1])()
  np.testing.assert_allclose(early["ot_cost"], fixed["ot_cost"], atol=1e-6)


def test_sharded_jit_with_bfloat16_teacher_matches_numpy():
  s, sm, t, tm = make_batch(6, [6, 5, 2, 4, 6, 3, 1, 5], [7, 3, 7, 5, 2, 7, 4, 6], 6, 7)
  t = np.asarray(jnp.asarray(t, jnp.bfloat16))
  step = jax.value_and_grad(
      lambda s, sm, t, tm: losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.5, iterations=50, relative_epsilon="std"),
      has_aux=True)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  data = NamedSharding(mesh, PartitionSpec("data"))
  with jax.set_mesh(mesh):
    (loss, aux), grad = jit(step, in_shardings=(data,) * 4)(*(jax.device_put(x, data) for x in (s, sm, t, tm)))
  assert loss.dtype == jnp.float32 and grad.sharding.spec[0] == "data"
  ref = np_batch_reference(s, sm, t.astype(np.float32), tm, epsilon=0.5, relative="std", iterations=50)
  np.testing.assert_allclose(float(loss), ref["loss"], atol=1e-5)
  np.testing.assert_allclose(float(aux["epsilon"]), np.mean(ref["eps"]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), ref["env_grad"], atol=1e-5)


def test_mse_distill_loss_matches_numpy():
  s, sm, t, tm = make_batch(7, [3, 5, 1, 0], [4, 2, 6, 3], 5, 6)  # the last example has no student token
  loss, aux = jit(losses.mse_distill_loss)(s, sm, t, tm)
  expected = []
  for i in range(3):
    ps, pt = s[i][sm[i]].astype(np.float64).mean(0), t[i][tm[i]].astype(np.float64).mean(0)
    expected.append(np.sum((ps / np.linalg.norm(ps) - pt / np.linalg.norm(pt)) ** 2))
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
  assert float(aux["mse"]) == float(loss)
  grad = np.asarray(jit(jax.grad(lambda s: losses.mse_distill_loss(s, sm, t, tm)[0]))(s))
  assert np.all(grad[~sm] == 0) and np.all(np.isfinite(grad))


def test_idf_weights():
  df = np.array([0, 1, 10, 100, 7])
  ids = np.array([[0, 1, 2, 3], [4, 3, 0, 0]])
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
  w = np.asarray(jit(losses.idf_weights)(ids, mask, df, 100))
  expected = np.log(1 + (100 - df[ids] + 0.5) / (df[ids] + 0.5)) * mask
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  assert w[0, 3] > 0  # a token in every document keeps some mass
  assert w[0, 0] > w[0, 1] > w[0, 2] > w[0, 3]


def test_user_errors():
  s, sm, t, tm = make_batch(8, [2], [2], 2, 2)
  with pytest.raises(UserError, match="ot.grad"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=5, grad="backprop")
  with pytest.raises(UserError, match="relative_epsilon"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=5, relative_epsilon=True)
  with pytest.raises(UserError, match="ot.epsilon"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.0, iterations=5)
  with pytest.raises(UserError, match="ot.iterations"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=0)
  with pytest.raises(UserError, match="tau_teacher"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=5, tau_teacher=0.0)
  with pytest.raises(UserError, match="implicit"):
    losses.ot_alignment_loss(s, sm, t, tm, epsilon=0.1, iterations=5, lse_mode=False, grad="implicit")
  with pytest.raises(UserError, match="projection_dim"):
    losses.ot_alignment_loss(s, sm, t[..., :4], tm, epsilon=0.1, iterations=5)
