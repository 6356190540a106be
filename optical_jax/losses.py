"""Distillation losses: OPTICAL's optimal-transport token alignment, the sentence-level MSE baseline, and a
contrastive ranking term on the student's retrieval scores against stored teacher documents.

`ot_alignment_loss` aligns the student's token embeddings of a low-resource sentence with the teacher's token
embeddings of its English translation. Per example it solves an entropic OT problem with OTT-JAX (balanced by default),

  P* = argmin_{P in U(a, b)} <P, C> - eps H(P),   C_ij = 1 - cos(student_i, teacher_j),

and returns the transport cost <P*, C> over real (non-pad) tokens, averaged over the batch. Marginals a, b are
uniform over real tokens or given weights (e.g. `idf_weights`). The cost function, marginals and the treatment of
epsilon are our design choices (the paper body is not available); see docs/method.md#our-design-choices.

Epsilon must match the cost scale: cosine costs of an anisotropic encoder can span only ~0.1-0.4, where an absolute
eps=0.05 gives a near-uniform plan (docs/method.md#choosing-epsilon). `relative_epsilon="std"` sets eps per example to
`epsilon * std(C over real pairs)`.

Padding is exact in every gradient mode: it changes neither the loss nor real-token gradients, and padded token
vectors get exactly zero gradient.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import lineax
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation
from ott.solvers.linear import sinkhorn

from optical_jax import ot_options
from optical_jax.errors import UserError


# OTT's implicit differentiation preconditions with eps*log(marginal): a zero weight makes the whole batch's gradient
# NaN (docs/method.md#ott-jax-pitfalls). Only the implicit path floors the marginals at this (relative) weight.
_IMPLICIT_MIN_WEIGHT = 1e-8
# Lower bound on a relative epsilon, e.g. for a 1x1 problem whose cost spread is 0.
_MIN_EPSILON = 1e-6
# Norm floor of the L2 normalisation, so an all-zero vector maps to 0 instead of NaN.
_NORM_FLOOR = 1e-6

Array = jax.Array


def _normal_cg(**kwargs: Any) -> lineax.AbstractLinearSolver:
  # OTT's default non-symmetric solver, without the deprecated lineax.NormalCG alias.
  return lineax.Normal(lineax.CG(**kwargs))


# The implicit linear system of a balanced problem is singular along the constant shift (f + c, g - c) of the
# potentials; the ridge removes that direction (it does not change the gradient) so that degenerate problems, e.g. a
# one-token side where the plan is just a b^T, give a zero gradient instead of a solver failure.
_IMPLICIT_DIFF = implicit_differentiation.ImplicitDiff(
    solver_kwargs={"ridge_kernel": 1.0, "nonsym_solver": _normal_cg})


def _bool_mask(mask: Array) -> Array:
  return jnp.asarray(mask) != 0


def _compute_dtype(*arrays: Array) -> jnp.dtype:
  """float32 for float16/bfloat16/float32 inputs; float64 only if an input is float64 (x64 mode, tests)."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / max(||x||, 1e-6): zero vectors stay zero and have finite gradients."""
  sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_FLOOR**2))


def cosine_cost(x: Array, x_mask: Array, y: Array, y_mask: Array) -> Array:
  """C_ij = 1 - cos(x_i, y_j), with every entry that touches a pad set to 0.

  Args:
    x: [..., Lx, D] token vectors (any float dtype).
    x_mask: [..., Lx] real-token mask (bool/int/float; nonzero = real).
    y: [..., Ly, D] token vectors.
    y_mask: [..., Ly] real-token mask.

  Returns:
    [..., Lx, Ly] cost, float32 (float64 for float64 inputs). Pad vectors are replaced by 0 before normalising,
    so their gradient is exactly 0 even if they hold inf or NaN.
  """
  x_mask, y_mask = _bool_mask(x_mask), _bool_mask(y_mask)
  dtype = _compute_dtype(x, y)
  x = l2_normalize(jnp.where(x_mask[..., None], x.astype(dtype), 0.0))
  y = jnp.where(y_mask[..., None], y.astype(dtype), 0.0)
  # y's norms scale the product's columns (the same function as normalising y first, as l2_normalize would) without
  # writing and reading back a normalised copy of the teacher's [Lt, D] tokens.
  y_inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(y), axis=-1), _NORM_FLOOR**2))
  # Costs of an anisotropic encoder differ in the 2nd-3rd digit; TPU's default bf16 matmul passes would blur them.
  product = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
  if y.shape[-2] > x.shape[-2]:
    # XLA:CPU's batched matmul is ~1.5x faster with the longer side as rows ([32, 32 | 128, 384]: 1.0 vs 1.5 ms);
    # the barrier keeps XLA from folding the transpose back into the dot.
    dots = jnp.swapaxes(jax.lax.optimization_barrier(product("...jd,...id->...ji", y, x)), -1, -2)
  else:
    dots = product("...id,...jd->...ij", x, y)
  cos = dots * y_inv_norm[..., None, :]
  pair_mask = x_mask[..., :, None] & y_mask[..., None, :]
  return jnp.where(pair_mask, 1.0 - cos, 0.0)


def _center(x: Array, mask: Array) -> Array:
  """x minus the mean of its real tokens (per sequence), in float32; pads untouched (cosine_cost zeroes them)."""
  mask = _bool_mask(mask)
  x = jnp.where(mask[..., None], x.astype(_compute_dtype(x)), 0.0)
  count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)[..., None]
  return x - jnp.sum(x, axis=-2, keepdims=True) / count


def _marginal(mask: Array, weights: Array | None, dtype: jnp.dtype) -> Array:
  """Probability vector over real tokens: uniform, or `weights` clipped at 0 and renormalised (uniform if all 0)."""
  real = mask.astype(dtype)
  if weights is None:
    w = real
  else:
    w = jnp.maximum(jnp.asarray(weights, dtype), 0.0) * real
    w = jnp.where(jnp.sum(w, axis=-1, keepdims=True) > 0, w, real)
  total = jnp.sum(w, axis=-1, keepdims=True)
  return w / jnp.maximum(total, jnp.finfo(dtype).tiny)


def _cost_scale(cost: Array, pair_mask: Array, mode: str) -> Array:
  """Mean or std of one example's cost entries over real token pairs only (OTT's own statistics count padding)."""
  n_pairs = jnp.maximum(jnp.sum(pair_mask), 1)
  mean = jnp.sum(jnp.where(pair_mask, cost, 0.0)) / n_pairs
  if mode == "mean":
    return mean
  var = jnp.sum(jnp.where(pair_mask, jnp.square(cost - mean), 0.0)) / n_pairs
  return jnp.sqrt(var)


@jax.tree_util.register_pytree_node_class
class _FixedKernelGeometry(geometry.Geometry):
  """A fixed-epsilon Geometry whose kernel exp(-C/eps) is computed once per solve.

  OTT's Geometry recomputes the kernel from the cost on every `kernel_matrix` access and raises it to the power
  eps_0/eps_t (for epsilon schedules) in every `apply_kernel`: an exp and a pow per entry per Sinkhorn half-step, which
  made kernel-mode Sinkhorn as slow as the log domain. With one fixed epsilon both are the identity, so this geometry
  keeps the kernel it was given and applies it as a plain matrix-vector product.
  """

  @property
  def kernel_matrix(self) -> Array:
    return self._kernel_matrix

  def apply_kernel(self, vec: Array, eps: float | None = None, axis: int = 0) -> Array:
    del eps  # fixed epsilon: the kernel never needs rescaling
    kernel = self._kernel_matrix if axis == 1 else self._kernel_matrix.T
    return jnp.dot(kernel, vec)


def _kernel_geometry(cost: Array, pair_mask: Array, epsilon: Array) -> geometry.Geometry:
  """Kernel-domain geometry of one example, with the cost shifted so that no real row or column underflows.

  Subtracting a constant from a row or a column of C rescales the Sinkhorn scalings and leaves the balanced plan
  unchanged; after removing each row's and then each column's minimum over real pairs, every real row and column has
  a kernel entry of exactly 1, so exp(-C/eps) cannot be 0 across a whole row or column. Entries touching a pad are 0.
  """
  masked = jnp.where(pair_mask, cost, jnp.inf)
  shifted = cost - jnp.where(jnp.any(pair_mask, axis=1, keepdims=True), jnp.min(masked, axis=1, keepdims=True), 0.0)
  masked = jnp.where(pair_mask, shifted, jnp.inf)
  shifted = shifted - jnp.where(jnp.any(pair_mask, axis=0, keepdims=True), jnp.min(masked, axis=0, keepdims=True), 0.0)
  kernel = jnp.where(pair_mask, jnp.exp(-shifted / epsilon), 0.0)
  return _FixedKernelGeometry(cost_matrix=shifted, kernel_matrix=kernel, epsilon=epsilon)


def _unbalanced_kernel_geometry(cost: Array, pair_mask: Array, epsilon: Array, tau_a: float, tau_b: float
                                ) -> tuple[geometry.Geometry, Array]:
  """Kernel-domain geometry of one unbalanced example, shifted against underflow, and the plan's log rescaling
  that undoes the shift.

  Without a shift, exp(-C/eps) is 0 on every pair once min C / eps > ~104 (float32), and the plan is NaN. An
  unbalanced plan depends on cost shifts, but in a known way. The fixed point u = (a / K v)^tau_a,
  v = (b / K^T u)^tau_b with the kernel K' = diag(r) K diag(s):
  - tau_a = 1 (balanced rows): row shifts only, u' = u / r, plan unchanged; likewise columns when tau_b = 1. These
    shift each real row (column) to a minimum of 0, so no real row (column) underflows.
  - both < 1: one shift c for the whole matrix, K' = K e^(c/eps); the scalings become u e^(alpha c/eps),
    v e^(beta c/eps) with alpha = -tau_a (1 - tau_b) / (1 - tau_a tau_b), beta = -tau_b (1 - tau_a) /
    (1 - tau_a tau_b), so the shifted plan is the true one times e^(c/eps)^((1 - tau_a)(1 - tau_b) / (1 - tau_a tau_b)).
    A row or column whose minimum is more than ~104 eps above the matrix minimum can still underflow: use the
    log domain (ot.lse_mode=True) there.
  """
  masked = jnp.where(pair_mask, cost, jnp.inf)
  if tau_a == 1.0 or tau_b == 1.0:
    axis = 1 if tau_a == 1.0 else 0
    c = jnp.min(masked, axis=axis, keepdims=True)
    log_scale = 0.0
  else:
    c = jnp.min(masked)
    log_scale = -(1.0 - tau_a) * (1.0 - tau_b) / (1.0 - tau_a * tau_b) * jnp.where(jnp.isfinite(c), c, 0.0) / epsilon
  shifted = cost - jnp.where(jnp.isfinite(c), c, 0.0)
  kernel = jnp.where(pair_mask, jnp.exp(-shifted / epsilon), 0.0)
  return _FixedKernelGeometry(cost_matrix=shifted, kernel_matrix=kernel, epsilon=epsilon), log_scale


def _sinkhorn_plan(cost: Array, pair_mask: Array, a: Array, b: Array, epsilon: Array, *, iterations: int,
                   threshold: float | None, grad: str, lse_mode: bool, tau_a: float, tau_b: float) -> Array:
  """Entropic OT plan of one example with OTT-JAX. Differentiable by unrolling or implicitly.

  lse_mode=True runs the log-domain updates (an exp per cost entry per half-step; safe for any epsilon);
  lse_mode=False runs the kernel (scaling) updates on a kernel computed once: matrix-vector products only.
  """
  log_scale = 0.0
  if lse_mode:
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
  elif tau_a == 1.0 and tau_b == 1.0:
    geom = _kernel_geometry(cost, pair_mask, epsilon)
  else:
    geom, log_scale = _unbalanced_kernel_geometry(cost, pair_mask, epsilon, tau_a, tau_b)
  problem = linear_problem.LinearProblem(geom, a=a, b=b, tau_a=tau_a, tau_b=tau_b)
  block = max(d for d in range(1, 11) if iterations % d == 0)
  if threshold is None:
    # min == max iterations makes OTT run a fixed-length scan: no data-dependent stopping under vmap. Unrolled
    # gradients need one block of all iterations: with several blocks, OTT 0.6.0's unrolled backward
    # (fixed_point_loop.fixpoint_iter_bwd with force_scan) replays the blocks from the first instead of the last,
    # which gives wrong gradients (~5 % here). The other modes never differentiate through the loop, so they keep
    # blocks of <= 10 iterations: the block body is traced unrolled, and one block of 100 iterations compiles slowly.
    min_iterations, threshold = iterations, -1.0
    inner_iterations = iterations if grad == "unroll" else block
  else:
    # The convergence check runs every `inner_iterations`; OTT needs the block size to divide max_iterations.
    min_iterations, inner_iterations = 0, block
  solver = sinkhorn.Sinkhorn(
      lse_mode=lse_mode,
      threshold=threshold,
      min_iterations=min_iterations,
      max_iterations=iterations,
      inner_iterations=inner_iterations,
      implicit_diff=_IMPLICIT_DIFF if grad == "implicit" else None,
  )
  return solver(problem).matrix * jnp.exp(log_scale)


def _plan_diagnostics(plan: Array, cost: Array, a: Array, b: Array, row_mask: Array, col_mask: Array
                      ) -> dict[str, Array]:
  """Per-example plan statistics over real tokens (forward only)."""
  pair_mask = row_mask[:, None] & col_mask[None, :]
  plan = jnp.where(pair_mask, plan, 0.0)
  rows, cols = jnp.sum(plan, axis=1), jnp.sum(plan, axis=0)
  marginal_error = (jnp.sum(jnp.where(row_mask, jnp.abs(rows - a), 0.0))
                    + jnp.sum(jnp.where(col_mask, jnp.abs(cols - b), 0.0)))

  def neg_plogp(p):
    return -jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)

  # Row-normalised plan: which teacher tokens one student token is matched to. exp(mean row entropy) is the number
  # of teacher tokens a student token spreads over (1 = hard alignment, Lt = uniform).
  row_dist = plan / jnp.maximum(rows, jnp.finfo(plan.dtype).tiny)[:, None]
  row_entropy = jnp.sum(neg_plogp(row_dist), axis=1)
  mean_row_entropy = jnp.sum(jnp.where(row_mask, row_entropy, 0.0)) / jnp.maximum(jnp.sum(row_mask), 1)
  return {
      "ot_cost": jnp.sum(plan * cost),
      "marginal_error": marginal_error,
      "plan_entropy": jnp.sum(neg_plogp(plan)),
      "effective_support": jnp.exp(mean_row_entropy),
  }


def _check_tokens(student_tokens, student_mask, teacher_tokens, teacher_mask) -> None:
  if student_tokens.ndim != 3 or teacher_tokens.ndim != 3:
    raise ValueError(f"token arrays must be [B, L, D]; got student {student_tokens.shape}, "
                     f"teacher {teacher_tokens.shape}")
  if student_tokens.shape[-1] != teacher_tokens.shape[-1]:
    raise UserError(f"student token dim {student_tokens.shape[-1]} != teacher token dim {teacher_tokens.shape[-1]}: "
                    "set student.projection_dim to the teacher's hidden size")
  if student_tokens.shape[0] != teacher_tokens.shape[0]:
    raise ValueError(f"batch sizes differ: student {student_tokens.shape[0]}, teacher {teacher_tokens.shape[0]}")
  if student_mask.shape != student_tokens.shape[:2] or teacher_mask.shape != teacher_tokens.shape[:2]:
    raise ValueError(f"masks must be [B, L]: student mask {student_mask.shape} for tokens {student_tokens.shape}, "
                     f"teacher mask {teacher_mask.shape} for tokens {teacher_tokens.shape}")


def ot_alignment_loss(
    student_tokens: Array,
    student_mask: Array,
    teacher_tokens: Array,
    teacher_mask: Array,
    *,
    epsilon: float,
    iterations: int,
    grad: str = "envelope",
    relative_epsilon: str | None = None,
    student_weights: Array | None = None,
    teacher_weights: Array | None = None,
    threshold: float | None = None,
    lse_mode: bool = True,
    tau_student: float = 1.0,
    tau_teacher: float = 1.0,
    plan_centering: bool = False,
) -> tuple[Array, dict[str, Array]]:
  """OPTICAL token-alignment loss: mean over the batch of <P*, C> over real tokens.

  Args:
    student_tokens: [B, Ls, D] student token embeddings.
    student_mask: [B, Ls] real-token mask (bool/int/float).
    teacher_tokens: [B, Lt, D] teacher token embeddings (float16/bfloat16 fine: the loss is computed in float32).
    teacher_mask: [B, Lt] real-token mask.
    epsilon: entropic regularisation; absolute, or the multiplier of the cost scale if `relative_epsilon` is set.
    iterations: Sinkhorn iterations (a fixed count, so vmapped examples never wait for the slowest).
    grad: "envelope" (default): gradient P* w.r.t. C, plan held fixed (Danskin; cheapest);
      "unroll": backprop through the Sinkhorn iterations (exact for any iteration count; keeps every iteration's
      [Ls, Lt] intermediates for the backward pass); "implicit": OTT's implicit differentiation of the fixed point.
      envelope and implicit assume a converged plan: watch aux["marginal_error"].
    relative_epsilon: None, "std" or "mean": eps_i = epsilon * std (mean) of example i's cost over real token
      pairs, without gradient.
    student_weights: optional [B, Ls] nonnegative marginal weights (e.g. IDF), renormalised over real tokens.
    teacher_weights: optional [B, Lt] likewise. Weights are constants: no gradient flows into them.
    threshold: None for exactly `iterations` iterations; a float to stop early once OTT's marginal error falls
      below it (a while loop: under vmap it runs until the slowest example converges).
    lse_mode: True for log-domain Sinkhorn (stable for any epsilon); False for kernel-domain (scaling) Sinkhorn on a
      kernel computed once per solve, several times faster on CPU. The kernel domain needs exp(-range/eps) to stay
      above float32's smallest normal (~1e-38), i.e. (cost spread within a row or column) / eps below ~80: cosine
      costs span at most 2, so eps >= 0.025 is always safe. Not with grad="implicit".
    tau_student, tau_teacher: OTT's unbalanced-OT weights of the student (row) and teacher (column) marginals:
      1 = balanced (the marginal is a hard constraint), tau = rho / (rho + eps) < 1 relaxes it to a KL penalty of
      weight rho, so e.g. English function words without a counterpart need not receive their full mass.
    plan_centering: solve the plan on token vectors centred by their sentence's mean over real tokens (each side
      its own mean), then take <P, C> on the raw vectors. In an anisotropic space the shared direction dominates
      the raw cosines (mE5: costs 0.07-0.36); centring lets the alignment follow content. Envelope gradient only.

  Returns:
    (loss, aux). aux holds batch means of "ot_cost" (<P, C>, no gradient), "marginal_error" (L1 error of the plan's
    row plus column sums), "plan_entropy", "effective_support" (exp of the mean row entropy of the row-normalised
    plan: teacher tokens per student token) and "epsilon". Examples with no real token on either side are left out
    of every mean (loss 0 if the whole batch is empty).
  """
  try:
    ot_options.check(epsilon=epsilon, iterations=iterations, grad=grad, relative_epsilon=relative_epsilon,
                     lse_mode=lse_mode, tau_student=tau_student, tau_teacher=tau_teacher,
                     plan_centering=plan_centering)
  except ValueError as e:
    raise UserError(str(e)) from None
  student_tokens, teacher_tokens = jnp.asarray(student_tokens), jnp.asarray(teacher_tokens)
  student_mask, teacher_mask = _bool_mask(student_mask), _bool_mask(teacher_mask)
  _check_tokens(student_tokens, student_mask, teacher_tokens, teacher_mask)

  # An example with no real token on a side has no OT problem; give it one dummy token so every number stays finite,
  # then drop it from the means.
  valid = jnp.any(student_mask, axis=1) & jnp.any(teacher_mask, axis=1)
  first_token = lambda m: jnp.zeros_like(m).at[:, 0].set(True)
  row_mask = jnp.where(valid[:, None], student_mask, first_token(student_mask))
  col_mask = jnp.where(valid[:, None], teacher_mask, first_token(teacher_mask))

  cost = cosine_cost(student_tokens, student_mask, teacher_tokens, teacher_mask)
  pair_mask = row_mask[:, :, None] & col_mask[:, None, :]
  a = jax.lax.stop_gradient(_marginal(row_mask, student_weights, cost.dtype))
  b = jax.lax.stop_gradient(_marginal(col_mask, teacher_weights, cost.dtype))
  if plan_centering:
    # The plan (a constant under the envelope gradient) is solved on mean-centred token vectors; the loss stays
    # <P, C> on the raw ones, so it still carries the shift between the two languages' token clouds.
    plan_cost = jax.lax.stop_gradient(cosine_cost(_center(student_tokens, student_mask), student_mask,
                                                  _center(teacher_tokens, teacher_mask), teacher_mask))
  else:
    plan_cost = cost

  if relative_epsilon is None:
    eps = jnp.full(valid.shape, epsilon, cost.dtype)
  else:
    scale = jax.vmap(lambda c, m: _cost_scale(c, m, relative_epsilon))(jax.lax.stop_gradient(plan_cost), pair_mask)
    eps = jnp.maximum(epsilon * scale, _MIN_EPSILON).astype(cost.dtype)

  if grad == "implicit":
    # Floor every weight (pads and zero-weight real tokens) so eps*log(marginal) stays finite; the pads then carry
    # ~1e-8 of the mass, which the loss below ignores.
    floor = lambda p: (p + _IMPLICIT_MIN_WEIGHT) / (1.0 + _IMPLICIT_MIN_WEIGHT * p.shape[-1])
    solver_a, solver_b, solver_cost = floor(a), floor(b), cost
  else:
    # Exact zero weights: pads get -inf potentials and exactly zero plan entries (OTT's logsumexp has a NaN-free
    # derivative for that case, so unrolling is exact too).
    solver_a, solver_b = a, b
    solver_cost = jax.lax.stop_gradient(plan_cost) if grad == "envelope" else cost

  solve = functools.partial(_sinkhorn_plan, iterations=iterations, threshold=threshold, grad=grad,
                            lse_mode=lse_mode, tau_a=float(tau_student), tau_b=float(tau_teacher))
  plan = jax.vmap(solve)(solver_cost, pair_mask, solver_a, solver_b, eps)
  # Envelope: plan is a constant here (its cost input was stop-gradient), so d loss / d C = P*.
  per_example = jnp.sum(jnp.where(pair_mask, plan * cost, 0.0), axis=(1, 2))

  n_valid = jnp.maximum(jnp.sum(valid), 1)
  batch_mean = lambda v: jnp.sum(jnp.where(valid, v, 0.0)) / n_valid
  loss = batch_mean(per_example)
  stats = jax.vmap(_plan_diagnostics)(*jax.lax.stop_gradient((plan, cost, a, b)), row_mask, col_mask)
  aux = {name: batch_mean(value) for name, value in stats.items()}
  aux["epsilon"] = batch_mean(eps)
  return loss, aux


def masked_mean_pool(tokens: Array, mask: Array) -> Array:
  """[B, L, D] -> [B, D]: mean over real tokens (0 for an example without any)."""
  mask = _bool_mask(mask)
  dtype = _compute_dtype(tokens)
  tokens = jnp.where(mask[..., None], tokens.astype(dtype), 0.0)
  count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(dtype)
  return jnp.sum(tokens, axis=-2) / count


def mse_distill_loss(student_tokens: Array, student_mask: Array, teacher_tokens: Array, teacher_mask: Array
                     ) -> tuple[Array, dict[str, Array]]:
  """Sentence-level distillation (Reimers & Gurevych 2020): ||norm(meanpool(s)) - norm(meanpool(t))||^2, batch mean.

  On unit vectors this is 2 - 2 cos(pooled student, pooled teacher). As in `ot_alignment_loss`, examples with no
  real token on either side are left out of the mean. Returns (loss, {"mse": loss}).
  """
  student = l2_normalize(masked_mean_pool(student_tokens, student_mask))
  teacher = l2_normalize(masked_mean_pool(teacher_tokens, teacher_mask))
  valid = jnp.any(_bool_mask(student_mask), axis=-1) & jnp.any(_bool_mask(teacher_mask), axis=-1)
  per_example = jnp.sum(jnp.square(student - teacher), axis=-1)
  loss = jnp.sum(jnp.where(valid, per_example, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  return loss, {"mse": loss}


def ranking_scores(student_tokens: Array, student_mask: Array, doc_tokens: Array, doc_mask: Array, *,
                   scorer: str = "maxsim") -> Array:
  """[B, Ls, D] queries x [N, Ld, D] documents -> [B, N] retrieval scores, as evaluation scores them.

  "maxsim": mean over the query's real tokens of the best cosine over the document's real tokens (ColBERT late
  interaction, `retrieval.search.maxsim_scores`); "pooled": cosine of the mean-pooled vectors. Not that function
  itself: this one normalises with `l2_normalize`, whose gradient stays finite at a zero vector.
  """
  dtype = _compute_dtype(student_tokens)
  if scorer == "pooled":
    q = l2_normalize(masked_mean_pool(student_tokens, student_mask))
    d = l2_normalize(masked_mean_pool(doc_tokens, doc_mask))
    return jnp.einsum("bd,nd->bn", q, d.astype(dtype))
  if scorer != "maxsim":
    raise UserError(f"loss.rank_scorer: must be one of 'maxsim', 'pooled', got {scorer!r}")
  q = l2_normalize(student_tokens.astype(dtype))
  d = l2_normalize(doc_tokens.astype(dtype))
  qm, dm = _bool_mask(student_mask), _bool_mask(doc_mask)
  sim = jnp.einsum("bid,njd->bnij", q, d)
  best = jnp.max(jnp.where(dm[None, :, None, :], sim, -jnp.inf), axis=-1)       # [B, N, Ls]
  best = jnp.where(jnp.any(dm, axis=-1)[None, :, None], best, -1.0)
  total = jnp.sum(jnp.where(qm[:, None, :], best, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(qm, axis=-1), 1)[:, None]


def ranking_loss(student_tokens: Array, student_mask: Array, doc_tokens: Array, doc_mask: Array, *,
                 temperature: float, scorer: str = "maxsim", duplicate_threshold: float = 1.0,
                 bank_tokens: Array | None = None, bank_mask: Array | None = None, doc_index: Array | None = None,
                 bank_index: Array | None = None, target: str = "translation") -> tuple[Array, dict[str, Array]]:
  """InfoNCE over stored teacher documents: query i must rank its own translation (document i) first.

  The candidates are the batch's teacher documents (in-batch negatives) plus an optional bank of other stored
  teacher documents. The documents are frozen teacher states, so a negative costs one score, not a forward pass.
  A negative whose teacher-side score to the positive (same scorer, teacher against teacher) reaches
  `duplicate_threshold` is left out: a near-copy of the right verse is not a wrong answer.

  target="teacher" distils the teacher's own score distribution over the same candidates instead (cross-entropy
  to softmax(teacher scores / temperature), teacher against teacher: Translate-Distill style), which keeps the
  teacher's topical similarity rather than pushing every related verse away; duplicates then need no filter.

  Args:
    student_tokens: [B, Ls, D] student query tokens; student_mask: [B, Ls] the tokens that score.
    doc_tokens: [B, Ld, D] teacher tokens of each query's translation; doc_mask: [B, Ld].
    temperature: softmax temperature on the scores (they lie in [-1, 1]).
    bank_tokens / bank_mask: [K, Ld', D] / [K, Ld'] extra negatives, e.g. mined hard negatives.
    doc_index / bank_index: [B] / [K] example ids of the documents and the bank: a bank document with query i's
      id is query i's own translation, never its negative.

  Returns:
    (loss, {"rank_accuracy": share of queries whose positive scores highest, "rank_margin": mean of positive score
    minus the best negative's}).
  """
  if target not in ("translation", "teacher"):
    raise UserError(f"loss.rank_target: must be one of 'translation', 'teacher', got {target!r}")
  batch = student_tokens.shape[0]
  scores = ranking_scores(student_tokens, student_mask, doc_tokens, doc_mask, scorer=scorer)         # [B, B]
  real_doc = jnp.any(_bool_mask(doc_mask), axis=-1)
  teacher_scores = None
  if duplicate_threshold < 1.0 or target == "teacher":
    teacher_scores = ranking_scores(doc_tokens, doc_mask, doc_tokens, doc_mask, scorer=scorer)
  if bank_tokens is not None:
    # Scored separately: the bank may be padded to another length than the batch's documents.
    scores = jnp.concatenate(
        [scores, ranking_scores(student_tokens, student_mask, bank_tokens, bank_mask, scorer=scorer)], axis=1)
    real_doc = jnp.concatenate([real_doc, jnp.any(_bool_mask(bank_mask), axis=-1)])
    if teacher_scores is not None:
      teacher_scores = jnp.concatenate(
          [teacher_scores, ranking_scores(doc_tokens, doc_mask, bank_tokens, bank_mask, scorer=scorer)], axis=1)
  num_docs = scores.shape[1]
  positive = jnp.arange(num_docs)[None, :] == jnp.arange(batch)[:, None]
  keep = real_doc[None, :] & ~positive
  if bank_index is not None:
    same = jnp.asarray(bank_index)[None, :] == jnp.asarray(doc_index)[:, None]
    keep = keep & ~jnp.concatenate([jnp.zeros((batch, batch), bool), same], axis=1)
  if teacher_scores is not None:
    teacher_scores = jax.lax.stop_gradient(teacher_scores)
    if target == "translation":
      keep = keep & (teacher_scores < duplicate_threshold)
  candidates = keep | positive
  logits = jnp.where(candidates, scores / temperature, -jnp.inf)
  pos_score = jnp.sum(jnp.where(positive, scores, 0.0), axis=-1)
  if target == "teacher":
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p_teacher = jax.nn.softmax(jnp.where(candidates, teacher_scores / temperature, -jnp.inf), axis=-1)
    per_example = -jnp.sum(jnp.where(candidates, p_teacher * log_p, 0.0), axis=-1)
  else:
    per_example = jax.nn.logsumexp(logits, axis=-1) - pos_score / temperature
  valid = jnp.any(_bool_mask(student_mask), axis=-1) & jnp.any(_bool_mask(doc_mask), axis=-1)
  n_valid = jnp.maximum(jnp.sum(valid), 1)
  batch_mean = lambda v: jnp.sum(jnp.where(valid, v, 0.0)) / n_valid
  best_negative = jax.lax.stop_gradient(jnp.max(jnp.where(keep, scores, -jnp.inf), axis=-1))
  has_negative = jnp.any(keep, axis=-1)
  margin = jnp.where(has_negative, jax.lax.stop_gradient(pos_score) - best_negative, 0.0)
  aux = {"rank_accuracy": batch_mean((margin > 0) | ~has_negative), "rank_margin": batch_mean(margin)}
  return batch_mean(per_example), aux


def idf_weights(token_ids: Array, mask: Array, document_frequency: Array, num_documents: Any) -> Array:
  """Per-token IDF marginal weights, 0 on pads.

  Uses the BM25 (Lucene) IDF log(1 + (N - df + 0.5) / (df + 0.5)), which is strictly positive even for a token in
  every document, so no real token loses all its transport mass.

  Args:
    token_ids: [B, L] integer ids.
    mask: [B, L] real-token mask.
    document_frequency: [V] number of documents containing each vocabulary id.
    num_documents: N, the number of documents the frequencies were counted over.

  Returns:
    [B, L] float32 weights (unnormalised; `ot_alignment_loss` renormalises over real tokens).
  """
  df = jnp.asarray(document_frequency, jnp.float32)[jnp.asarray(token_ids)]
  n = jnp.asarray(num_documents, jnp.float32)
  df = jnp.clip(df, 0.0, n)
  idf = jnp.log1p((n - df + 0.5) / (df + 0.5))
  return jnp.where(_bool_mask(mask), idf, 0.0)
