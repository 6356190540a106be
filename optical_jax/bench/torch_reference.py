"""The OPTICAL train step as a PyTorch user would write it: the side-by-side peer of `optical-jax bench --compare`.

Student: transformers' PyTorch `BertModel` / `XLMRobertaModel` built from a config (random init, no download, no
pooler, dropout 0 like optical_jax's encoder), an optional linear projection head, AdamW with global-norm clipping
and no weight decay on biases/LayerNorm (optical_jax.train_step's recipe). Loss: the mean over the batch of
<P, C>, C = 1 - cos(student token, teacher token), P the entropic OT plan with uniform marginals over real tokens,
a fixed number of log-domain Sinkhorn iterations and the envelope gradient (P is a constant, dLoss/dC = P).

Two ways of getting P, both from POT 0.9.7:
- "pot_batched": `ot.batch.solve_batch(..., method="log_sinkhorn")` on the padded [B, Ls, Lt] costs, with
  zero marginal weight and a prohibitive cost on padding, run under `torch.no_grad()`.
- "pot_loop": the per-pair loop users commonly write, `ot.sinkhorn(a, b, C_i, reg, method="sinkhorn_log")`
  on the real tokens of one example at a time.
`stopThr`/`tol` = 0 so both run exactly `iterations` iterations (POT still computes its marginal error every 10
iterations; that is part of the peer). The two update in opposite orders (POT's batch solver updates the row
potential first, `sinkhorn_log` the column potential), so before convergence their plans differ slightly.

Inputs are synthetic and seeded: random token ids with random real lengths, random teacher vectors. Nothing is
read from disk or the network. torch and POT are the `compare` extra (pip install 'optical_jax[compare]'): the
package imports this module only for `--compare` (bench/peer.py).

  python -m optical_jax.bench.torch_reference --help
  python -m optical_jax.bench.torch_reference --batch 32 --student-len 32 --teacher-len 128 --steps 3 --warmup 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from typing import Callable

import numpy as np
import ot
import torch
import transformers

from optical_jax import flops
from optical_jax.errors import UserError

OT_VARIANTS = ("pot_batched", "pot_loop")
MODEL_TYPES = ("bert", "xlm-roberta")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  """Shapes and hyper-parameters of the reference step. Defaults: docs/performance.md#cpu-comparison-point
  (mBERT-base student, B=32, Ls=32, Lt=128, eps=0.05, K=50)."""
  batch: int = 32
  student_len: int = 32
  teacher_len: int = 128
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  ffn: int = 3072
  vocab: int = 119_547
  model_type: str = "bert"
  projection_dim: int = 0     # 0 = the cost matrix is computed on the last hidden states
  teacher_dim: int = 0        # 0 = the student's output width; anything else must equal it
  epsilon: float = 0.05
  iterations: int = 50
  ot_variant: str = "pot_batched"
  lr: float = 1e-4
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  freeze_word_embeddings: bool = False  # as optical_jax's student.freeze_word_embeddings: no grad, no AdamW state
  min_len_frac: float = 0.5   # real lengths are drawn uniformly from [ceil(frac * L), L]
  seed: int = 0

  def __post_init__(self):
    for name in ("batch", "student_len", "teacher_len", "hidden", "layers", "heads", "ffn", "vocab", "iterations"):
      if getattr(self, name) <= 0:
        raise UserError(f"reference config: {name}={getattr(self, name)} must be > 0")
    if self.hidden % self.heads:
      raise UserError(f"reference config: hidden={self.hidden} is not a multiple of heads={self.heads}")
    if self.model_type not in MODEL_TYPES:
      raise UserError(f"reference config: model_type={self.model_type!r} must be one of {MODEL_TYPES}")
    if self.ot_variant not in OT_VARIANTS:
      raise UserError(f"reference config: ot_variant={self.ot_variant!r} must be one of {OT_VARIANTS}")
    if self.teacher_dim and self.teacher_dim != self.output_dim:
      raise UserError(f"reference config: teacher_dim={self.teacher_dim} differs from the student's output width "
                      f"{self.output_dim}; set projection_dim={self.teacher_dim}")
    if not 0.0 < self.min_len_frac <= 1.0 or self.epsilon <= 0:
      raise UserError(f"reference config: need 0 < min_len_frac <= 1 and epsilon > 0, got {self.min_len_frac}, "
                      f"{self.epsilon}")

  @property
  def output_dim(self) -> int:
    return self.projection_dim or self.hidden


def from_optical_config(config, **overrides) -> ReferenceConfig:
  """The reference shapes of an optical_jax ml_collections config (random-init student dims, data lengths, ot.*)."""
  s = config.student
  fields = dict(
      batch=config.train.batch_size, student_len=config.data.max_len_student,
      teacher_len=config.data.max_len_teacher, hidden=s.hidden_size, layers=s.num_layers, heads=s.num_heads,
      ffn=s.intermediate_size, vocab=s.vocab_size, model_type=s.model_type,
      projection_dim=s.projection_dim, epsilon=config.ot.epsilon, iterations=config.ot.iterations,
      lr=config.train.lr, weight_decay=config.train.weight_decay, clip_norm=config.train.clip_norm,
      freeze_word_embeddings=s.freeze_word_embeddings, seed=config.seed)
  fields.update(overrides)
  return ReferenceConfig(**fields)


# --- OT losses ------------------------------------------------------------------------------------------------------


def cosine_cost(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
  """C = 1 - cos on [..., Ls, D] x [..., Lt, D] -> [..., Ls, Lt]."""
  s = torch.nn.functional.normalize(student_tokens, dim=-1, eps=1e-6)
  t = torch.nn.functional.normalize(teacher_tokens, dim=-1, eps=1e-6)
  return 1.0 - s @ t.transpose(-1, -2)


def uniform_marginal(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
  real = (mask != 0).to(dtype)
  return real / real.sum(-1, keepdim=True).clamp_min(1.0)


def ot_loss_batched(student_tokens: torch.Tensor, student_mask: torch.Tensor, teacher_tokens: torch.Tensor,
                    teacher_mask: torch.Tensor, *, epsilon: float, iterations: int) -> torch.Tensor:
  """Mean over the batch of <P, C> with POT's batched log-domain Sinkhorn on padded tensors (envelope gradient).

  Args: student_tokens [B, Ls, D], student_mask [B, Ls], teacher_tokens [B, Lt, D], teacher_mask [B, Lt];
  nonzero mask entries are real tokens. Returns a scalar tensor that backpropagates into both token tensors.
  """
  cost = cosine_cost(student_tokens, teacher_tokens)
  a = uniform_marginal(student_mask, cost.dtype)
  b = uniform_marginal(teacher_mask, cost.dtype)
  with torch.no_grad():
    # Zero weights make the padded potentials -inf after their first update, but the solver starts every potential
    # at 0, so padded columns would leak into the first row update and the padded problem would differ from the
    # unpadded one until convergence. A pad cost of 1e5·eps above any cosine cost (<= 2) makes exp(-C/eps) of
    # every padded pair exactly 0.
    pairs = (student_mask != 0)[:, :, None] & (teacher_mask != 0)[:, None, :]
    solver_cost = cost.detach().masked_fill(~pairs, 2.0 + 1e5 * epsilon)
    plan = ot.batch.solve_batch(solver_cost, epsilon, a, b, max_iter=iterations, tol=0.0,
                                method="log_sinkhorn", grad="detach").plan
  return (plan * cost).sum(dim=(1, 2)).mean()


def ot_loss_loop(student_tokens: torch.Tensor, student_mask: torch.Tensor, teacher_tokens: torch.Tensor,
                 teacher_mask: torch.Tensor, *, epsilon: float, iterations: int) -> torch.Tensor:
  """Same loss, one `ot.sinkhorn(method="sinkhorn_log")` call per example on its real tokens only."""
  per_example = []
  for i in range(student_tokens.shape[0]):
    s = student_tokens[i][student_mask[i] != 0]
    t = teacher_tokens[i][teacher_mask[i] != 0]
    cost = cosine_cost(s, t)
    a = torch.full((s.shape[0],), 1.0 / s.shape[0], dtype=cost.dtype)
    b = torch.full((t.shape[0],), 1.0 / t.shape[0], dtype=cost.dtype)
    plan = ot.sinkhorn(a, b, cost.detach(), epsilon, method="sinkhorn_log", numItermax=iterations, stopThr=0.0,
                       warn=False)
    per_example.append((plan * cost).sum())
  return torch.stack(per_example).mean()


OT_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"pot_batched": ot_loss_batched, "pot_loop": ot_loss_loop}


# --- student, data, train step --------------------------------------------------------------------------------------


def _pad_id(cfg: ReferenceConfig) -> int:
  return 1 if cfg.model_type == "xlm-roberta" else 0


def build_student(cfg: ReferenceConfig) -> torch.nn.Module:
  """Random-init HF PyTorch encoder (+ projection) returning token vectors [B, Ls, output_dim]."""
  common = dict(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=_pad_id(cfg))
  if cfg.model_type == "xlm-roberta":
    # XLM-R positions start at pad_token_id + 1.
    encoder = transformers.XLMRobertaModel(
        transformers.XLMRobertaConfig(max_position_embeddings=cfg.student_len + 2, **common), add_pooling_layer=False)
  else:
    encoder = transformers.BertModel(
        transformers.BertConfig(max_position_embeddings=cfg.student_len, **common), add_pooling_layer=False)
  return _Student(encoder, cfg.hidden, cfg.projection_dim)


class _Student(torch.nn.Module):

  def __init__(self, encoder: torch.nn.Module, hidden: int, projection_dim: int):
    super().__init__()
    self.encoder = encoder
    self.projection = torch.nn.Linear(hidden, projection_dim) if projection_dim else None

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    x = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return self.projection(x) if self.projection is not None else x


def _prefix_mask(generator: torch.Generator, batch: int, length: int, min_frac: float) -> torch.Tensor:
  lengths = torch.randint(math.ceil(min_frac * length), length + 1, (batch,), generator=generator)
  return (torch.arange(length)[None, :] < lengths[:, None]).long()


def synthetic_batch(cfg: ReferenceConfig, seed: int | None = None) -> dict[str, torch.Tensor]:
  """Random ids / teacher vectors with random real lengths (prefix masks), reproducible from the seed."""
  g = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
  student_mask = _prefix_mask(g, cfg.batch, cfg.student_len, cfg.min_len_frac)
  teacher_mask = _prefix_mask(g, cfg.batch, cfg.teacher_len, cfg.min_len_frac)
  first_id = _pad_id(cfg) + 1
  ids = torch.randint(first_id, cfg.vocab, (cfg.batch, cfg.student_len), generator=g)
  ids = torch.where(student_mask.bool(), ids, torch.full_like(ids, _pad_id(cfg)))
  teacher = torch.randn(cfg.batch, cfg.teacher_len, cfg.output_dim, generator=g) * teacher_mask[..., None]
  return {"input_ids": ids, "attention_mask": student_mask, "teacher_tokens": teacher, "teacher_mask": teacher_mask}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
  # No decay on biases and LayerNorm weights (the BERT recipe, as in optical_jax.train_step).
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
  return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_reference_step(cfg: ReferenceConfig) -> Callable[[dict[str, torch.Tensor]], float]:
  """A stateful step(batch) -> loss: forward, OT loss (cfg.ot_variant), backward, clip, AdamW update."""
  torch.manual_seed(cfg.seed)
  model = build_student(cfg)
  model.train()
  if cfg.freeze_word_embeddings:
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
  optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
  ot_loss = OT_LOSSES[cfg.ot_variant]

  def step(batch: dict[str, torch.Tensor]) -> float:
    optimizer.zero_grad(set_to_none=True)
    tokens = model(batch["input_ids"], batch["attention_mask"])
    loss = ot_loss(tokens, batch["attention_mask"], batch["teacher_tokens"], batch["teacher_mask"],
                   epsilon=cfg.epsilon, iterations=cfg.iterations)
    loss.backward()
    if cfg.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
    optimizer.step()
    return loss.item()

  step.model = model  # for inspection (parameter counts) by callers
  return step


# --- timing ---------------------------------------------------------------------------------------------------------


def _summary(times: list[float]) -> dict[str, float]:
  return {"median_s": statistics.median(times), "p90_s": float(np.percentile(times, 90)), "n": len(times)}


def ot_loss_timings(variant: str, student: torch.Tensor, student_mask: torch.Tensor, teacher: torch.Tensor,
                    teacher_mask: torch.Tensor, *, epsilon: float, iterations: int, calls: int, warmup: int = 0
                    ) -> tuple[list[float], list[float], float]:
  """`warmup` untimed, then `calls` timed forward + backward passes of an OT loss, back to back, each on a fresh
  leaf copy of `student`: (forward times, forward + backward times, loss value)."""
  fwd, fwd_bwd = [], []
  for i in range(warmup + calls):
    tokens = student.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = OT_LOSSES[variant](tokens, student_mask, teacher, teacher_mask, epsilon=epsilon, iterations=iterations)
    mid = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    if i >= warmup:
      fwd.append(mid - start)
      fwd_bwd.append(end - start)
  return fwd, fwd_bwd, loss.item()


def time_ot_loss(cfg: ReferenceConfig, variant: str, *, repeats: int, warmup: int = 1) -> dict[str, float]:
  """Forward and forward+backward time of one OT loss on the step's shapes (student tokens are random leaves)."""
  batch = synthetic_batch(cfg)
  g = torch.Generator().manual_seed(cfg.seed + 1)
  student = torch.randn(cfg.batch, cfg.student_len, cfg.output_dim, generator=g)
  fwd, fwd_bwd, loss = ot_loss_timings(variant, student, batch["attention_mask"], batch["teacher_tokens"],
                                       batch["teacher_mask"], epsilon=cfg.epsilon, iterations=cfg.iterations,
                                       calls=repeats, warmup=warmup)
  return {"fwd_median_s": statistics.median(fwd), "fwd_bwd_median_s": statistics.median(fwd_bwd),
          "fwd_bwd_p90_s": float(np.percentile(fwd_bwd, 90)), "repeats": repeats, "loss": loss}


def time_reference(cfg: ReferenceConfig, *, steps: int, warmup: int, ot_repeats: int | None = None,
                   loop_repeats: int = 1, include_loop: bool = True) -> dict:
  """Steady-state step time of the reference (after `warmup` untimed steps) plus OT-only timings per variant.

  The same synthetic batch is fed every step. `loop_repeats` is separate because the per-pair loop takes seconds
  per call at B=32.
  """
  if steps <= 0 or warmup < 0:
    raise UserError(f"reference timing: steps={steps} must be > 0 and warmup={warmup} >= 0")
  batch = synthetic_batch(cfg)
  step = make_reference_step(cfg)
  losses, times = [], []
  for i in range(warmup + steps):
    start = time.perf_counter()
    losses.append(step(batch))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  step_summary = _summary(times)
  flops_per_step = flops.train_step_flops(  # the MFU numerator optical-jax bench uses too
      batch=cfg.batch, student_len=cfg.student_len, teacher_len=cfg.teacher_len, hidden=cfg.hidden,
      num_layers=cfg.layers, intermediate=cfg.ffn, projection_dim=cfg.projection_dim)

  ot_times = {"pot_batched": time_ot_loss(cfg, "pot_batched", repeats=ot_repeats or max(steps, 3))}
  if include_loop:
    ot_times["pot_loop"] = time_ot_loss(cfg, "pot_loop", repeats=loop_repeats, warmup=0)
  return {
      "peer": f"pytorch+POT ({cfg.ot_variant})",
      "config": dataclasses.asdict(cfg),
      "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "pot": ot.__version__},
      "torch_num_threads": torch.get_num_threads(),
      "num_parameters": sum(p.numel() for p in step.model.parameters()),
      "step_time_median_s": step_summary["median_s"],
      "step_time_p90_s": step_summary["p90_s"],
      "step_times_s": times,
      "sequences_per_s": cfg.batch / step_summary["median_s"],
      "padded_tokens_per_s": cfg.batch * cfg.student_len / step_summary["median_s"],
      "real_tokens_per_s": float(batch["attention_mask"].sum()) / step_summary["median_s"],
      "train_step_flops": flops_per_step,
      "achieved_flops_per_s": flops_per_step / step_summary["median_s"],
      "losses": losses,
      "ot": ot_times,
  }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  d = ReferenceConfig()
  p = argparse.ArgumentParser(prog="python -m optical_jax.bench.torch_reference",
                              description="Time the PyTorch + POT reference OPTICAL train step (synthetic inputs).")
  for field in ("batch", "student_len", "teacher_len", "hidden", "layers", "heads", "ffn", "vocab",
                "projection_dim", "teacher_dim", "iterations", "seed"):
    p.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(d, field))
  for field in ("epsilon", "lr", "weight_decay", "clip_norm", "min_len_frac"):
    p.add_argument("--" + field.replace("_", "-"), type=float, default=getattr(d, field))
  p.add_argument("--model-type", choices=MODEL_TYPES, default=d.model_type)
  p.add_argument("--freeze-word-embeddings", action="store_true", help="no gradient for the word-embedding table")
  p.add_argument("--ot-variant", choices=OT_VARIANTS, default=d.ot_variant, help="OT solver inside the timed step")
  p.add_argument("--steps", type=int, default=3, help="timed steps")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  p.add_argument("--ot-repeats", type=int, default=None, help="timed calls of the batched OT loss (default: steps)")
  p.add_argument("--loop-repeats", type=int, default=1, help="timed calls of the per-pair POT loop")
  p.add_argument("--no-loop", action="store_true", help="skip timing the per-pair POT loop")
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own default)")
  p.add_argument("--json", default=None, help="also write the result to this path")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(argv)
  fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(ReferenceConfig)}
  if args.threads:
    torch.set_num_threads(args.threads)
  try:
    cfg = ReferenceConfig(**fields)
    result = time_reference(cfg, steps=args.steps, warmup=args.warmup, ot_repeats=args.ot_repeats,
                            loop_repeats=args.loop_repeats, include_loop=not args.no_loop)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=2)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
