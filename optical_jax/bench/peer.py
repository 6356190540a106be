"""The PyTorch + POT peer of `optical-jax bench --compare` (bench/torch_reference.py), at optical_jax's shapes.

Imports torch and POT (the `compare` extra): runner.py imports this module only when `--compare` is given.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import ml_collections
import numpy as np
import ot
import torch
import transformers

from optical_jax.bench import timing
from optical_jax.bench import torch_reference as ref


def reference_config(config: ml_collections.ConfigDict, encoder_config, min_real_frac: float):
  """The reference's config at the step's shapes, and the list of ways it is not the identical computation."""
  s = config.student
  cfg = ref.ReferenceConfig(
      batch=config.train.batch_size, student_len=config.data.max_len_student,
      teacher_len=config.data.max_len_teacher, hidden=encoder_config.hidden_size,
      layers=encoder_config.num_layers, heads=encoder_config.num_heads, ffn=encoder_config.intermediate_size,
      vocab=encoder_config.vocab_size, model_type=encoder_config.model_type,
      projection_dim=encoder_config.projection_dim, teacher_dim=int(config.teacher.dim),
      epsilon=float(config.ot.epsilon), iterations=int(config.ot.iterations), lr=float(config.train.lr),
      weight_decay=float(config.train.weight_decay), clip_norm=float(config.train.clip_norm),
      freeze_word_embeddings=s.freeze_word_embeddings, min_len_frac=min_real_frac,
      seed=int(config.seed))
  differences = []
  checks = [
      (config.ot.grad == "envelope", f"ot.grad={config.ot.grad!r} (the reference uses the envelope gradient)"),
      (not config.ot.relative_epsilon, "relative epsilon (the reference uses an absolute epsilon)"),
      (config.ot.marginals == "uniform", "IDF marginals (the reference uses uniform ones)"),
      (config.ot.tokens == "all", "content-token OT masks (the reference aligns all real tokens)"),
      (s.dtype == "float32", f"student.dtype={s.dtype} (the reference runs float32)"),
      (config.ot.tau_student == 1.0 and config.ot.tau_teacher == 1.0,
       "unbalanced OT (the reference solves the balanced problem)"),
      (not encoder_config.normalize, "L2-normalised head output (the reference has none)"),
      (not config.loss.mse_weight, "an MSE term (the reference has OT only)"),
      (not config.loss.rank_weight, "a ranking term (the reference has OT only)"),
      (not config.loss.english_mse_weight, "an English-side MSE term (the reference has OT only)"),
      (not config.loss.english_weight,
       "an English-side term (the reference has the low-resource OT term only)"),
  ]
  for same, what in checks:
    if not same:
      differences.append(what)
  return cfg, differences


class TorchPeer:
  """One reference model; its step and the POT losses can run at several torch thread counts."""

  def __init__(self, cfg: ref.ReferenceConfig, threads: tuple[int, ...]):
    self.cfg = cfg
    self.default_threads = torch.get_num_threads()
    self.threads = tuple(dict.fromkeys(int(t) or self.default_threads for t in threads))
    self.step = ref.make_reference_step(cfg)
    self.batch = ref.synthetic_batch(cfg)
    self.real_tokens_per_batch = float(self.batch["attention_mask"].sum())
    self.num_parameters = int(sum(p.numel() for p in self.step.model.parameters()))
    self.losses: list[float] = []
    self.cpu_s: dict[int, list[float]] = {t: [] for t in self.threads}
    self.page_faults: dict[int, list[float]] = {t: [] for t in self.threads}
    self.ot_losses: dict[str, float] = {}
    self.ot_fwd: dict[str, list[float]] = {}

  def label(self, threads: int) -> str:
    return f"{threads}{' (default)' if threads == self.default_threads else ''}"

  def run_step(self, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    try:
      cpu_start, faults_start = timing.process_usage()
      start = time.perf_counter()
      self.losses.append(self.step(self.batch))
      duration = time.perf_counter() - start
      cpu_end, faults_end = timing.process_usage()
      self.cpu_s[threads].append(cpu_end - cpu_start)
      self.page_faults[threads].append(faults_end - faults_start)
      return [duration]
    finally:
      torch.set_num_threads(self.default_threads)

  def ot_inputs(self) -> dict[str, np.ndarray]:
    """The OT-loss inputs both sides time: the reference's masks and teacher tokens, random student tokens."""
    g = torch.Generator().manual_seed(self.cfg.seed + 1)
    student = torch.randn(self.cfg.batch, self.cfg.student_len, self.cfg.output_dim, generator=g)
    return {"student_tokens": student.numpy(), "student_mask": self.batch["attention_mask"].numpy().astype(np.int32),
            "teacher_tokens": self.batch["teacher_tokens"].numpy(),
            "teacher_mask": self.batch["teacher_mask"].numpy().astype(np.int32)}

  def run_ot(self, variant: str, inputs: dict[str, np.ndarray], threads: int | None = None, n: int = 1,
             warmup: int = 0) -> list[float]:
    """`warmup` untimed, then n timed forward + backward passes of a POT loss on `inputs`, back to back; returns
    the n durations and keeps their forward parts apart."""
    threads = threads or self.default_threads
    torch.set_num_threads(threads)
    try:
      masks = {k: torch.from_numpy(inputs[k]).long() for k in ("student_mask", "teacher_mask")}
      forwards, durations, loss = ref.ot_loss_timings(
          variant, torch.from_numpy(inputs["student_tokens"]), masks["student_mask"],
          torch.from_numpy(inputs["teacher_tokens"]), masks["teacher_mask"], epsilon=self.cfg.epsilon,
          iterations=self.cfg.iterations, calls=n, warmup=warmup)
    finally:
      torch.set_num_threads(self.default_threads)
    self.ot_losses[variant] = loss  # same inputs every call: the value does not change
    self.ot_fwd.setdefault(f"{variant}@{threads}", []).extend(forwards)
    return durations

  def describe(self) -> dict[str, Any]:
    return {"peer": "PyTorch eager (transformers) + POT", "config": dataclasses.asdict(self.cfg),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "pot": ot.__version__},
            "torch_default_threads": self.default_threads, "num_parameters": self.num_parameters,
            "real_tokens_per_batch": self.real_tokens_per_batch}
