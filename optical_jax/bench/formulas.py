"""The benchmark's derived figures, shared by the main run and the sweep: a step's FLOPs, tokens/s, OT share."""
from __future__ import annotations

import ml_collections
import numpy as np

from optical_jax import flops as flops_lib


def train_step_flops(config: ml_collections.ConfigDict, encoder_config) -> float:
  return flops_lib.train_step_flops(
      batch=config.train.batch_size, student_len=config.data.max_len_student,
      teacher_len=config.data.max_len_teacher, hidden=encoder_config.hidden_size,
      num_layers=encoder_config.num_layers, intermediate=encoder_config.intermediate_size,
      projection_dim=encoder_config.projection_dim, embed_dim=int(config.teacher.dim))


def throughput(config: ml_collections.ConfigDict, median_s: float, real_tokens_per_batch: float) -> dict[str, float]:
  b, ls = config.train.batch_size, config.data.max_len_student
  return {"sequences_per_s": b / median_s, "padded_tokens_per_s": b * ls / median_s,
          "real_tokens_per_s": real_tokens_per_batch / median_s}


def ot_share(ot_step_s: float | None, mse_step_s: float | None) -> float | None:
  """Fraction of the OT step's time the OT loss accounts for: (t_OT - t_MSE) / t_OT, clipped to [0, 1]."""
  if ot_step_s is None or mse_step_s is None:
    return None if ot_step_s is None else 0.0
  return float(np.clip((ot_step_s - mse_step_s) / ot_step_s, 0.0, 1.0))
