"""The sharded train step: same losses on every mesh as on one device; no recompilation; skipped non-finite steps."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from optical_jax import config as config_lib
from optical_jax import sharding
from optical_jax import train_step as ts
from optical_jax.data import synthetic, training_data


def _setup(mesh_shape, devices=None, overrides=()):
  config = config_lib.load_config("configs/tiny.py", ["data.num_examples=128", *overrides])
  config.mesh = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, mesh_shape)))
  mesh = sharding.create_mesh(config.mesh, devices)
  data = training_data.build(config, None)
  model, _ = training_data.build_student(config, data)
  tx = ts.make_optimizer(config)
  state, shardings = ts.create_train_state(model, tx, config, mesh, jax.random.key(config.seed))
  step = ts.jit_train_step(model, tx, config, mesh, shardings, data.batch_ranks)
  return config, mesh, data, state, shardings, step


def _run(mesh_shape, devices=None, steps=3, overrides=()):
  config, mesh, data, state, _, step = _setup(mesh_shape, devices, overrides)
  losses = []
  with sharding.mesh_context(mesh):
    for i in range(steps):
      idx = np.arange(i * config.train.batch_size, (i + 1) * config.train.batch_size) % data.num_examples
      state, metrics = step(state, sharding.global_batch(data.load_rows(idx), mesh))
      losses.append(float(metrics["loss"]))
  return np.array(losses), state, step


@pytest.fixture(scope="module")
def single_device_run():
  return _run((1, 1, 1), jax.devices()[:1])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_sharded_losses_equal_one_device(mesh_shape, single_device_run):
  reference, ref_state, _ = single_device_run
  losses, state, step = _run(mesh_shape)
  np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
  assert losses[-1] < losses[0]
  assert step._cache_size() == 1  # compiled once, reused for steps 2 and 3
  ref_leaf = jax.tree.leaves(ref_state.params)[0]
  assert np.isfinite(np.asarray(jax.tree.leaves(state.params)[0])).all() and ref_leaf is not None


def test_params_and_opt_state_are_created_sharded():
  _, mesh, _, state, shardings, _ = _setup((2, 2, 2))
  qkv = [s for p, s in jax.tree_util.tree_leaves_with_path(shardings.params) if "qkv" in jax.tree_util.keystr(p)
         and "kernel" in jax.tree_util.keystr(p)]
  assert qkv and qkv[0].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.mesh.shape == mesh.shape


def test_nonfinite_step_is_skipped_and_counted():
  config, mesh, data, state, _, step = _setup((8, 1, 1))
  batch = data.load_rows(np.arange(config.train.batch_size))
  bad = dict(batch, teacher_tokens=np.full_like(batch["teacher_tokens"], np.nan))
  before = jax.device_get(state.params)
  with sharding.mesh_context(mesh):
    state, metrics = step(state, sharding.global_batch(bad, mesh))
  assert int(metrics["skipped_steps"]) == 1
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_frozen_word_embeddings_do_not_move():
  config, mesh, data, state, _, step = _setup((8, 1, 1), overrides=["student.freeze_word_embeddings=True"])
  before = jax.device_get(state.params)
  with sharding.mesh_context(mesh):
    state, _ = step(state, sharding.global_batch(data.load_rows(np.arange(config.train.batch_size)), mesh))
  after = jax.device_get(state.params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(before))
  flat_a = dict(jax.tree_util.tree_leaves_with_path(after))
  moved = {jax.tree_util.keystr(k): not np.array_equal(flat_b[k], flat_a[k]) for k in flat_b}
  assert not any(v for k, v in moved.items() if "word_embeddings" in k)
  assert any(v for k, v in moved.items() if "word_embeddings" not in k)
