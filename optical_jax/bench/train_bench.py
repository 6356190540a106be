"""The optical_jax side of the benchmark: the real sharded train step on batches generated on the devices.

`TrainStepBench` builds the student, the optimizer state and one jitted train step per *variant* (a config that
differs only in its loss, e.g. the OT loss swapped for a same-shape MSE loss), all sharing one donated state, and
times blocks of steps with metrics read one step late. `OtLossBench` times the OT loss alone on fixed inputs.

Multi-process (several hosts, `--distributed`): every array here is global, laid out on the whole mesh; each process
computes or holds only its own devices' shards (jit with out_shardings, `make_array_from_callback`), from the same
seed, so the processes agree without exchanging data. Every process runs the same steps in the same order, and a
step's duration ends when its replicated loss is ready: the time of the global step.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from optical_jax import losses, ot_options
from optical_jax import sharding as sharding_lib
from optical_jax import student as student_lib
from optical_jax import train_step as train_step_lib
from optical_jax.bench import timing
from optical_jax.data import batch_spec as batch_spec_lib
from optical_jax.errors import UserError


def mse_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The same step with the OT loss replaced by the sentence-level MSE loss of the same tensors (None: no OT)."""
  if not config.loss.ot_weight:
    return None
  out = copy.deepcopy(config)
  out.loss.ot_weight, out.loss.mse_weight, out.loss.english_weight = 0.0, 1.0, 0.0
  return out


def make_batches(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, pad_id: int, vocab_size: int,
                 teacher_dim: int, count: int, min_real_frac: float) -> list[dict[str, jax.Array]]:
  """`count` synthetic batches generated directly on the devices, already laid out with the data sharding.

  Real lengths are uniform in [ceil(min_real_frac * L), L] with prefix masks on both sides; ids are uniform over
  the vocabulary; teacher tokens are random normal in the store's dtype. Same shapes in every batch.
  """
  b, ls, lt = config.train.batch_size, config.data.max_len_student, config.data.max_len_teacher
  spec = batch_spec_lib.batch_spec(config)
  teacher_dtype = jnp.dtype(spec["teacher_tokens"].dtype)
  shardings = {k: sharding_lib.data_sharding(mesh, field.rank) for k, field in spec.items()}
  low_id = pad_id + 1 if pad_id + 1 < vocab_size else 0

  def prefix_mask(key, length):
    lengths = jax.random.randint(key, (b,), math.ceil(min_real_frac * length), length + 1)
    return jnp.arange(length)[None, :] < lengths[:, None], lengths

  def generate(key):
    keys = jax.random.split(key, 6)
    student_mask, student_len = prefix_mask(keys[0], ls)
    teacher_mask, teacher_len = prefix_mask(keys[1], lt)
    ids = jnp.where(student_mask, jax.random.randint(keys[2], (b, ls), low_id, vocab_size), pad_id)
    teacher = jax.random.normal(keys[3], (b, lt, teacher_dim)) * teacher_mask[..., None]
    batch = {"student_ids": ids.astype(jnp.int32), "student_mask": student_mask.astype(jnp.int32),
             "teacher_tokens": teacher.astype(teacher_dtype), "teacher_mask": teacher_mask.astype(jnp.int32)}
    if "student_ot_mask" in spec:  # content tokens: the first and last real token are special tokens
      inner = lambda m, n: m & (jnp.arange(m.shape[1])[None] > 0) & (jnp.arange(m.shape[1])[None] < n[:, None] - 1)
      batch["student_ot_mask"] = inner(student_mask, student_len).astype(jnp.int32)
      batch["teacher_ot_mask"] = inner(teacher_mask, teacher_len).astype(jnp.int32)
    if "negative_tokens" in spec:
      # Mined negatives are other examples' stored teacher tokens: the same shapes, here the batch's own repeated.
      hard = config.loss.rank_hard_negatives
      batch["example_index"] = jnp.arange(b, dtype=jnp.int32)
      batch["negative_index"] = jnp.arange(b, b * (hard + 1), dtype=jnp.int32)
      for key in ("tokens", "mask", "ot_mask"):
        if f"negative_{key}" in spec:
          batch[f"negative_{key}"] = jnp.repeat(batch[f"teacher_{key}"], hard, axis=0)
    if "student_weights" in spec:
      batch["student_weights"] = jax.random.uniform(keys[4], (b, ls), minval=0.5, maxval=8.0) * student_mask
      batch["teacher_weights"] = jax.random.uniform(keys[5], (b, lt), minval=0.5, maxval=8.0) * teacher_mask
    return batch

  generate = jax.jit(generate, out_shardings=shardings)
  root = jax.random.key(config.seed + 1)
  return [generate(jax.random.fold_in(root, i)) for i in range(count)]


def to_global(arrays: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host arrays that every process holds in full, as data-sharded global arrays (each process fills its shards)."""
  return {k: jax.make_array_from_callback(v.shape, sharding_lib.data_sharding(mesh, v.ndim), lambda i, v=v: v[i])
          for k, v in arrays.items()}


def real_tokens(batches: list[dict[str, jax.Array]], mesh: jax.sharding.Mesh) -> float:
  """Mean number of real student tokens per batch (a replicated count: readable on every process)."""
  count = jax.jit(lambda m: jnp.sum(m, dtype=jnp.int32), out_shardings=sharding_lib.replicated(mesh))
  return float(np.mean([int(count(b["student_mask"])) for b in batches]))


class TrainStepBench:
  """The train step of each variant config, jitted with the state/batch shardings, sharing one donated state."""

  def __init__(self, variants: dict[str, ml_collections.ConfigDict], mesh: jax.sharding.Mesh,
               settings: ml_collections.ConfigDict):
    base = next(iter(variants.values()))
    self.config, self.mesh = base, mesh
    teacher_dim = base.teacher.dim
    if teacher_dim < 1:
      raise UserError("config: teacher.dim must be set for `optical-jax bench` (the teacher token width)")
    student = student_lib.build_student(base)
    student_lib.check_output_dim(student, teacher_dim)
    self.model, init_params = student.module, student.pretrained_params
    self.encoder_config = self.model.config
    tx = train_step_lib.make_optimizer(base)
    self.state, state_shardings = train_step_lib.create_train_state(
        self.model, tx, base, mesh, jax.random.key(base.seed), init_params=init_params)
    self.num_parameters = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.batches = make_batches(base, mesh, pad_id=self.encoder_config.pad_token_id,
                                vocab_size=self.encoder_config.vocab_size, teacher_dim=teacher_dim,
                                count=settings.num_batches, min_real_frac=settings.min_real_frac)
    self.real_tokens_per_batch = real_tokens(self.batches, mesh)
    self.steps = {}
    for name, variant in variants.items():  # variants differ in their loss only: one optimizer, one state layout
      self.steps[name] = train_step_lib.jit_train_step(self.model, tx, variant, mesh, state_shardings,
                                                       batch_spec_lib.batch_spec(variant))
    self.losses: dict[str, list[float]] = {name: [] for name in variants}
    self.cpu_s: dict[str, list[float]] = {name: [] for name in variants}          # per step, mean over a block
    self.page_faults: dict[str, list[float]] = {name: [] for name in variants}
    self._cursor = 0

  def compile(self, watch: timing.CompileWatch) -> dict[str, dict[str, Any]]:
    """AOT-lowers and compiles every variant (the jit cache keeps the executables), timing each part."""
    out = {}
    with sharding_lib.mesh_context(self.mesh):
      for name, step in self.steps.items():
        with watch.measure() as m:
          compiled = step.lower(self.state, self.batches[0]).compile()
        out[name] = {"trace_lower_s": m["trace_s"] + m["lower_s"], "xla_compile_s": m["compile_s"],
                     "wall_s": m["wall_s"], "xla_flops": timing.xla_flops(compiled),
                     "compiled_memory": timing.compiled_memory(compiled)}
    return out

  def cache_sizes(self) -> dict[str, int]:
    return {name: step._cache_size() for name, step in self.steps.items()}  # pylint: disable=protected-access

  def run(self, variant: str, k: int) -> list[float]:
    """k steps of `variant`, dispatched back to back; returns k per-step durations.

    Step i's metrics are read only after step i+1 is queued (one step late), so the host never stalls the device;
    a step's duration is the time between the completions of consecutive steps.
    """
    step = self.steps[variant]
    durations, pending = [], None
    cpu_start, faults_start = timing.process_usage()
    last = time.perf_counter()
    with sharding_lib.mesh_context(self.mesh):
      for _ in range(k):
        batch = self.batches[self._cursor % len(self.batches)]
        self._cursor += 1
        self.state, metrics = step(self.state, batch)
        if pending is not None:
          self._read(variant, pending)
          now = time.perf_counter()
          durations.append(now - last)
          last = now
        pending = metrics
      self._read(variant, pending)
      durations.append(time.perf_counter() - last)
    cpu_end, faults_end = timing.process_usage()
    self.cpu_s[variant].append((cpu_end - cpu_start) / k)
    self.page_faults[variant].append((faults_end - faults_start) / k)
    return durations

  def _read(self, variant: str, metrics: dict[str, jax.Array]) -> None:
    # One execution's outputs complete together: ready metrics mean the updated state is ready too.
    jax.block_until_ready(metrics)
    self.losses[variant].append(float(metrics["loss"]))


def ot_inputs(config: ml_collections.ConfigDict, dim: int, min_real_frac: float, seed: int = 0
              ) -> dict[str, np.ndarray]:
  """Random OT-loss inputs at the step's shapes: student/teacher tokens (float32) and prefix masks."""
  rng = np.random.default_rng(seed)
  b, ls, lt = config.train.batch_size, config.data.max_len_student, config.data.max_len_teacher

  def mask(length):
    lengths = rng.integers(math.ceil(min_real_frac * length), length + 1, b)
    return (np.arange(length)[None] < lengths[:, None]).astype(np.int32)

  student_mask, teacher_mask = mask(ls), mask(lt)
  return {"student_tokens": rng.normal(size=(b, ls, dim)).astype(np.float32), "student_mask": student_mask,
          "teacher_tokens": (rng.normal(size=(b, lt, dim)) * teacher_mask[..., None]).astype(np.float32),
          "teacher_mask": teacher_mask}


class OtLossBench:
  """optical_jax's OT alignment loss alone (forward, forward + backward), data-sharded like in the step."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, inputs: dict[str, np.ndarray]):
    ot = config.ot

    def loss(student, student_mask, teacher, teacher_mask):
      return losses.ot_alignment_loss(student, student_mask, teacher, teacher_mask, **ot_options.from_config(ot))[0]

    order = ("student_tokens", "student_mask", "teacher_tokens", "teacher_mask")
    self.args = tuple(jax.device_put(inputs[k], sharding_lib.data_sharding(mesh, inputs[k].ndim)) for k in order)
    self.fwd = jax.jit(loss)
    self.fwd_bwd = jax.jit(jax.value_and_grad(loss))
    self.mesh = mesh

  def compile(self, watch: timing.CompileWatch) -> dict[str, float]:
    with watch.measure() as m:
      self.fwd.lower(*self.args).compile()
      self.fwd_bwd.lower(*self.args).compile()
    return {"xla_compile_s": m["compile_s"], "wall_s": m["wall_s"]}

  def loss_value(self) -> float:
    return float(self.fwd(*self.args))

  def time_fwd(self, n: int = 1, warmup: int = 0) -> list[float]:
    return timing.timed_calls(lambda: self.fwd(*self.args), n, warmup)

  def time_fwd_bwd(self, n: int = 1, warmup: int = 0) -> list[float]:
    return timing.timed_calls(lambda: self.fwd_bwd(*self.args), n, warmup)

  def cache_sizes(self) -> dict[str, int]:
    return {"ot_fwd": self.fwd._cache_size(), "ot_fwd_bwd": self.fwd_bwd._cache_size()}  # pylint: disable=protected-access
