"""Hardware and model-size configs: same key schema as configs/tiny.py, meshes and batches that fit the
device counts their docstrings state, launch commands in the docstrings, SET_ME placeholders."""
import importlib.util
import math
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["mbert_base", "xlmr_base", "tpu_v4_32", "tpu_v5e_256", "gpu_8xh100"]
HARDWARE = {"tpu_v4_32": "launch/tpu_vm.sh run", "tpu_v5e_256": "launch/tpu_vm.sh run",
            "gpu_8xh100": "launch/gpu_single_host.sh"}
ARGS = [None, "random", "synthetic", "/models/student-hf"]


def load(name):
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get(name, arg=None):
  module = load(name)
  return module.get_config() if arg is None else module.get_config(arg)


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


TINY = flatten(get("tiny").to_dict())


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("name", CONFIGS)
def test_same_keys_and_value_types_as_tiny(name, arg):
  flat = flatten(get(name, arg).to_dict())
  assert set(flat) == set(TINY), f"extra {set(flat) - set(TINY)}, missing {set(TINY) - set(flat)}"
  for key, value in flat.items():
    expected = type(TINY[key]).__name__
    assert type(value) is type(TINY[key]), f"{name}:{key} is {type(value).__name__}, tiny has {expected}"


def documented(name):
  doc = load(name).__doc__
  devices = re.search(r"^Devices: (\d+|any)\b", doc, re.M)
  assert devices, f"{name}: docstring has no 'Devices: N' line"
  return doc, devices.group(1)


@pytest.mark.parametrize("name", CONFIGS)
def test_mesh_and_batch_fit_documented_devices(name):
  doc, devices = documented(name)
  c = get(name, "random")
  axes = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
  assert c.mesh.tensor == 1  # d=768: tensor parallelism only adds collectives
  if devices == "any":
    assert axes.count(-1) == 1 and c.mesh.data == -1
    # Any power-of-two device count up to 128 must divide the global batch.
    assert c.train.batch_size % 128 == 0
    return
  n = int(devices)
  assert -1 not in axes and math.prod(axes) == n, f"{name}: mesh {axes} != {n} devices"
  assert c.train.batch_size % (c.mesh.data * c.mesh.fsdp) == 0
  per_device = re.search(r"Global batch (\d+) pairs\s+=\s+(\d+) per (?:chip|GPU)", doc)
  assert per_device, f"{name}: docstring does not state the global and per-device batch"
  assert int(per_device.group(1)) == c.train.batch_size
  assert int(per_device.group(2)) * n == c.train.batch_size
  mesh_line = re.search(r"Mesh:\s+data=(\d+) x fsdp=(\d+) x tensor=(\d+)", doc)
  assert mesh_line and [int(g) for g in mesh_line.groups()] == axes


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_holds_launch_command(name):
  doc = load(name).__doc__
  assert f"optical-jax train --config configs/{name}.py" in doc
  assert "optical-jax precompute-teacher" in doc or "--task precompute-teacher" in doc
  if name in HARDWARE:
    assert HARDWARE[name] in doc
  if name.startswith("tpu_"):
    assert "OPTICAL_JAX_DISTRIBUTED=1 optical-jax train" in doc


@pytest.mark.parametrize("name", CONFIGS)
def test_config_arg_selects_student_init_and_placeholders(name):
  bare = get(name)
  assert (bare.student.init, bare.teacher.path, bare.data.bitext) == ("SET_ME",) * 3
  real = get(name, "/models/student-hf")
  assert real.student.init == "/models/student-hf"
  assert (real.teacher.path, real.data.bitext) == ("SET_ME", "SET_ME")
  assert get(name, "random").student.init == "random"
  smoke = get(name, "synthetic")
  assert (smoke.student.init, smoke.teacher.path, smoke.data.bitext) == ("random", "synthetic", "synthetic")


EXPECTED_DIMS = {
    "mbert_base": ("bert", 119547, 512),
    "xlmr_base": ("xlm-roberta", 250002, 514),
    "tpu_v4_32": ("xlm-roberta", 250002, 514),
    "tpu_v5e_256": ("xlm-roberta", 250002, 514),
    "gpu_8xh100": ("xlm-roberta", 250002, 514),
}


def bert_param_count(s):
  """Independent count of a BERT/XLM-R encoder's parameters (embeddings, layers, pooler)."""
  d, ff = s.hidden_size, s.intermediate_size
  type_vocab = 2 if s.model_type == "bert" else 1
  embeddings = (s.vocab_size + s.max_position_embeddings + type_vocab) * d + 2 * d
  layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
  return embeddings + s.num_layers * layer + d * d + d


@pytest.mark.parametrize("name", CONFIGS)
def test_student_dims_and_documented_size(name):
  s = get(name, "random").student
  model_type, vocab, positions = EXPECTED_DIMS[name]
  assert (s.model_type, s.vocab_size, s.max_position_embeddings) == (model_type, vocab, positions)
  assert (s.hidden_size, s.num_layers, s.num_heads, s.intermediate_size) == (768, 12, 12, 3072)
  assert s.dtype == "bfloat16"
  claimed = re.findall(r"(\d+)M (?:of the \d+M )?params", load(name).__doc__)
  total = bert_param_count(s)
  assert claimed, f"{name}: docstring states no parameter count"
  assert any(abs(int(m) * 1e6 - total) < 1e6 for m in claimed), (claimed, total)
  # The word-embedding share the docstrings reason about.
  assert f"{round(s.vocab_size * s.hidden_size / 1e6)}M" in load(name).__doc__


def test_validation_rejects_set_me():
  config_module = pytest.importorskip("optical_jax.config")
  validate = getattr(config_module, "validate", None)
  if validate is None:
    pytest.skip("optical_jax.config has no validate()")
  from optical_jax.errors import UserError
  c = get("xlmr_base", "/models/student-hf")
  try:
    validate(c)
  except UserError as e:
    assert "teacher.path" in str(e) or "data.bitext" in str(e) or "SET_ME" in str(e), str(e)
  except TypeError as e:
    pytest.skip(f"validate() has another signature: {e}")
  else:
    pytest.fail("validate() accepted teacher.path='SET_ME'")


@pytest.mark.parametrize("name", CONFIGS)
def test_project_loader_validates_smoke_variant_on_its_device_count(name):
  """The CLI's own loader and validator accept each config (synthetic variant) at its device count,
  and with the `--config.mesh.data=-1` the GPU launch scripts add for other GPU counts."""
  config_lib = pytest.importorskip("optical_jax.config")
  _, devices = documented(name)
  n = 8 if devices == "any" else int(devices)
  spec = f"{REPO / 'configs' / name}.py:synthetic"
  config_lib.validate(config_lib.load_config(spec), num_devices=n)
  config_lib.validate(config_lib.load_config(spec, ["mesh.data=-1"]), num_devices=n)


@pytest.mark.parametrize("name", CONFIGS)
def test_synthetic_smoke_variant_fits_host_memory(name):
  # The synthetic generator holds every example's f32 teacher tokens in host RAM, on every host.
  c = get(name, "synthetic")
  assert c.data.num_examples >= c.train.batch_size
  assert c.data.num_examples * c.data.max_len_teacher * c.teacher.dim * 4 <= 4e9
