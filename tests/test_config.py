"""Config loading, overrides and validation: every mistake is one UserError line naming the field."""
import pytest

from optical_jax import config as config_lib
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
