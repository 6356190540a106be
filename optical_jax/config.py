"""Config files (ml_collections `get_config(arg)`), `--config.a.b=v` overrides, and validation.

Every user mistake here is a `UserError` with one line naming the field, which the CLI turns into exit code 2.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from optical_jax.errors import UserError

OT_GRADS = ("envelope", "implicit", "unroll")
OT_MARGINALS = ("uniform", "idf")
DTYPES = ("float32", "bfloat16")
MODEL_TYPES = ("bert", "xlm-roberta")

# Keys a config file may leave out: `load_config` fills them in (so `--config.KEY=...` overrides work on every
# config) and the code reads them with the same defaults. Only added where the parent section exists.
OPTIONAL_DEFAULTS = {
    "ot.relative_epsilon": "",      # "" = absolute epsilon; "std" | "mean" = epsilon x that statistic of each C
    "ot.lse_mode": True,            # False = kernel-domain Sinkhorn (faster; see losses.ot_alignment_loss)
    "ot.tau_student": 1.0,          # unbalanced OT: 1 = balanced student marginal
    "ot.tau_teacher": 1.0,          # unbalanced OT: 1 = balanced teacher marginal
    "ot.plan_centering": False,     # solve the plan on sentence-mean-centred tokens (loss on the raw ones)
    "ot.tokens": "all",             # "all" | "content" (no special / prefix tokens in the OT problem)
    "ot.idf_power": 1.0,            # ot.marginals="idf": weight = IDF ** idf_power
    "loss.english_weight": 0.0,     # weight of the English-side term OT(teacher(en), student(en))
    "train.stop_vote_every": 1,     # multi-host: steps between the all-process stop votes (SIGTERM, lost peer)
}


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:ARG]` by calling its `get_config(ARG)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config: no such config file: {path}")
  module_spec = importlib.util.spec_from_file_location(f"optical_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is the user's to fix: say where.
    raise UserError(f"{path}: cannot load config: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: config files must define get_config(arg=None)")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    lowered = text.lower()
    if lowered in ("true", "false"):
      return lowered == "true"
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `a.b=v` overrides; an unknown key or a value of the wrong type names the field."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"--config.{item}: expected --config.KEY=VALUE")
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise UserError(f"--config.{key}: unknown config key {'.'.join(parts[:i + 1])!r}")
      node = node[part]
    leaf = parts[-1]
    if leaf not in node:
      raise UserError(f"--config.{key}: unknown config key {key!r}")
    old = node[leaf]
    value = _parse_value(text)
    if isinstance(old, str) and not isinstance(value, str):
      value = text  # A string field keeps the literal text, e.g. --config.student.init=123.
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if old is not None and type(old) is not type(value):
      raise UserError(f"--config.{key}: expected {type(old).__name__}, got {text!r}")
    node[leaf] = value
  return config


def fill_optional_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  for dotted, default in OPTIONAL_DEFAULTS.items():
    section, _, leaf = dotted.rpartition(".")
    node = config.get(section)
    if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
      node[leaf] = default
  return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  config = fill_optional_defaults(load_config_file(spec))
  config = apply_overrides(config, overrides)
  validate(config)
  return config


def _require(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise UserError(f"config: missing required key {dotted!r}")
    node = node[part]
  return node


REQUIRED_KEYS = (
    "seed", "mesh.data", "mesh.fsdp", "mesh.tensor", "student.init", "teacher.path", "data.bitext",
    "data.teacher_store", "data.strict", "data.max_len_student", "data.max_len_teacher", "ot.epsilon",
    "ot.iterations", "ot.grad", "ot.marginals", "train.batch_size", "train.steps", "train.lr",
    "train.warmup_steps", "train.weight_decay", "train.clip_norm", "train.checkpoint_every", "train.log_every",
)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks the config before anything heavy runs. `num_devices` adds the mesh and batch checks."""
  for key in REQUIRED_KEYS:
    _require(config, key)
  if config.ot.grad not in OT_GRADS:
    raise UserError(f"config: ot.grad must be one of {OT_GRADS}, got {config.ot.grad!r}")
  if config.ot.marginals not in OT_MARGINALS:
    raise UserError(f"config: ot.marginals must be one of {OT_MARGINALS}, got {config.ot.marginals!r}")
  if not config.ot.epsilon > 0:
    raise UserError(f"config: ot.epsilon must be > 0, got {config.ot.epsilon}")
  if config.ot.iterations < 1:
    raise UserError(f"config: ot.iterations must be >= 1, got {config.ot.iterations}")
  if config.get("ot") and config.ot.get("relative_epsilon") not in (None, "", "std", "mean"):
    raise UserError(f"config: ot.relative_epsilon must be '', 'std' or 'mean', got {config.ot.relative_epsilon!r}")
  for key in ("tau_student", "tau_teacher"):
    if not 0.0 < float(config.ot.get(key, 1.0)) <= 1.0:
      raise UserError(f"config: ot.{key} must be in (0, 1] (1 = balanced), got {config.ot[key]}")
  if config.ot.get("plan_centering", False) and config.ot.grad != "envelope":
    raise UserError("config: ot.plan_centering needs ot.grad='envelope'")
  if not config.ot.get("lse_mode", True) and config.ot.grad == "implicit":
    raise UserError("config: ot.lse_mode=False (kernel-domain Sinkhorn) needs ot.grad 'envelope' or 'unroll'")
  if config.student.get("dtype", "float32") not in DTYPES:
    raise UserError(f"config: student.dtype must be one of {DTYPES}, got {config.student.dtype!r}")
  if config.student.init == "random" and config.student.get("model_type", "bert") not in MODEL_TYPES:
    raise UserError(f"config: student.model_type must be one of {MODEL_TYPES}, got {config.student.model_type!r}")
  for key in ("student.init", "teacher.path", "data.bitext"):
    if "SET_ME" in str(_require(config, key)):
      raise UserError(f"config: {key} is not set (SET_ME): pass --config.{key}=...")
  for key in ("batch_size", "steps", "log_every", "checkpoint_every"):
    if config.train[key] < 1:
      raise UserError(f"config: train.{key} must be >= 1, got {config.train[key]}")
  if config.train.warmup_steps < 0:
    raise UserError(f"config: train.warmup_steps must be >= 0, got {config.train.warmup_steps}")
  for key in ("max_len_student", "max_len_teacher"):
    if config.data[key] < 2:
      raise UserError(f"config: data.{key} must be >= 2, got {config.data[key]}")
  _validate_length_buckets(config)
  if num_devices is not None:
    from optical_jax import sharding  # Late: importing jax here would fix XLA flags too early for the CLI.
    shape = sharding.mesh_shape(config.mesh, num_devices)
    batch_shards = shape[0] * shape[1]
    if config.train.batch_size % batch_shards:
      raise UserError(
          f"config: train.batch_size={config.train.batch_size} is not divisible by the batch shards "
          f"mesh.data*mesh.fsdp={batch_shards}")


def _validate_length_buckets(config: ml_collections.ConfigDict) -> None:
  """data.length_buckets: empty (off) or increasing positive ints ending at data.max_len_student."""
  buckets = config.data.get("length_buckets") or ()
  max_len = config.data.max_len_student
  ok = (isinstance(buckets, (tuple, list)) and all(type(b) is int and b > 0 for b in buckets)
        and all(a < b for a, b in zip(buckets, buckets[1:])))
  if not ok:
    raise UserError(f"config: data.length_buckets must be increasing positive ints, e.g. (16, 32, {max_len}), "
                    f"got {buckets!r}")
  if buckets and buckets[-1] != max_len:
    raise UserError(f"config: data.length_buckets must end at data.max_len_student={max_len}, got {tuple(buckets)}")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
