"""The pure, jitted OPTICAL train step: student forward, OT alignment loss (Sinkhorn inside), AdamW update.

No I/O and no host syncs here. `train.py` owns the loop; this module owns what runs on the devices.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from optical_jax import losses, ot_options
from optical_jax import sharding as sharding_lib
from optical_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `train.lr`, then cosine decay to 0 at `train.steps`.

  Evaluated at count + 1 so that the first update already moves the weights (optax counts from 0).
  """
  warmup = min(train_config.warmup_steps, max(train_config.steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=max(train_config.steps, warmup + 1), end_value=0.0)
  return lambda count: schedule(count + 1)


def _decay_mask(params: Any) -> Any:
  # No weight decay on biases and LayerNorm parameters (the BERT recipe).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, "key", None) in ("bias", "scale") for k in path), params)


_LAYER = re.compile(r"^layer_(\d+)$")


def _frozen_labels(params: Any, freeze_word_embeddings: bool, trainable_layers: int = 0) -> Any:
  """"frozen" | "trained" per leaf: the word-embedding table if freeze_word_embeddings; with trainable_layers = N > 0,
  every embedding and every encoder layer below the top N (the projection head, if any, always trains)."""
  layers = sorted({int(m.group(1)) for key in params for m in [_LAYER.match(str(key))] if m})
  first_trained = len(layers) - trainable_layers if 0 < trainable_layers < len(layers) else 0

  def label(path, _):
    names = [str(getattr(k, "key", "")) for k in path]
    if freeze_word_embeddings and "word_embeddings" in names:
      return "frozen"
    if first_trained:
      layer = next((int(m.group(1)) for n in names for m in [_LAYER.match(n)] if m), None)
      if (layer is not None and layer < first_trained) or any(n.endswith(("_embeddings", "embeddings_norm"))
                                                              for n in names):
        return "frozen"
    return "trained"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with warm-up + decay and global-norm clipping; non-finite updates are skipped (and counted)."""
  train = config.train
  # identity() holds the place (and the empty state) of the clip, which clip_and_skip_nonfinite does outside: the
  # optimizer state keeps the layout of optax.apply_if_finite(multi_transform(chain(clip_by_global_norm, adamw))).
  adamw = optax.chain(
      optax.identity(),
      optax.adamw(learning_rate_schedule(train), b1=0.9, b2=0.999, eps=1e-8,
                  weight_decay=train.weight_decay, mask=_decay_mask),
  )
  labels = functools.partial(_frozen_labels, freeze_word_embeddings=config.student.freeze_word_embeddings,
                             trainable_layers=config.student.trainable_layers)
  tx = optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)
  trained = lambda tree: jax.tree.map(lambda label: label == "trained", labels(tree))
  return clip_and_skip_nonfinite(tx, clip_norm=train.clip_norm, clip_mask=trained,
                                 max_consecutive_errors=train.max_consecutive_nonfinite)


def clip_and_skip_nonfinite(inner: optax.GradientTransformation, *, clip_norm: float, max_consecutive_errors: int,
                            clip_mask: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
  """`optax.apply_if_finite(chain(optax.clip_by_global_norm(clip_norm), inner))`, on one global-norm reduction.

  `clip_mask(updates)` (a tree of bools; None: all True) picks the leaves that the clip measures and scales, as
  `optax.multi_transform` would with the clip inside one of its branches; every leaf is checked for finiteness.

  Same state, counters and arithmetic as optax: a step whose gradient holds an inf or NaN is dropped (zero update,
  inner state kept, `total_notfinite` counted) until more than `max_consecutive_errors` come in a row; the others
  are clipped to global norm `clip_norm` (0: no clipping) and passed to `inner`. optax reduces the gradient three
  times for this: an is-finite pass with an all-reduction, and the clip's norm inside the `lax.cond`, where it
  cannot be shared (~90 ms a step for mE5's 96 M-entry embedding table on a 2-core CPU). Here the norm is taken
  once, outside the cond, and is also what the step's `grad_norm` metric computes (XLA merges the two). It is not
  finite exactly when some element is not, or when the squares overflow float32: a gradient norm above ~1e19,
  which clipping would turn into a zero update anyway.
  """

  def init(params):
    return optax.ApplyIfFiniteState(
        notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True, jnp.bool_),
        total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update(updates, state, params=None):
    mask = jax.tree.map(lambda _: True, updates) if clip_mask is None else clip_mask(updates)
    leaves, masks = jax.tree.leaves(updates), jax.tree.leaves(mask)
    norm = optax.tree.norm([u for u, m in zip(leaves, masks) if m])
    # Unmasked leaves (frozen ones: a constant zero gradient in our step, where this folds away) checked apart.
    finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(u)) for u, m in zip(leaves, masks) if not m],
                              jnp.isfinite(norm))
    if clip_norm > 0:  # optax.clip_by_global_norm's own arithmetic
      clip = lambda t: jax.lax.select(norm < clip_norm, t, (t / norm.astype(t.dtype)) * clip_norm)
      updates = jax.tree.map(lambda t, m: clip(t) if m else t, updates, mask)
    notfinite_count = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
    updates, inner_state = jax.lax.cond(
        finite | (notfinite_count > max_consecutive_errors),
        lambda: inner.update(updates, state.inner_state, params),
        lambda: (optax.tree.zeros_like(updates), state.inner_state))
    total_notfinite = jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite))
    return updates, optax.ApplyIfFiniteState(notfinite_count=notfinite_count, last_finite=finite,
                                             total_notfinite=total_notfinite, inner_state=inner_state)

  return optax.GradientTransformation(init, update)


def distillation_loss(params: Any, batch: dict[str, jax.Array], *, model: nn.Module,
                      config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """OT token alignment of student(low-resource) with the stored teacher(English) tokens; optional ranking and MSE."""
  student = model.apply({"params": params}, batch["student_ids"], batch["student_mask"], head=True)
  teacher = batch["teacher_tokens"].astype(jnp.float32)
  # Which tokens enter the OT problem may differ from the attention mask (e.g. special / prefix tokens left out).
  student_ot_mask = batch.get("student_ot_mask", batch["student_mask"])
  teacher_ot_mask = batch.get("teacher_ot_mask", batch["teacher_mask"])
  ot_config, weights = config.ot, config.loss
  metrics = {}
  total = jnp.zeros((), jnp.float32)
  ot_weight = weights.ot_weight
  if ot_weight:
    ot_loss, ot_aux = losses.ot_alignment_loss(
        student, student_ot_mask, teacher, teacher_ot_mask, **ot_options.from_config(ot_config),
        student_weights=batch.get("student_weights"), teacher_weights=batch.get("teacher_weights"))
    total = total + ot_weight * ot_loss
    metrics.update({f"ot/{k}": v for k, v in ot_aux.items()})
    metrics["ot_loss"] = ot_loss
  english_weight, english_mse_weight = weights.english_weight, weights.english_mse_weight
  if english_weight or english_mse_weight:
    if "english_ids" not in batch:
      raise UserError("loss.english_weight / loss.english_mse_weight need the English side tokenised for the "
                      "student: only the bitext + teacher-store data path provides it (not data.bitext=synthetic "
                      "or the benchmark)")
    student_en = model.apply({"params": params}, batch["english_ids"], batch["english_mask"], head=True)
  if english_weight:
    # OT(teacher(en), student(en)): keeps the student's English token states on the teacher's, so that aligning
    # the low-resource side does not pull the shared space away from what the teacher indexed.
    english_loss, _ = losses.ot_alignment_loss(
        student_en, batch.get("english_ot_mask", batch["english_mask"]), teacher, teacher_ot_mask,
        **ot_options.from_config(ot_config))
    total = total + english_weight * english_loss
    metrics["english_ot_loss"] = english_loss
  if english_mse_weight:
    # MSE(student(en), teacher(en)) on pooled vectors: the English half of make_multilingual's objective.
    english_mse, _ = losses.mse_distill_loss(student_en, batch["english_mask"], teacher, batch["teacher_mask"])
    total = total + english_mse_weight * english_mse
    metrics["english_mse_loss"] = english_mse
  rank_weight = weights.rank_weight
  if rank_weight:
    # Scored on the tokens evaluation's MaxSim matches (the OT masks: content tokens when ot.tokens="content").
    maxsim = weights.rank_scorer == "maxsim"
    negatives = {}
    if "negative_tokens" in batch:
      negatives = dict(bank_tokens=batch["negative_tokens"].astype(jnp.float32),
                       bank_mask=batch.get("negative_ot_mask", batch["negative_mask"]) if maxsim
                       else batch["negative_mask"],
                       doc_index=batch["example_index"], bank_index=batch["negative_index"])
    rank_loss, rank_aux = losses.ranking_loss(
        student, student_ot_mask if maxsim else batch["student_mask"],
        teacher, teacher_ot_mask if maxsim else batch["teacher_mask"],
        temperature=weights.rank_temperature, scorer=weights.rank_scorer,
        duplicate_threshold=weights.rank_duplicate_threshold, target=weights.rank_target, **negatives)
    total = total + rank_weight * rank_loss
    metrics.update(rank_aux)
    metrics["rank_loss"] = rank_loss
  mse_weight = weights.mse_weight
  if mse_weight:
    mse_loss, _ = losses.mse_distill_loss(student, batch["student_mask"], teacher, batch["teacher_mask"])
    total = total + mse_weight * mse_loss
    metrics["mse_loss"] = mse_loss
  metrics["loss"] = total
  return total, metrics


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, config: ml_collections.ConfigDict
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  labels = _frozen_labels(state.params, config.student.freeze_word_embeddings, config.student.trainable_layers)

  def loss_fn(params, batch):
    # Frozen leaves get no gradient at all. Otherwise the backward pass scatter-adds into a zero table the size of
    # the vocabulary (250k x 384 for mE5) and checks it for non-finite values every step, only for the optimizer to
    # discard it. With only the top layers trained, nothing below them is differentiated either: autodiff never
    # builds a backward pass for layers whose inputs and parameters are all constants.
    params = jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p, params, labels)
    return distillation_loss(params, batch, model=model, config=config)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)  # the reduction the optimizer already made (XLA merges them)
  metrics["lr"] = learning_rate_schedule(config.train)(state.step)
  metrics["skipped_steps"] = opt_state.total_notfinite
  metrics["real_tokens"] = jnp.sum(batch["student_mask"])
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, rng: jax.Array, init_params: Any = None
                       ) -> tuple[TrainState, Any]:
  """Creates the state already sharded: eval_shape → logical shardings → jit(init, out_shardings).

  `init_params` (e.g. a pretrained encoder's) replace the random values of the parameters they name; a projection
  head that the checkpoint lacks keeps its fresh initialisation. Returns (state, state_shardings).
  """
  ids = jnp.zeros((1, config.data.max_len_student), jnp.int32)

  def init(rng):
    params = model.init(rng, ids, ids, head=True)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_AXIS_RULES):
    abstract = jax.eval_shape(init, rng)
    state_shardings = sharding_lib.logical_shardings(abstract, mesh)
    state = jax.jit(init, out_shardings=state_shardings)(rng)
  state, state_shardings = nn.meta.unbox(state), nn.meta.unbox(state_shardings)
  if init_params is not None:
    params = _overlay(state.params, init_params, state_shardings.params)
    with jax.set_mesh(mesh):
      opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
    state = state.replace(params=params, opt_state=opt_state)
  return state, state_shardings


def _overlay(params: Any, loaded: Any, shardings: Any, path: str = "") -> Any:
  if not isinstance(params, dict):
    if tuple(params.shape) != tuple(loaded.shape):
      raise ValueError(f"pretrained parameter {path} has shape {loaded.shape}, the model expects {params.shape}")
    return jax.device_put(jnp.asarray(loaded, params.dtype), shardings)
  out = dict(params)
  for key, value in loaded.items():
    if key not in params:
      raise ValueError(f"pretrained parameter {path}/{key} does not exist in the model")
    out[key] = _overlay(params[key], value, shardings[key], f"{path}/{key}")
  return out


def jit_train_step(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh, state_shardings: Any, batch_spec: dict[str, Any]):
  """`train_step` jitted with state/batch shardings and the state donated. Call it under `mesh_context(mesh)`.

  `batch_spec`: data.batch_spec's key -> Field (its rank gives each key's data sharding).
  """
  batch_shardings = {k: sharding_lib.data_sharding(mesh, field.rank) for k, field in batch_spec.items()}
  step = functools.partial(train_step, model=model, tx=tx, config=config)
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))

