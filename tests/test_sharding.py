"""Mesh resolution and batch row ownership."""
import jax
import ml_collections
import pytest

from optical_jax import sharding
from optical_jax.errors import UserError


def _mesh_config(data, fsdp, tensor):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize("cfg, expected", [((-1, 1, 1), (8, 1, 1)), ((4, -1, 1), (4, 2, 1)), ((2, 2, -1), (2, 2, 2)),
                                           ((1, 8, 1), (1, 8, 1))])
def test_mesh_shape_fills(cfg, expected):
  assert sharding.mesh_shape(_mesh_config(*cfg), 8) == expected


@pytest.mark.parametrize("cfg", [(-1, -1, 1), (3, 1, 1), (0, 1, 1), (3, -1, 1)])
def test_mesh_shape_errors(cfg):
  with pytest.raises(UserError, match="mesh"):
    sharding.mesh_shape(_mesh_config(*cfg), 8)


def test_mesh_axes_are_auto_and_batch_split_over_data_fsdp():
  mesh = sharding.create_mesh(_mesh_config(2, 2, 2))
  assert mesh.axis_names == sharding.MESH_AXES
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  spec = sharding.data_sharding(mesh, 3).spec
  assert spec[0] == ("data", "fsdp") and spec[1] is None
  assert sharding.process_batch_slice(32, mesh) == slice(0, 32)  # one process owns every row


def test_subset_mesh_for_one_device():
  mesh = sharding.create_mesh(_mesh_config(1, 1, 1), jax.devices()[:1])
  assert mesh.size == 1
