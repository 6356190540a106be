"""Checkpointer: save and restore round-trip, from a relative local directory too (orbax needs absolute paths)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import checkpointing


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: dict

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def test_relative_directory_round_trip(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state = _State(step=jnp.asarray(3), params={"w": jnp.arange(6.0).reshape(2, 3)}, opt_state={"m": jnp.ones(2)})
  ckpt = checkpointing.Checkpointer("run/checkpoints", keep=1, async_save=False)
  assert ckpt.directory.is_absolute()
  ckpt.save(3, state, {"seed": 0}, force=True)
  ckpt.close()

  again = checkpointing.Checkpointer("run/checkpoints", keep=1, async_save=False)
  assert again.latest_step() == 3
  shardings = jax.tree.map(lambda x: x.sharding, state)
  restored, meta = again.restore(3, state, shardings)
  again.close()
  assert meta == {"seed": 0} and int(restored.step) == 3
  np.testing.assert_array_equal(restored.params["w"], state.params["w"])
