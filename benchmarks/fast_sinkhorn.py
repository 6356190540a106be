"""Proposed speed-up of optical_jax.losses (envelope gradient): a log-stabilised *scaling* Sinkhorn.

Not used by optical_jax yet: this is the measured proposal. Swapping it in is a few lines in
`losses.ot_alignment_loss` (see `ot_alignment_loss_fast` below, which is that function with the one change).

Why it is faster. OTT's log-domain iteration (`lse_mode=True`) computes two log-sum-exps over the whole [Ls, Lt]
cost matrix per iteration: 2·Ls·Lt exponentials. On a CPU those exponentials are the Sinkhorn's whole cost. The
scaling form needs exponentials only when it recomputes the kernel; in between, an iteration is two batched
matrix-vector products (u = a / K̃v, v = b / K̃ᵀu). Stability comes from absorbing u, v into the log potentials
every `absorb_every` iterations (K̃ = exp((f ⊕ g − C)/ε), Schmitzer 2019, "Stabilized sparse scaling algorithms
for entropy regularized transport problems", §4), so K̃ holds the current plan, never exp(−C/ε) itself.

Same iterates as OTT. The first iteration runs in the log domain from OTT's initial potentials (0 on the support,
−inf where a marginal weight is 0) and every later one is the same update (column potential first, then row), only
computed in the scaling domain. So at every iteration count — converged or not — the plan equals OTT's up to float
rounding. `python -m benchmarks.fast_sinkhorn --check` compares loss and gradient with `losses.ot_alignment_loss`
over ε ∈ {0.005 … 0.2}, absolute and relative ε, 1 … 100 iterations, isotropic and anisotropic tokens, padding,
IDF weights and empty examples; `--time` times both on the configs/bench_cpu.py shapes.

  python -m benchmarks.fast_sinkhorn --check --time
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import losses

Array = jax.Array


def sinkhorn_plan_scaling(cost: Array, a: Array, b: Array, epsilon: Array, *, iterations: int,
                          absorb_every: int = 10) -> Array:
  """Entropic OT plans of a batch: [B, n, m] cost, [B, n] a, [B, m] b (0 = not in the problem), [B] epsilon.

  Exactly `iterations` Sinkhorn iterations (column update first), as OTT with lse_mode and a fixed count.
  Not differentiable through the iterations: use it where the plan is a constant (envelope gradient).
  """
  tiny = jnp.finfo(cost.dtype).tiny
  m = -cost / epsilon[:, None, None]
  in_a, in_b = a > 0, b > 0
  log_a = jnp.where(in_a, jnp.log(jnp.where(in_a, a, 1.0)), -jnp.inf)
  log_b = jnp.where(in_b, jnp.log(jnp.where(in_b, b, 1.0)), -jnp.inf)
  lse = jax.nn.logsumexp

  # Iteration 1 in the log domain (potentials in units of epsilon), from OTT's initial potentials.
  f = jnp.where(in_a, 0.0, -jnp.inf)
  g = jnp.where(in_b, log_b - lse(f[:, :, None] + m, axis=1), -jnp.inf)
  f = jnp.where(in_a, log_a - lse(g[:, None, :] + m, axis=2), -jnp.inf)

  def block(fg, n):
    f, g = fg
    kernel = jnp.exp(m + f[:, :, None] + g[:, None, :])  # the current plan: entries <= 1, never exp(-C/eps)
    u, v = jnp.ones_like(f), jnp.ones_like(g)
    for _ in range(n):  # unrolled: n small matrix-vector products, no exponentials
      v = b / jnp.maximum(jnp.einsum("bij,bi->bj", kernel, u), tiny)
      u = a / jnp.maximum(jnp.einsum("bij,bj->bi", kernel, v), tiny)
    f = jnp.where(in_a, f + jnp.log(jnp.where(in_a, u, 1.0)), -jnp.inf)
    g = jnp.where(in_b, g + jnp.log(jnp.where(in_b, v, 1.0)), -jnp.inf)
    return f, g

  full, rest = divmod(iterations - 1, absorb_every)
  f, g = jax.lax.fori_loop(0, full, lambda _, fg: block(fg, absorb_every), (f, g))
  if rest:
    f, g = block((f, g), rest)
  return jnp.exp(m + f[:, :, None] + g[:, None, :])


def ot_alignment_loss_fast(student_tokens, student_mask, teacher_tokens, teacher_mask, *, epsilon, iterations,
                           relative_epsilon=None, student_weights=None, teacher_weights=None, absorb_every=10):
  """`losses.ot_alignment_loss(grad="envelope", threshold=None)` with the plan from `sinkhorn_plan_scaling`.

  The body is the library function's, unchanged except for the line marked CHANGE.
  """
  student_mask, teacher_mask = losses._bool_mask(student_mask), losses._bool_mask(teacher_mask)  # pylint: disable=protected-access
  valid = jnp.any(student_mask, axis=1) & jnp.any(teacher_mask, axis=1)
  first_token = lambda m: jnp.zeros_like(m).at[:, 0].set(True)
  row_mask = jnp.where(valid[:, None], student_mask, first_token(student_mask))
  col_mask = jnp.where(valid[:, None], teacher_mask, first_token(teacher_mask))
  cost = losses.cosine_cost(student_tokens, student_mask, teacher_tokens, teacher_mask)
  pair_mask = row_mask[:, :, None] & col_mask[:, None, :]
  a = jax.lax.stop_gradient(losses._marginal(row_mask, student_weights, cost.dtype))  # pylint: disable=protected-access
  b = jax.lax.stop_gradient(losses._marginal(col_mask, teacher_weights, cost.dtype))  # pylint: disable=protected-access
  if relative_epsilon is None:
    eps = jnp.full(valid.shape, epsilon, cost.dtype)
  else:
    scale = jax.vmap(lambda c, m: losses._cost_scale(c, m, relative_epsilon))(jax.lax.stop_gradient(cost), pair_mask)  # pylint: disable=protected-access
    eps = jnp.maximum(epsilon * scale, losses._MIN_EPSILON).astype(cost.dtype)  # pylint: disable=protected-access
  # CHANGE: was jax.vmap(solve)(stop_gradient(cost), a, b, eps) with OTT's log-domain solver.
  plan = sinkhorn_plan_scaling(jax.lax.stop_gradient(cost), a, b, eps, iterations=iterations,
                               absorb_every=absorb_every)
  per_example = jnp.sum(jnp.where(pair_mask, plan * cost, 0.0), axis=(1, 2))
  n_valid = jnp.maximum(jnp.sum(valid), 1)
  batch_mean = lambda v: jnp.sum(jnp.where(valid, v, 0.0)) / n_valid
  loss = batch_mean(per_example)
  stats = jax.vmap(losses._plan_diagnostics)(*jax.lax.stop_gradient((plan, cost, a, b)), row_mask, col_mask)  # pylint: disable=protected-access
  aux = {name: batch_mean(value) for name, value in stats.items()}
  aux["epsilon"] = batch_mean(eps)
  return loss, aux


def _problem(seed: int, batch: int, ls: int, lt: int, dim: int, anisotropic: bool, weights: bool):
  rng = np.random.default_rng(seed)
  s, t = rng.normal(size=(batch, ls, dim)), rng.normal(size=(batch, lt, dim))
  if anisotropic:  # mE5-like: a shared direction dominates, costs span ~0.05-0.4 instead of ~0.6-1.4
    common = 4.0 * rng.normal(size=dim)
    s, t = s + common, t + common
  sm = np.arange(ls)[None] < rng.integers(1, ls + 1, batch)[:, None]
  tm = np.arange(lt)[None] < rng.integers(1, lt + 1, batch)[:, None]
  sm[0] = False  # an empty example
  tm[1, 1:] = False  # a one-token side
  sw = tw = None
  if weights:
    sw = rng.uniform(0.0, 3.0, size=(batch, ls)) * (rng.random((batch, ls)) > 0.2)  # some zero weights
    tw = rng.uniform(0.5, 3.0, size=(batch, lt))
  return (jnp.asarray(s, jnp.float32), jnp.asarray(sm), jnp.asarray(t, jnp.float32), jnp.asarray(tm)), sw, tw


def check(verbose: bool = True) -> float:
  """Worst relative loss difference and worst gradient difference (relative to the largest gradient entry)."""
  worst = 0.0
  for anisotropic in (False, True):
    for eps, relative in ((0.005, None), (0.01, None), (0.05, None), (0.2, None), (0.05, "std"), (0.05, "mean")):
      for iterations in (1, 2, 7, 50, 100):
        for weights in (False, True):
          args, sw, tw = _problem(iterations, 6, 9, 23, 16, anisotropic, weights)
          kw = dict(epsilon=eps, iterations=iterations, relative_epsilon=relative, student_weights=sw,
                    teacher_weights=tw)
          ref = lambda s: losses.ot_alignment_loss(s, *args[1:], grad="envelope", **kw)[0]
          new = lambda s: ot_alignment_loss_fast(s, *args[1:], **kw)[0]
          (l0, g0), (l1, g1) = jax.value_and_grad(ref)(args[0]), jax.value_and_grad(new)(args[0])
          dl = abs(float(l1 - l0)) / max(abs(float(l0)), 1e-12)
          dg = float(jnp.max(jnp.abs(g1 - g0)) / jnp.maximum(jnp.max(jnp.abs(g0)), 1e-12))
          if not (np.isfinite(float(l1)) and bool(jnp.all(jnp.isfinite(g1)))):
            dl = dg = float("inf")
          worst = max(worst, dl, dg)
          if verbose and max(dl, dg) > 1e-4:
            print(f"  differs: anisotropic={anisotropic} eps={eps} relative={relative} iterations={iterations} "
                  f"weights={weights}: loss {dl:.2e}, grad {dg:.2e}")
  if verbose:
    print(f"check: worst relative difference vs losses.ot_alignment_loss (loss or gradient): {worst:.2e}")
  return worst


def time_both(rounds: int = 30) -> dict[str, float]:
  """fwd+bwd medians on the configs/bench_cpu.py OT shapes (B=32, Ls=32, Lt=128, D=384, eps 0.05, 50 iterations)."""
  rng = np.random.default_rng(0)
  b, ls, lt, d = 32, 32, 128, 384
  sm = jnp.asarray(np.arange(ls)[None] < rng.integers(16, ls + 1, b)[:, None])
  tm = jnp.asarray(np.arange(lt)[None] < rng.integers(64, lt + 1, b)[:, None])
  s = jnp.asarray(rng.normal(size=(b, ls, d)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(b, lt, d)), jnp.float32)
  kw = dict(epsilon=0.05, iterations=50)
  fns = {"ott (losses.ot_alignment_loss)": jax.jit(jax.value_and_grad(
             lambda x: losses.ot_alignment_loss(x, sm, t, tm, **kw)[0])),
         "scaling (this file)": jax.jit(jax.value_and_grad(lambda x: ot_alignment_loss_fast(x, sm, t, tm, **kw)[0]))}
  times = {k: [] for k in fns}
  for f in fns.values():
    jax.block_until_ready(f(s))
  for _ in range(rounds):  # interleaved: a shared machine's load hits both alike
    for name, f in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(f(s))
      times[name].append(time.perf_counter() - start)
  out = {k: statistics.median(v) for k, v in times.items()}
  for k, v in out.items():
    print(f"  {k:32s} fwd+bwd median {1e3 * v:.2f} ms")
  names = list(out)
  print(f"  speed-up x{out[names[0]] / out[names[1]]:.2f}")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.fast_sinkhorn", description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true", help="agreement with losses.ot_alignment_loss")
  p.add_argument("--time", action="store_true", help="interleaved timing on the bench_cpu shapes")
  p.add_argument("--rounds", type=int, default=30)
  args = p.parse_args(argv)
  if args.check:
    check()
  if args.time:
    time_both(args.rounds)
  return 0


if __name__ == "__main__":
  sys.exit(main())
