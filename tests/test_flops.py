"""optical_jax.flops against the hand-computed table in docs/performance.md and against XLA's own FLOP count."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax import flops

BERT_BASE = dict(hidden=768, num_layers=12, intermediate=3072)


# docs/performance.md#bert-base-reference-table: (B, Ls) -> train TFLOP/step at Lt=128, d_e=768 (the table prints
# the encoder term; the OT cost-matrix term is its separate "0.12 %" column).
@pytest.mark.parametrize("batch,student_len,tflop,digits", [
    (64, 32, 1.051, 3), (256, 32, 4.20, 2), (32, 128, 2.15, 2), (32, 512, 9.28, 2)])
def test_bert_base_matches_peers_table(batch, student_len, tflop, digits):
  encoder = flops.train_step_flops(batch=batch, student_len=student_len, teacher_len=0, **BERT_BASE)
  assert round(encoder / 1e12, digits) == pytest.approx(tflop)
  full = flops.train_step_flops(batch=batch, student_len=student_len, teacher_len=128, embed_dim=768, **BERT_BASE)
  ot_share = (full - encoder) / full
  assert ot_share == pytest.approx(0.0012 if student_len < 512 else 0.001, abs=2e-4)
  assert full / 1e12 == pytest.approx(tflop, rel=3e-3)


def test_bert_base_per_token_terms():
  # docs/performance.md#bert-base-reference-table: N_ne = 84.9 M, 509.6 MFLOP of weights per token, attention
  # 3.5 MFLOP per token at L=32.
  one_token = dict(batch=1, teacher_len=0, **BERT_BASE)
  weights_and_attn = flops.train_step_flops(student_len=32, **one_token) / 32
  assert 6 * 84_934_656 == pytest.approx(509.6e6, rel=1e-4)
  assert weights_and_attn - 6 * 84_934_656 == pytest.approx(3.5e6, rel=0.02)


def test_projection_and_embed_dim():
  dims = dict(batch=2, student_len=8, teacher_len=16, hidden=32, num_layers=1, intermediate=64)
  base = flops.train_step_flops(**dims)
  with_proj = flops.train_step_flops(projection_dim=8, **dims)
  # The head adds 6·B·Ls·d·d_e and the cost matrix shrinks from d to d_e.
  assert with_proj - base == 6 * 2 * 8 * 32 * 8 + 6 * 2 * 8 * 16 * (8 - 32)
  assert flops.train_step_flops(embed_dim=8, projection_dim=8, **dims) == with_proj
  with pytest.raises(ValueError, match="embed_dim"):
    flops.train_step_flops(embed_dim=16, projection_dim=8, **dims)
  with pytest.raises(ValueError, match="batch"):
    flops.train_step_flops(**{**dims, "batch": 0})
  fwd = flops.forward_flops(batch=2, student_len=8, hidden=32, num_layers=1, intermediate=64)
  assert flops.train_step_flops(**{**dims, "teacher_len": 0}) == 3 * fwd


# --- independent count: XLA's cost analysis of a jitted encoder-shaped stack ---------------------------------------


def _init(key, hidden, intermediate, num_layers, projection_dim):
  shapes = [("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)), ("o", (hidden, hidden)),
            ("w1", (hidden, intermediate)), ("w2", (intermediate, hidden))]
  keys = iter(jax.random.split(key, len(shapes) * num_layers + 1))
  layers = [{name: 0.05 * jax.random.normal(next(keys), shape) for name, shape in shapes} for _ in range(num_layers)]
  params = {"layers": layers}
  if projection_dim:
    params["proj"] = 0.05 * jax.random.normal(next(keys), (hidden, projection_dim))
  return params


def _encoder(params, x, num_heads, full):
  """Post-residual transformer stack. full=False keeps only matmuls (+ReLU, residual adds); full=True adds the
  LayerNorm, scaled softmax and GELU a BERT layer has, which the FLOP convention leaves out."""
  batch, length, hidden = x.shape
  split = lambda y: y.reshape(batch, length, num_heads, hidden // num_heads)
  for lp in params["layers"]:
    h = x
    if full:
      h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-12)
    scores = jnp.einsum("bqhd,bkhd->bhqk", split(h @ lp["q"]), split(h @ lp["k"]))
    if full:
      scores = jax.nn.softmax(scores / math.sqrt(hidden // num_heads), axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", scores, split(h @ lp["v"])).reshape(batch, length, hidden)
    x = x + attended @ lp["o"]
    ffn = x @ lp["w1"]
    x = x + (jax.nn.gelu(ffn) if full else jax.nn.relu(ffn)) @ lp["w2"]
  if "proj" in params:
    x = x @ params["proj"]
  return x


def _loss(params, x, teacher, num_heads, full):
  cost = 1.0 - jnp.einsum("bid,bjd->bij", _encoder(params, x, num_heads, full), teacher)
  return jnp.sum(cost * cost)  # nonlinear, so XLA cannot skip the forward pass


def _xla_flops(fn, *args):
  return jax.jit(fn, static_argnums=(len(args) - 2, len(args) - 1)).lower(*args).compile().cost_analysis()["flops"]


# The last shape has attention at ~24 % of the FLOPs, so a wrong attention factor (e.g. a causal /2) fails.
SHAPES = [  # batch, student_len, teacher_len, hidden, intermediate, layers, heads, projection_dim
    (4, 32, 16, 128, 512, 2, 2, 0),
    (2, 128, 48, 64, 256, 2, 4, 32),
]


@pytest.mark.parametrize("full", [False, True], ids=["matmul_only", "bert_layer"])
@pytest.mark.parametrize("shape", SHAPES)
def test_formula_matches_xla_cost_analysis(shape, full):
  batch, student_len, teacher_len, hidden, intermediate, num_layers, num_heads, projection_dim = shape
  d_e = projection_dim or hidden
  params = _init(jax.random.key(0), hidden, intermediate, num_layers, projection_dim)
  x = jnp.ones((batch, student_len, hidden))  # stands in for the (trainable) embedding output
  teacher = jnp.ones((batch, teacher_len, d_e))
  dims = dict(batch=batch, student_len=student_len, hidden=hidden, num_layers=num_layers,
              intermediate=intermediate, projection_dim=projection_dim)

  train_xla = _xla_flops(jax.grad(_loss, argnums=(0, 1)), params, x, teacher, num_heads, full)
  # The teacher is a constant, so XLA computes 4·B·Ls·Lt·d_e for the cost matrix, not the formula's 6 (module doc).
  train_model = flops.train_step_flops(teacher_len=teacher_len, **dims) - 2 * batch * student_len * teacher_len * d_e
  fwd_xla = _xla_flops(_encoder, params, x, num_heads, full)
  fwd_model = flops.forward_flops(**dims)

  # XLA also counts elementwise ops. Matmul-only: ReLU and residual adds are ~0.1-0.4 % of the matmuls here.
  # BERT layer: softmax over heads·L² scores, GELU over d_ff and LayerNorm add 1-5 % at these small widths (less at
  # d=768), and never make the count lower than the matmul count.
  upper = 1.01 if not full else 1.08
  for xla, model in ((train_xla, train_model), (fwd_xla, fwd_model)):
    assert model <= xla <= upper * model, (xla / model, shape, full)


# --- peaks, MFU, measured CPU peak ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5", 459.0), ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0), ("cpu", None), ("TPU v4 lite", None), ("NVIDIA GeForce RTX 4090", None)])
def test_device_peak_flops(kind, tflops):
  peak = flops.device_peak_flops(kind)
  assert peak == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_device_peak_flops_accepts_a_device():
  assert flops.device_peak_flops(jax.devices()[0]) is None  # the test machine is a CPU


def test_mfu():
  # docs/performance.md#bert-base-reference-table: 64×32 at 40 % MFU on one H100 takes about 2.7 ms.
  step = flops.train_step_flops(batch=64, student_len=32, teacher_len=128, **BERT_BASE)
  assert flops.mfu(step, 2.66e-3, 1, 989.4e12) == pytest.approx(0.40, abs=0.005)
  assert flops.mfu(step, 2.66e-3 / 4, 4, 989.4e12) == pytest.approx(0.40, abs=0.005)
  with pytest.raises(ValueError):
    flops.mfu(step, 0.0, 1, 1e12)


def test_measure_cpu_gemm_peak():
  peak = flops.measure_cpu_gemm_peak(n=128, dtype=np.float32, repeats=3)
  assert math.isfinite(peak) and peak > 0
