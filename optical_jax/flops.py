"""Analytic FLOPs of the OPTICAL train step, dense chip peaks, and MFU (the throughput benchmark's yardstick).

Counting convention (MaxText's `calculate_tflops_training_per_device`, PaLM appendix B):
- Only matmuls count, 2 FLOPs per multiply-add. Biases, LayerNorm, GELU, softmax, residual adds, the Sinkhorn
  iterations (exp/logsumexp, O(K·B·Ls·Lt) elementwise work) and the optimizer update are left out; they are
  reported as time, not as FLOPs.
- Embedding tables are gathers: no FLOPs, and their parameters are not in N_ne. The BERT pooler is unused.
- The teacher's token embeddings are precomputed offline, so the teacher costs nothing per step.
- Training = forward + backward = 3 × forward (each weight matmul has one forward and two backward matmuls).
- Attention is bidirectional: QKᵀ and AV cost 2·L²·d each per layer in the forward pass, no causal halving.

Per train step (docs/performance.md#flops-per-train-step):

  F = B·Ls·(6·N_ne + 12·n_layer·Ls·d) + 6·B·Ls·Lt·d_e  [+ 6·B·Ls·d·d_e with a projection head]
  N_ne = n_layer·(4·d² + 2·d·d_ff)

The OT cost-matrix term keeps the 6× convention of the other terms. The teacher side is frozen, so a compiler
sees only 4·B·Ls·Lt·d_e (forward plus the gradient with respect to the student tokens). The difference is below
0.05 % of a BERT-base step, and keeping the documented formula makes our figures comparable with the hand-computed
table in docs/performance.md#bert-base-reference-table.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

# Dense (not 2:4-sparse) bf16 peaks per chip, TFLOP/s. Keys are lower-case fragments of
# `jax.devices()[0].device_kind` (see `device_peak_flops`). Sources: docs/performance.md#dense-bf16-peaks, except
# "h100 pcie" (NVIDIA H100 PCIe datasheet, 1513 sparse = 756 dense) and v6e (cloud.google.com/tpu/docs/v6e).
PEAK_TFLOPS: dict[str, float] = {
    "h100": 989.4,          # H100 SXM, device_kind "NVIDIA H100 80GB HBM3"
    "h100 pcie": 756.0,     # "NVIDIA H100 PCIe": must not fall back to the SXM figure
    "h200": 989.0,          # "NVIDIA H200": same GH100 compute as the H100 SXM
    "a100": 312.0,          # "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", ...
    "tpu v4": 275.0,        # "TPU v4"
    "tpu v5e": 197.0,
    "tpu v5 lite": 197.0,   # what a v5e reports
    "tpu v5p": 459.0,
    "tpu v5": 459.0,        # what a v5p reports
    "tpu v6e": 918.0,
    "tpu v6 lite": 918.0,   # what a v6e reports
}


def _non_embedding_params(hidden: int, num_layers: int, intermediate: int) -> int:
  # Q, K, V, O are d×d each; the FFN is d×d_ff and d_ff×d.
  return num_layers * (4 * hidden * hidden + 2 * hidden * intermediate)


def _embed_dim(hidden: int, projection_dim: int, embed_dim: int | None) -> int:
  """The width d_e of the vectors the OT cost matrix is computed on."""
  if projection_dim < 0:
    raise ValueError(f"projection_dim must be >= 0, got {projection_dim}")
  if projection_dim:
    if embed_dim is not None and embed_dim != projection_dim:
      raise ValueError(f"embed_dim={embed_dim} but the projection head outputs {projection_dim}: the cost matrix "
                       "is computed on the projected vectors, so they must match")
    return projection_dim
  return hidden if embed_dim is None else embed_dim


def _check_positive(**dims: int) -> None:
  for name, value in dims.items():
    if value <= 0:
      raise ValueError(f"{name} must be > 0, got {value}")


def train_step_flops(*, batch: int, student_len: int, teacher_len: int, hidden: int, num_layers: int,
                     intermediate: int, projection_dim: int = 0, embed_dim: int | None = None) -> float:
  """Model FLOPs of one OPTICAL train step (forward + backward), all devices together.

  Args:
    batch: global batch size B.
    student_len: padded student sequence length Ls (padding is counted: it is computed).
    teacher_len: padded teacher length Lt; 0 leaves the OT cost-matrix term out.
    hidden, num_layers, intermediate: encoder width d, depth n_layer and FFN width d_ff.
    projection_dim: output width of a ColBERT-style projection head, 0 if there is none.
    embed_dim: width d_e of the teacher vectors. Defaults to `projection_dim`, else `hidden`.
  """
  _check_positive(batch=batch, student_len=student_len, hidden=hidden, num_layers=num_layers,
                  intermediate=intermediate)
  d_e = _embed_dim(hidden, projection_dim, embed_dim)
  n_ne = _non_embedding_params(hidden, num_layers, intermediate)
  tokens = batch * student_len
  flops = tokens * (6 * n_ne + 12 * num_layers * student_len * hidden)
  flops += 6 * tokens * max(teacher_len, 0) * d_e
  if projection_dim:
    flops += 6 * tokens * hidden * projection_dim
  return float(flops)


def forward_flops(*, batch: int, student_len: int, hidden: int, num_layers: int, intermediate: int,
                  projection_dim: int = 0, teacher_len: int = 0, embed_dim: int | None = None) -> float:
  """Model FLOPs of one forward pass (inference: encoding B sequences of length `student_len`).

  `teacher_len` > 0 adds the forward cost matrix S·Tᵀ (e.g. an eval loss); 0 is plain encoding.
  """
  _check_positive(batch=batch, student_len=student_len, hidden=hidden, num_layers=num_layers,
                  intermediate=intermediate)
  d_e = _embed_dim(hidden, projection_dim, embed_dim)
  n_ne = _non_embedding_params(hidden, num_layers, intermediate)
  tokens = batch * student_len
  flops = tokens * (2 * n_ne + 4 * num_layers * student_len * hidden)
  flops += 2 * tokens * max(teacher_len, 0) * d_e
  if projection_dim:
    flops += 2 * tokens * hidden * projection_dim
  return float(flops)


def device_peak_flops(device) -> float | None:
  """Dense bf16 peak FLOP/s of one chip, or None if unknown (e.g. "cpu").

  `device` is a `jax.Device` or its `device_kind` string.

  TPUs report exact strings ("TPU v4", "TPU v5 lite", "TPU v5", "TPU v6 lite"), so they are matched exactly:
  "TPU v4 lite" (the v4i inference chip) must not pick up the v4 figure. GPU names carry memory and form-factor
  suffixes ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"), so they are matched by the longest table key
  contained in the name.
  """
  kind = " ".join(str(getattr(device, "device_kind", device)).lower().split())
  if kind.startswith("tpu"):
    peak = PEAK_TFLOPS.get(kind)
    return None if peak is None else peak * 1e12
  matches = [key for key in PEAK_TFLOPS if not key.startswith("tpu") and key in kind]
  if not matches:
    return None
  return PEAK_TFLOPS[max(matches, key=len)] * 1e12


def measure_cpu_gemm_peak(n: int = 1024, dtype=np.float32, repeats: int = 5) -> float:
  """FLOP/s of a jitted n×n×n matmul on the default JAX device (median of `repeats` timed calls).

  This is the MFU denominator on CPU, where no datasheet peak applies. XLA:CPU uses all host cores for one matmul
  even when the host is split into several simulated devices, so it is a whole-host figure: use it with
  n_devices=1. Measure it in the same run as the step time, since shared machines drift.
  """
  import jax  # deferred: the formula functions above must stay importable without initialising a backend
  import jax.numpy as jnp

  if n <= 0 or repeats <= 0:
    raise ValueError(f"n and repeats must be > 0, got n={n}, repeats={repeats}")
  keys = jax.random.split(jax.random.key(0))
  x = jax.random.normal(keys[0], (n, n), dtype)
  y = jax.random.normal(keys[1], (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(x, y).block_until_ready()  # compile and warm the caches outside the timed calls
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x, y).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * n ** 3 / statistics.median(times)


def mfu(flops_per_step: float, step_time_s: float, n_devices: int, peak_per_device: float) -> float:
  """Model FLOPs utilisation: achieved FLOP/s over the summed dense peak of the devices used."""
  if step_time_s <= 0 or n_devices <= 0 or peak_per_device <= 0:
    raise ValueError(f"step_time_s, n_devices and peak_per_device must be > 0, got {step_time_s}, {n_devices}, "
                     f"{peak_per_device}")
  return flops_per_step / (step_time_s * n_devices * peak_per_device)
