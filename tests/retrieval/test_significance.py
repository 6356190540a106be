"""Paired t-test and randomisation p-values against independent computations; Holm's correction by hand."""
import itertools
import math

import numpy as np
import pytest

from optical_jax.retrieval import significance


def _t_test_p(diffs):
  """Two-sided paired t-test p-value from the t distribution's regularised incomplete beta (no scipy.stats)."""
  from scipy.special import betainc
  n = len(diffs)
  t = np.mean(diffs) / (np.std(diffs, ddof=1) / math.sqrt(n))
  df = n - 1
  return float(betainc(df / 2, 0.5, df / (df + t * t)))


def _exact_sign_flip_p(diffs):
  observed = abs(np.mean(diffs))
  flips = [abs(np.mean(np.asarray(signs) * diffs)) for signs in itertools.product((1, -1), repeat=len(diffs))]
  return float(np.mean([f >= observed - 1e-12 for f in flips]))


def test_p_values_match_independent_computations():
  rng = np.random.default_rng(0)
  a = rng.random(10)
  b = a - 0.15 + rng.normal(0, 0.2, 10)
  got = significance.paired_tests(a, b)
  assert got["p_value"] == pytest.approx(_t_test_p(a - b), rel=1e-9)
  # 2^10 = 1,024 sign flips < 10,000 resamples: scipy enumerates them all, exactly as the loop does.
  assert got["p_randomization"] == pytest.approx(_exact_sign_flip_p(a - b), abs=1e-12)


def test_large_samples_resample_with_a_seed_and_agree_with_the_t_test():
  rng = np.random.default_rng(1)
  a = rng.random(500)
  b = a - 0.02 + rng.normal(0, 0.2, 500)
  first, again = significance.paired_tests(a, b), significance.paired_tests(a, b)
  assert first == again
  assert abs(first["p_randomization"] - first["p_value"]) < 0.02  # the two tests agree at n = 500


def test_no_difference_and_bad_shapes():
  assert significance.paired_tests([0.5, 1.0], [0.5, 1.0]) == {"p_value": 1.0, "p_randomization": 1.0}
  with pytest.raises(ValueError, match="equal-length"):
    significance.paired_tests([1.0, 2.0], [1.0])


def test_holm_by_hand():
  # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06.
  assert significance.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
  comparisons = [{"p_value": 0.01}, None, {"p_value": 0.04}, {"other": 1}]
  significance.with_holm(comparisons)
  assert comparisons[0]["p_holm"] == pytest.approx(0.02) and comparisons[2]["p_holm"] == pytest.approx(0.04)
  assert "p_holm" not in comparisons[3]
