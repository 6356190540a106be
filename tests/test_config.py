"""Config loading, overrides and validation: every mistake is one UserError line naming the field."""
import pytest

from optical_jax import config as config_lib
from optical_jax.config_schema import SCHEMA
from optical_jax.errors import UserError

TINY = "configs/tiny.py"


def test_tiny_loads_and_validates():
  config = config_lib.load_config(TINY)
  config_lib.validate(config, num_devices=8)
  assert config.train.batch_size == 32


def test_overrides_are_typed():
  config = config_lib.load_config(TINY, ["train.steps=7", "ot.epsilon=1", "ot.grad=unroll", "data.strict=True"])
  assert config.train.steps == 7 and isinstance(config.ot.epsilon, float) and config.ot.epsilon == 1.0
  assert config.ot.grad == "unroll" and config.data.strict is True


@pytest.mark.parametrize("override, field", [
    ("train.stepz=3", "train.stepz"),
    ("nope.a=1", "nope"),
    ("train.steps=abc", "train.steps"),
    ("ot.grad=sideways", "ot.grad"),
    ("ot.epsilon=0", "ot.epsilon"),
    ("loss.ot_weight=0", "every loss weight is 0"),
    ("loss.rank_temperature=0", "loss.rank_temperature"),
    ("loss.rank_hard_negatives=-1", "loss.rank_hard_negatives"),
    ("loss.rank_scorer=bm25", "loss.rank_scorer"),
    ("eval.mix=1.5", "eval.mix"),
    ("train.eval_every=10", "train.eval_every needs held-out pairs to score: set data.dev_pairs"),
    ("data.length_group=8", "data.length_group groups batches by length bucket: set data.length_buckets"),
    ("data.dev_pairs=-1", "data.dev_pairs"),
    ("student.keep_layers=1", "student.keep_layers=1: it cuts a pretrained init"),  # TINY is a random init
])
def test_bad_override_names_the_field(override, field):
  with pytest.raises(UserError, match=field.replace(".", r"\.")):
    config_lib.load_config(TINY, [override])


def test_optional_keys_get_defaults_and_take_overrides():
  config = config_lib.load_config(TINY, ["ot.tau_teacher=0.5", "ot.lse_mode=False", "train.stop_vote_every=4"])
  assert config.ot.tau_teacher == 0.5 and config.ot.tau_student == 1.0 and config.ot.lse_mode is False
  assert config.train.stop_vote_every == 4
  with pytest.raises(UserError, match="ot.tau_teacher"):
    config_lib.load_config(TINY, ["ot.tau_teacher=0"])
  with pytest.raises(UserError, match="lse_mode"):
    config_lib.load_config(TINY, ["ot.lse_mode=False", "ot.grad=implicit"])


def test_batch_not_divisible_by_data_shards():
  config = config_lib.load_config(TINY, ["train.batch_size=12", "mesh.data=8"])
  with pytest.raises(UserError, match="batch_size=12"):
    config_lib.validate(config, num_devices=8)


def test_mesh_product_must_match_devices():
  config = config_lib.load_config(TINY, ["mesh.data=3", "mesh.fsdp=1"])
  with pytest.raises(UserError, match="mesh"):
    config_lib.validate(config, num_devices=8)


def test_missing_config_file():
  with pytest.raises(UserError, match="no such config file"):
    config_lib.load_config("configs/does_not_exist.py")


def _config_file(tmp_path, edit: str) -> str:
  """configs/tiny.py with one line of `edit` applied to its config before it is returned."""
  source = open(TINY, encoding="utf-8").read().replace("  return c\n", f"  {edit}\n  return c\n")
  path = tmp_path / "edited.py"
  path.write_text(source)
  return str(path)


@pytest.mark.parametrize("edit, message", [
    ("c.ot.tokns = 'content'", "unknown config key 'ot.tokns' (did you mean 'ot.tokens'?)"),
    ("c.extra = ml_collections.ConfigDict(dict(a=1))", "unknown config key 'extra.a'"),
    ("c.ot.tokens = 'some'", "ot.tokens: must be one of 'all', 'content', got 'some'"),
    # ConfigDict refuses a type change of a field it holds: these files build the field anew.
    ("del c.train['steps']; c.train.steps = '200'", "train.steps: expected int, got '200'"),
    ("del c.data['strict']; c.data.strict = 1", "data.strict: expected bool, got 1"),
    ("del c.ot['iterations']; c.ot.iterations = 30.0", "ot.iterations: expected int, got 30.0"),
    ("c.data.length_buckets = (16.0,)", "data.length_buckets: expected a tuple of ints"),
    ("del c.ot['epsilon']", "missing required key 'ot.epsilon'"),
])
def test_a_config_file_gets_the_same_checks_as_an_override(tmp_path, edit, message):
  path = _config_file(tmp_path, edit)
  with pytest.raises(UserError) as error:
    config_lib.load_config(path)
  assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_file_values_are_coerced_and_every_schema_key_is_filled(tmp_path):
  config = config_lib.load_config(_config_file(tmp_path, "del c.train['lr']; c.train.lr = 1; c.data.length_buckets = [8, 16]"))
  assert config.train.lr == 1.0 and isinstance(config.train.lr, float) and config.data.length_buckets == (8, 16)
  flat = {f"{s}.{k}" for s, section in config.items() if hasattr(section, "items") for k in section}
  assert flat | {"seed"} == set(SCHEMA)
  assert config.eval.k == 100 and config.bench.steps == 10  # sections tiny.py leaves out come from the schema


def test_workdir_config_json_round_trips(tmp_path):
  config = config_lib.load_config(TINY, ["train.steps=7", "data.length_buckets=(8, 16)"])
  path = tmp_path / "config.json"
  path.write_text(config_lib.to_json(config))
  import etils.epath
  assert config_lib.from_json(etils.epath.Path(path)).to_dict() == config.to_dict()


def test_ot_options_are_checked_once_for_config_and_loss():
  import numpy as np
  from optical_jax import losses
  with pytest.raises(UserError, match="ot.iterations must be a positive integer"):
    config_lib.load_config(TINY, ["ot.iterations=0"])
  x, m = np.ones((1, 2, 4), np.float32), np.ones((1, 2), bool)
  with pytest.raises(UserError, match="ot.iterations must be a positive integer"):
    losses.ot_alignment_loss(x, m, x, m, epsilon=0.1, iterations=0)
