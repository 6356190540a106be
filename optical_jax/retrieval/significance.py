"""Paired significance tests on per-query metric values, and Holm's correction when a table makes several
comparisons at once.

- Paired t-test: scipy.stats.ttest_rel, two-sided.
- Randomisation test: the paired (sign-flip) permutation test of the mean difference, two-sided, through
  scipy.stats.permutation_test; exact when 2^n does not exceed the resample count, else `resamples` seeded random
  sign flips. Smucker, Allan & Carterette (CIKM 2007) recommend it, with the t-test, for IR evaluation.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def _mean_difference(a, b, axis):
  return np.mean(a - b, axis=axis)


def paired_tests(a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0
                 ) -> dict[str, float]:
  """{"p_value": paired t-test, "p_randomization": sign-flip randomisation test} of mean(a - b) = 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired_tests: need two equal-length 1-D samples, got shapes {a.shape} and {b.shape}")
  if len(a) < 2 or np.all(a == b):  # no spread: nothing to test (scipy would return nan)
    return {"p_value": 1.0, "p_randomization": 1.0}
  t_test = stats.ttest_rel(a, b)
  randomised = stats.permutation_test((a, b), _mean_difference, permutation_type="samples", vectorized=True,
                                      n_resamples=resamples, alternative="two-sided", rng=np.random.default_rng(seed))
  p_value = float(t_test.pvalue) if np.isfinite(t_test.pvalue) else 1.0
  return {"p_value": p_value, "p_randomization": float(randomised.pvalue)}


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
  p = np.asarray(p_values, np.float64)
  m = len(p)
  order = np.argsort(p, kind="stable")
  adjusted = np.empty(m)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    adjusted[i] = running
  return adjusted.tolist()


def with_holm(comparisons: list[dict[str, Any]], key: str = "p_value") -> list[dict[str, Any]]:
  """Adds "p_holm" to every comparison that has `key`, corrected over those comparisons together."""
  tested = [c for c in comparisons if c is not None and c.get(key) is not None]
  for comparison, adjusted in zip(tested, holm([c[key] for c in tested])):
    comparison["p_holm"] = adjusted
  return comparisons
