"""Device mesh from `config.mesh`, logical-axis rules, and the shardings of state and batches.

Axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state sharded), `tensor`
(Megatron-style splits of heads / MLP / vocabulary). The batch is split over data x fsdp.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from optical_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Parameters: names used by models/bert.py. Activations carry an `act_` prefix so that a parameter's embed axis can be
# fsdp-sharded while the activations' embed axis stays whole (the batch already uses fsdp).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; one axis may be -1 to take the remaining devices."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise UserError(f"config: only one of mesh.data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}")
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise UserError(f"config: mesh.{axis} must be >= 1 or -1, got {size}")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise UserError(f"config: mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the {num_devices} devices")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(
        f"config: mesh.data*mesh.fsdp*mesh.tensor = {math.prod(sizes)} but there are {num_devices} devices "
        f"(mesh {dict(zip(MESH_AXES, sizes))}; set one axis to -1 to fill)")
  return tuple(sizes)


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: the linen logical-partitioning recipe breaks under jax.make_mesh's default Explicit axes.
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def data_sharding(mesh: Mesh, rank: int = 2) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (rank - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes (unannotated → replicated)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows of the batch (multi-host: each host passes only its slice)."""
  return {k: jax.make_array_from_process_local_data(data_sharding(mesh, v.ndim), v) for k, v in local_batch.items()}


def process_batch_slice(global_batch_size: int, mesh: Mesh) -> slice:
  """Rows of the global batch this process feeds: its devices' share, in mesh order."""
  sharding = data_sharding(mesh, 1)
  rows = sorted({idx[0].start or 0 for d, idx in sharding.devices_indices_map((global_batch_size,)).items()
                 if d.process_index == jax.process_index()})
  per_device = global_batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
  start, stop = rows[0], rows[-1] + per_device
  if stop - start != len(rows) * per_device:
    raise ValueError("this process's batch rows are not contiguous; use a mesh with processes along data/fsdp")
  return slice(start, stop)


def mesh_context(mesh: Mesh) -> contextlib.ExitStack:
  """What every trace of the model needs: the mesh and the logical-axis rules."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
  return stack
