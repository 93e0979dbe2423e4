"""Every mesh and PartitionSpec decision: the device mesh and the logical-axis rules.

The model names tensor axes logically (`batch`, `embed`, `mlp`, ...); a rules table
maps those names to the mesh axes `('data', 'fsdp', 'tensor')`, maxtext style. Flax
passes names missing from the rules through unchanged as mesh-axis names, which
silently mis-shards; `logical_to_spec` raises instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
from flax.core import spmd
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis | tuple of mesh axes | None). Parameters shard `embed` over fsdp;
# activations name their model dimension `activation_embed` instead, because their batch
# axis already uses fsdp and a mesh axis may appear only once per spec (maxtext does the same).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("points", None),
    ("length", None),
    ("embed", "fsdp"),
    ("activation_embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("point_tokens", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis lengths; one -1 takes the devices left over by the others."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves the -1 entry; raises when the lengths do not multiply to num_devices."""
  shape = [cfg.data, cfg.fsdp, cfg.tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {cfg}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide into {cfg}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}")
  return tuple(shape)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """An Auto-typed mesh: the GSPMD style with logical rules needs Auto, not Explicit, axes."""
  if devices is None:
    devices = jax.devices()
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def active_rules():
  """The rules set with `nnx.logical_axis_rules`, else DEFAULT_RULES."""
  return tuple(spmd.get_logical_axis_rules()) or DEFAULT_RULES


def logical_to_spec(names: Sequence[str | None], rules=None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; None stays replicated, unknown names raise."""
  table = dict(active_rules() if rules is None else rules)
  axes = []
  for name in names:
    if name is None:
      axes.append(None)
    elif name not in table:
      raise ValueError(f"logical axis {name!r} is not in the sharding rules {sorted(table)}")
    else:
      axes.append(table[name])
  return PartitionSpec(*axes)


def constrain(x: jax.Array, names: Sequence[str | None], rules=None) -> jax.Array:
  """with_sharding_constraint by logical names under the current mesh; a no-op without one."""
  spec = logical_to_spec(names, rules)
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES, ndim: int = 1) -> NamedSharding:
  """Sharding for a data array: leading axis split like `batch`, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))

