"""Hardware and model-size configs: same key schema as configs/tiny.py, meshes and batches that fit the
device counts their docstrings state, launch commands in the docstrings, SET_ME placeholders, and a `bench`
section (optical-jax bench knobs) whose documented command and sweep grid fit the same hardware."""
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
  # bench.* are benchmark knobs that configs/tiny.py leaves at their defaults: checked by the bench tests below.
  flat = {k: v for k, v in flatten(get(name, arg).to_dict()).items() if not k.startswith("bench.")}
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
    validate(config_module.conform(c, "xlmr_base"))
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


# --- `optical-jax bench` -------------------------------------------------------------------------------------------

MFU_TOKENS_PER_DEVICE = 8192  # the ">= 8k tokens per step" for the MFU target, per batch shard


def batch_shards(config, devices: str) -> int:
  """data x fsdp on the documented device count; the any-device configs' bench shapes are one device's (their
  docstrings scale the batch with the device count)."""
  from optical_jax import sharding
  data, fsdp, _ = sharding.mesh_shape(config.mesh, 1 if devices == "any" else int(devices))
  return data * fsdp


def bench_command(name):
  """The `optical-jax bench` command of the docstring that runs configs/NAME.py as is (continuation lines joined):
  its config spec and its --config.* overrides."""
  doc = load(name).__doc__.replace("\\\n", " ")
  commands = [line for line in doc.splitlines() if "optical-jax bench" in line and f"configs/{name}.py" in line]
  assert commands, f"{name}: docstring has no `optical-jax bench --config configs/{name}.py...` command"
  words = commands[0].replace('"', " ").split()
  spec = words[words.index("--config") + 1]
  overrides = [w[len("--config."):] for w in words if w.startswith("--config.")]
  return spec, overrides


@pytest.mark.parametrize("name", CONFIGS)
def test_bench_section_holds_known_knobs_of_the_right_types(name):
  from optical_jax import config as config_lib
  from optical_jax.bench import settings
  from optical_jax.config_schema import SCHEMA
  c = get(name, "synthetic")
  assert "bench" in c, f"{name}: no bench section"
  for key, value in c.bench.items():
    assert f"bench.{key}" in SCHEMA, f"{name}: unknown knob bench.{key}"
    assert type(value) is SCHEMA[f"bench.{key}"].type, f"{name}: bench.{key} is {type(value).__name__}"
  resolved = settings.bench_settings(config_lib.conform(c, name))
  assert resolved.steps >= 10 and resolved.warmup_steps >= 1 and resolved.sweep_steps >= 3


@pytest.mark.parametrize("name", CONFIGS)
def test_bench_sweep_fits_the_documented_devices_and_spans_the_mfu_target(name):
  from optical_jax import config as config_lib
  from optical_jax.bench import settings, sweep
  _, devices = documented(name)
  c = config_lib.conform(get(name, "synthetic"), name)
  s = settings.bench_settings(c)
  shards = batch_shards(c, devices)
  n = 1 if devices == "any" else int(devices)
  # The training shape is one of the sweep's points, so the sweep passes through what the config trains at.
  assert c.train.batch_size in s.sweep_batch and c.data.max_len_student in s.sweep_student_len
  assert c.ot.iterations in s.sweep_iterations
  for batch in s.sweep_batch:  # every point runs on the documented hardware: none is skipped
    for length in s.sweep_student_len:
      config_lib.validate(sweep._point(c, batch, length), num_devices=n)  # pylint: disable=protected-access
  tokens = sorted(b * ls // shards for b in s.sweep_batch for ls in s.sweep_student_len)
  assert tokens[0] < MFU_TOKENS_PER_DEVICE <= tokens[-1], f"{name}: sweep tokens per device {tokens}"
  assert tokens[-1] <= 32768  # the largest point stays within the memory estimates of the bench section comments


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_bench_command_targets_mfu_at_8k_tokens_per_device(name):
  from optical_jax.bench import settings
  doc, devices = documented(name)
  assert "MFU >= 40 % in bf16 at >= 8k tokens per step" in doc and "OT share of the step time <= 10 %" in doc
  assert "not measured" in doc and "no GPU or TPU" in doc
  spec, overrides = bench_command(name)
  assert spec == f"configs/{name}.py:synthetic"
  # The CLI's own loader: bench knobs filled in, overrides applied, config validated (no SET_ME left).
  c = settings.load_config(str(REPO / spec), overrides)
  assert c.student.dtype == "bfloat16"
  tokens = c.train.batch_size * c.data.max_len_student // batch_shards(c, devices)
  assert tokens >= MFU_TOKENS_PER_DEVICE, f"{name}: the documented command runs {tokens} tokens per device"
  if name.startswith("tpu_"):
    assert "--worker=all" in doc and "optical-jax bench --distributed" in doc


@pytest.mark.parametrize("name", CONFIGS)
def test_bench_builds_its_synthetic_batches_at_every_sweep_point(name):
  """Batch shapes and per-device shards of the training point and every sweep point, on this machine's 8 CPU
  devices, without allocating them (jax.eval_shape)."""
  import jax
  import numpy as np
  from optical_jax import sharding
  from optical_jax.bench import settings, sweep, train_bench
  c = settings.load_config(f"{REPO / 'configs' / name}.py:synthetic", ["mesh.data=-1"])
  mesh = sharding.create_mesh(c.mesh)
  s = settings.bench_settings(c)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  points = {(c.train.batch_size, c.data.max_len_student)} | {
      (b, ls) for b in s.sweep_batch for ls in s.sweep_student_len if b % shards == 0}
  assert len(points) > 1
  for batch, length in sorted(points):
    point = sweep._point(c, batch, length)  # pylint: disable=protected-access
    shapes = jax.eval_shape(lambda p=point: train_bench.make_batches(
        p, mesh, pad_id=1, vocab_size=c.student.vocab_size, teacher_dim=c.teacher.dim, count=1,
        min_real_frac=s.min_real_frac))[0]
    lt, d = c.data.max_len_teacher, c.teacher.dim
    # The recipe's keys: content-token masks and IDF weights on both sides (batch_spec).
    assert {k: v.shape for k, v in shapes.items()} == {
        "student_ids": (batch, length), "student_mask": (batch, length), "teacher_tokens": (batch, lt, d),
        "teacher_mask": (batch, lt), "student_ot_mask": (batch, length), "teacher_ot_mask": (batch, lt),
        "student_weights": (batch, length), "teacher_weights": (batch, lt)}
    assert shapes["teacher_tokens"].dtype == np.float16 and shapes["student_ids"].dtype == np.int32
    shard = sharding.data_sharding(mesh, 2).shard_shape((batch, length))
    assert shard == (batch // 8, length)


@pytest.mark.slow
def test_bench_runs_a_hardware_config_shrunk_to_this_machine(tmp_path):
  """configs/tpu_v4_32.py's bench section and bf16 step, end to end, with the model and batch shrunk by overrides."""
  import json
  from optical_jax import cli
  shrink = ["--config.mesh.data=-1", "--config.student.num_layers=1", "--config.student.hidden_size=32",
            "--config.student.num_heads=2", "--config.student.intermediate_size=64", "--config.student.vocab_size=128",
            "--config.teacher.dim=32", "--config.train.batch_size=16", "--config.data.max_len_student=8",
            "--config.data.max_len_teacher=8", "--config.data.length_buckets=(4, 8)", "--config.ot.iterations=5",
            "--config.bench.warmup_steps=1",
            "--config.bench.ot_repeats=1"]
  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--config", str(REPO / "configs/tpu_v4_32.py:synthetic"), "--steps", "2",
                   "--json", str(out), *shrink]) == 0
  written = json.loads(out.read_text())
  assert written["config"]["dtype"] == "bfloat16" and written["config"]["ot"]["relative_epsilon"] == "mean"
  assert written["recompiles"] == 0 and written["losses_finite"] and written["timed_steps"] == 2
  assert written["padded_tokens_per_device"] == 16 * 8 / 8
  assert written["targets"]["mfu"]["value"] is None  # CPU, and far below 8k tokens per device: n/a
