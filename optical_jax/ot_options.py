"""The OT loss's options and their one set of checks, shared by the loss and by config validation (no jax)."""
from __future__ import annotations

from typing import Any

GRAD_MODES = ("envelope", "implicit", "unroll")
RELATIVE_EPSILON_MODES = ("std", "mean")


def from_config(ot_config: Any) -> dict[str, Any]:
  """The keyword arguments of `losses.ot_alignment_loss` from a conformed config's `ot` section."""
  return {
      "epsilon": ot_config.epsilon,
      "iterations": ot_config.iterations,
      "grad": ot_config.grad,
      "relative_epsilon": ot_config.relative_epsilon or None,
      "lse_mode": ot_config.lse_mode,
      "tau_student": ot_config.tau_student,
      "tau_teacher": ot_config.tau_teacher,
      "plan_centering": ot_config.plan_centering,
  }


def check(*, epsilon: Any, iterations: Any, grad: str, relative_epsilon: str | None, lse_mode: bool,
          tau_student: float, tau_teacher: float, plan_centering: bool) -> None:
  """ValueError naming the `ot.*` field of the first bad option. A traced (array) epsilon is not checked."""
  if grad not in GRAD_MODES:
    raise ValueError(f"ot.grad must be one of {GRAD_MODES}, got {grad!r}")
  if relative_epsilon not in (None, *RELATIVE_EPSILON_MODES):
    raise ValueError(f"ot.relative_epsilon must be '', 'std' or 'mean', got {relative_epsilon!r}")
  if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
    raise ValueError(f"ot.iterations must be a positive integer, got {iterations!r}")
  if isinstance(epsilon, (int, float)) and not epsilon > 0:
    raise ValueError(f"ot.epsilon must be > 0, got {epsilon!r}")
  for name, tau in (("ot.tau_student", tau_student), ("ot.tau_teacher", tau_teacher)):
    if not 0.0 < tau <= 1.0:
      raise ValueError(f"{name} must be in (0, 1] (1 = balanced), got {tau!r}")
  if plan_centering and grad != "envelope":
    raise ValueError("ot.plan_centering needs ot.grad='envelope' (the plan is solved on another cost than the loss)")
  if not lse_mode and grad == "implicit":
    raise ValueError("ot.lse_mode=False (kernel-domain Sinkhorn) supports ot.grad 'envelope' and 'unroll', not "
                     "'implicit'")
