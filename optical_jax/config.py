"""Config files (ml_collections `get_config(arg)`), `--config.a.b=v` overrides, and validation.

A file and an override get the same checks, against the one table of keys in config_schema.py: an unknown or
misspelt key, a wrong type or a value outside its choices is a `UserError` with one line naming the file (or the
override) and the field, which the CLI turns into exit code 2. Keys a file leaves out get the schema's defaults.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from optical_jax import ot_options
from optical_jax.config_schema import REQUIRED, SCHEMA, SECTIONS
from optical_jax.errors import UserError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:ARG]` by calling its `get_config(ARG)`; no checks yet."""
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
  try:
    config = module.get_config(arg or None)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{path}: get_config({arg!r}): {type(e).__name__}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _unknown(key: str) -> str:
  close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.75)
  return f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def coerce(key: str, value: Any) -> Any:
  """`value` as key's type (ints widen to floats, lists to tuples); ValueError naming the expected type."""
  field = SCHEMA[key]
  want = field.type
  if want is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif want is tuple and isinstance(value, list):
    value = tuple(value)
  if type(value) is not want:  # bool is not an int here, nor an int a bool
    raise ValueError(f"expected {want.__name__}, got {value!r}")
  if want is tuple and not all(type(v) is int for v in value):
    raise ValueError(f"expected a tuple of ints, got {value!r}")
  if field.choices and value not in field.choices:
    raise ValueError(f"must be one of {', '.join(repr(c) for c in field.choices)}, got {value!r}")
  return value


def _flatten(node: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for name, value in node.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(value, f"{prefix}{name}."))
    else:
      out[prefix + name] = value
  return out


def conform(given: ml_collections.ConfigDict | dict, source: str) -> ml_collections.ConfigDict:
  """The checked, complete config: `given`'s keys checked and coerced, every other key at its default.

  `source` names where the keys came from (a config file, a workdir's config.json) in the error.
  """
  flat = _flatten(given)
  values = {}
  for key, value in flat.items():
    if key not in SCHEMA:
      raise UserError(f"{source}: {_unknown(key)}")
    try:
      values[key] = coerce(key, value)
    except ValueError as e:
      raise UserError(f"{source}: {key}: {e}") from None
  for section in SECTIONS:
    if section in flat:  # a section given as a plain value
      raise UserError(f"{source}: {section} must be a section (ConfigDict), got {flat[section]!r}")
  out = ml_collections.ConfigDict()
  for key, field in SCHEMA.items():
    if key in values:
      value = values[key]
    elif field.default is REQUIRED:
      raise UserError(f"{source}: missing required key {key!r}")
    else:
      value = field.default
    section, _, leaf = key.rpartition(".")
    node = out
    if section:
      if section not in out:
        out[section] = ml_collections.ConfigDict()
      node = out[section]
    node[leaf] = value
  return out


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    lowered = text.lower()
    if lowered in ("true", "false"):
      return lowered == "true"
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `a.b=v` overrides to a conformed config; an unknown key or a value of the wrong type names the field."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"--config.{item}: expected --config.KEY=VALUE")
    if key not in SCHEMA:
      raise UserError(f"--config.{key}: {_unknown(key)}")
    # A string field keeps the literal text, e.g. --config.student.init=123.
    value = text if SCHEMA[key].type is str else _parse_value(text)
    try:
      value = coerce(key, value)
    except ValueError as e:
      raise UserError(f"--config.{key}: {e}") from None
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
  return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`optical-jax CMD --config FILE[:ARG] --config.a.b=v ...`: the file checked, completed, overridden, validated."""
  config = conform(load_config_file(spec), spec.partition(":")[0])
  config = apply_overrides(config, overrides)
  validate(config)
  return config


def from_json(path) -> ml_collections.ConfigDict:
  """A workdir's config.json (as train wrote it), checked and completed like a config file."""
  try:
    given = json.loads(path.read_text())
  except ValueError as e:
    raise UserError(f"{path}: not a JSON config ({e})") from None
  config = conform(given, str(path))
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Rules across fields, on a conformed config. `num_devices` adds the mesh and batch checks."""
  try:
    ot_options.check(**ot_options.from_config(config.ot))
  except ValueError as e:
    raise UserError(f"config: {e}") from None
  s = config.student
  if s.init == "random":
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
      if s[key] < 1:
        raise UserError(f"config: student.init='random' needs student.{key} >= 1, got {s[key]}")
  if s.keep_layers < 0 or (s.keep_layers and s.init == "random"):
    raise UserError(f"config: student.keep_layers={s.keep_layers}: it cuts a pretrained init (>= 0); a random init "
                    "takes its depth from student.num_layers")
  for key in ("student.init", "teacher.path", "data.bitext"):
    section, leaf = key.split(".")
    if "SET_ME" in config[section][leaf]:
      raise UserError(f"config: {key} is not set (SET_ME): pass --config.{key}=...")
  for key in ("batch_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "stop_vote_every"):
    if config.train[key] < 1:
      raise UserError(f"config: train.{key} must be >= 1, got {config.train[key]}")
  if config.train.warmup_steps < 0:
    raise UserError(f"config: train.warmup_steps must be >= 0, got {config.train.warmup_steps}")
  for key in ("max_len_student", "max_len_teacher"):
    if config.data[key] < 2:
      raise UserError(f"config: data.{key} must be >= 2, got {config.data[key]}")
  for key in ("max_train_pairs", "sample_seed", "dev_pairs", "length_group"):
    if config.data[key] < 0:
      raise UserError(f"config: data.{key} must be >= 0, got {config.data[key]}")
  for key in ("teacher_batch_size", "examples_per_shard", "num_examples"):
    if config.data[key] < 1:
      raise UserError(f"config: data.{key} must be >= 1, got {config.data[key]}")
  if config.data.bitext == "synthetic" and (config.loss.english_weight or config.loss.english_mse_weight):
    raise UserError("config: data.bitext='synthetic' has no English text: set loss.english_weight=0 and "
                    "loss.english_mse_weight=0")
  if not 0.0 <= config.eval.mix <= 1.0:
    raise UserError(f"config: eval.mix must be in [0, 1], got {config.eval.mix}")
  if config.loss.rank_temperature <= 0:
    raise UserError(f"config: loss.rank_temperature must be > 0, got {config.loss.rank_temperature}")
  if config.loss.rank_hard_negatives < 0:
    raise UserError(f"config: loss.rank_hard_negatives must be >= 0, got {config.loss.rank_hard_negatives}")
  if not any(config.loss[k] for k in ("ot_weight", "mse_weight", "english_weight", "english_mse_weight",
                                       "rank_weight")):
    raise UserError("config: every loss weight is 0: set loss.ot_weight, loss.rank_weight or loss.mse_weight")
  if config.student.trainable_layers < 0:
    raise UserError(f"config: student.trainable_layers must be >= 0, got {config.student.trainable_layers}")
  if config.train.eval_every < 0:
    raise UserError(f"config: train.eval_every must be >= 0, got {config.train.eval_every}")
  if config.train.best_metric and not (config.train.eval_every > 0 and config.data.dev_pairs > 0):
    raise UserError(f"config: train.best_metric={config.train.best_metric!r} is scored at the dev evaluations: set "
                    "train.eval_every (e.g. 100) and data.dev_pairs (e.g. 256)")
  if config.train.wandb and not config.train.wandb_project:
    raise UserError("config: train.wandb=True needs a train.wandb_project name")
  if config.train.eval_every and not config.data.dev_pairs:
    raise UserError("config: train.eval_every needs held-out pairs to score: set data.dev_pairs (e.g. 256)")
  _validate_augment(config)
  if config.data.length_group > 1 and not config.data.length_buckets:
    raise UserError("config: data.length_group groups batches by length bucket: set data.length_buckets too")
  _validate_length_buckets(config)
  _validate_eval(config.eval)
  if num_devices is not None:
    from optical_jax import sharding  # Late: importing jax here would fix XLA flags too early for the CLI.
    shape = sharding.mesh_shape(config.mesh, num_devices)
    batch_shards = shape[0] * shape[1]
    if config.train.batch_size % batch_shards:
      raise UserError(
          f"config: train.batch_size={config.train.batch_size} is not divisible by the batch shards "
          f"mesh.data*mesh.fsdp={batch_shards}")


def _validate_augment(config: ml_collections.ConfigDict) -> None:
  """data.augment*: the form only; the lexicon itself is read when training starts (export and evaluate of a
  finished run must not need it)."""
  d = config.data
  if not d.augment:
    return
  if not d.augment_lexicon.strip():
    raise UserError(f"config: data.augment={d.augment!r} needs data.augment_lexicon (a TSV path or freedict:swh-eng)")
  if not 0.0 < d.augment_fraction <= 1.0:
    raise UserError(f"config: data.augment_fraction must be in (0, 1], got {d.augment_fraction}")
  if d.bitext == "synthetic":
    raise UserError("config: data.augment needs words: data.bitext='synthetic' has none")
  if d.augment_direction == "to_source" and not (config.loss.english_weight or config.loss.english_mse_weight):
    raise UserError("config: data.augment_direction='to_source' augments the English-side term's input: set "
                    "loss.english_weight or loss.english_mse_weight > 0")


def _validate_length_buckets(config: ml_collections.ConfigDict) -> None:
  """data.length_buckets: empty (off) or increasing positive ints ending at data.max_len_student."""
  buckets = config.data.length_buckets
  max_len = config.data.max_len_student
  ok = (isinstance(buckets, (tuple, list)) and all(type(b) is int and b > 0 for b in buckets)
        and all(a < b for a, b in zip(buckets, buckets[1:])))
  if not ok:
    raise UserError(f"config: data.length_buckets must be increasing positive ints, e.g. (16, 32, {max_len}), "
                    f"got {buckets!r}")
  if buckets and buckets[-1] != max_len:
    raise UserError(f"config: data.length_buckets must end at data.max_len_student={max_len}, got {tuple(buckets)}")


def split_list(text: str) -> list[str]:
  """A comma-separated config value as its non-empty items."""
  return [t.strip() for t in str(text).split(",") if t.strip()]


EVAL_SCORERS = ("maxsim", "pooled")
EVAL_BASELINES = ("teacher_en", "teacher_lr", "zero_shot")


def _validate_eval(ev: ml_collections.ConfigDict) -> None:
  for key, known in (("scorers", EVAL_SCORERS), ("baselines", EVAL_BASELINES)):
    for item in split_list(ev[key]):
      if item not in known:
        raise UserError(f"config: unknown eval.{key} entry {item!r}; use {', '.join(known)}")
  for key in ("num_verses", "num_topical", "num_quran", "max_len_query", "max_len_doc", "seed"):
    if ev[key] < 0:
      raise UserError(f"config: eval.{key} must be >= 0, got {ev[key]}")
  for key in ("batch_size", "k"):
    if ev[key] < 1:
      raise UserError(f"config: eval.{key} must be >= 1, got {ev[key]}")
  if ev.doc_window < 0 or not 0 <= ev.doc_stride <= max(ev.doc_window, 0):
    raise UserError(f"config: eval.doc_window must be >= 0 and eval.doc_stride in [0, doc_window], got "
                    f"{ev.doc_window} and {ev.doc_stride}")
  for entry in split_list(ev.collections):
    if entry.startswith("irds:") and not entry[len("irds:"):]:
      raise UserError(f"config: eval.collections entry {entry!r} names no dataset: use irds:NAME (an ir_datasets "
                      "dataset, e.g. irds:miracl/sw/dev)")
  for triple in (t.strip() for t in ev.files.split(";")):
    if triple and len(split_list(triple.partition("=")[2] if "=" in triple.split(",")[0] else triple)) != 3:
      raise UserError(f"config: eval.files entries must be '[NAME=]QUERIES,DOCUMENTS,QRELS' (several separated by "
                      f"';'), got {triple!r}")


def system_name(config: ml_collections.ConfigDict) -> str:
  """The trained student's name: eval.system, else from the loss weights, as the demo names its students
  (optical = OT + ranking term, ot_only, contrastive, mse_distill, optical_mse), with `_mixM` for eval.mix < 1."""
  if config.eval.system:
    return config.eval.system
  ot, mse, rank = config.loss.ot_weight, config.loss.mse_weight, config.loss.rank_weight
  if mse:
    name = "optical_mse" if ot else "mse_distill"
  elif ot:
    name = "optical" if rank else "ot_only"
  else:
    name = "contrastive"
  return name if config.eval.mix == 1.0 else f"{name}_mix{config.eval.mix:g}"


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
