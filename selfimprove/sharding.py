"""Device mesh, logical-axis rules, and helpers that place arrays on the mesh.

Model code names array dimensions with *logical* axes (`embed`, `heads`, ...).
One rules table maps each logical axis to zero or more *mesh* axes (`data`,
`fsdp`, `tensor`). Changing the parallelism is a change of mesh shape or rules,
never of model code. The same helpers run on 1 CPU, 8 fake CPU devices, a GPU
box or a multi-host TPU pod.

The meshes built here use `AxisType.Auto` on every axis: shardings are given at
the jit boundary and by `constrain`, and XLA's partitioner propagates the rest.
Explicit-sharding meshes (the `jax.make_mesh` default in some jax versions) are
refused with a clear error rather than half-supported.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# A rules table: (logical axis, mesh axis | tuple of mesh axes | None) pairs.
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # Activations and caches.
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_seq", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh with Auto axis types.

  One size may be -1, meaning "all remaining devices". The product of the
  sizes must equal the number of devices (all devices of all processes).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  unknown = [name for name, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f"Only one mesh axis may be -1, got {sizes}.")
  for name, size in sizes.items():
    if size != -1 and (not isinstance(size, int) or size < 1):
      raise ValueError(f"Mesh axis {name!r} must be a positive int or -1, got {size!r}.")
  known = math.prod(size for size in sizes.values() if size != -1)
  if unknown:
    if len(devices) % known:
      raise ValueError(
          f"Mesh {sizes}: {len(devices)} devices are not divisible by the "
          f"fixed axes' product {known}.")
    sizes[unknown[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
        f"Mesh {sizes} needs {math.prod(sizes.values())} devices but "
        f"{len(devices)} are available; set one axis to -1 to take the rest.")
  shape = tuple(sizes[name] for name in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def check_mesh(mesh: Mesh | jax.sharding.AbstractMesh) -> None:
  """Raises if the mesh is not an all-Auto mesh (the only kind supported)."""
  if any(t != AxisType.Auto for t in mesh.axis_types):
    raise ValueError(
        f"selfimprove expects a mesh whose axes are all AxisType.Auto, got "
        f"{dict(zip(mesh.axis_names, mesh.axis_types))}. Build it with "
        f"selfimprove.sharding.make_mesh or pass axis_types=(AxisType.Auto,)*n "
        f"to jax.make_mesh.")


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh_axes: Sequence[str] = MESH_AXES) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec over `mesh_axes`.

  Mesh axes not in `mesh_axes` are dropped (so a rule for `fsdp` is harmless
  on a mesh without it). A mesh axis may shard only one dimension: a later
  dimension that maps to an already-used mesh axis stays replicated.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(
          f"Logical axis {name!r} has no entry in the sharding rules "
          f"{[rule[0] for rule in rules]}; add a rule for it (it may map to None).")
    target = table[name]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    kept = tuple(a for a in targets if a in mesh_axes and a not in used)
    used.update(kept)
    spec.append(kept[0] if len(kept) == 1 else (kept or None))
  return PartitionSpec(*spec)


def _axis_size(mesh: Mesh, entry: str | tuple[str, ...] | None) -> int:
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else entry
  return math.prod(mesh.shape[name] for name in names)


def _path_name(path) -> str:
  """'blocks/attention/q_proj' for a key path into an nnx.State."""
  names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(n for n in names if n != "value")


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for an nnx.State whose Variables carry `out_sharding` names.

  Raises a ValueError naming the parameter when a sharded dimension is not
  divisible by the size of the mesh axes it maps to.
  """
  check_mesh(mesh)
  logical_specs = nnx.get_partition_spec(abstract_state)

  def to_sharding(path, logical_spec, leaf):
    spec = logical_to_spec(tuple(logical_spec), rules, mesh.axis_names)
    shape = getattr(leaf, "shape", ())
    for dim, entry in zip(shape, spec):
      if dim % _axis_size(mesh, entry):
        raise ValueError(
            f"Parameter {_path_name(path)} of shape {shape} cannot be "
            f"sharded as {spec} (logical {tuple(logical_spec)}) on mesh "
            f"{dict(mesh.shape)}: {dim} is not divisible by the size of {entry}. "
            f"Change the mesh shape or the sharding rule for that logical axis.")
    return NamedSharding(mesh, spec)

  specs = jax.tree.map(lambda s: s if s is not None else PartitionSpec(),
                       logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  return jax.tree_util.tree_map_with_path(
      to_sharding, specs, abstract_state,
      is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_sharded(make_module: Any, mesh: Mesh, rules: Rules) -> tuple[nnx.GraphDef, nnx.State]:
  """Builds `make_module()` with every parameter created directly in its shard.

  The module is traced abstractly first to learn parameter shapes and logical
  axes, then created under `jax.jit` with `out_shardings`, so no device ever
  holds the full unsharded model.
  """
  abstract = nnx.eval_shape(make_module)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  create = jax.jit(lambda: nnx.split(make_module())[1], out_shardings=shardings)
  return graphdef, create()


def shard_state(state: Any, mesh: Mesh, rules: Rules) -> Any:
  """Moves an existing nnx.State onto the mesh according to its logical axes."""
  return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_spec(ndim: int, rules: Rules, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for an array whose leading dimension is the batch."""
  return logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh.axis_names)


def shard_batch(batch: Any, mesh: Mesh, rules: Rules) -> Any:
  """Builds global arrays from this process's slice of a batch.

  Each leaf is this process's rows (a numpy array, leading dim = global batch /
  process count); on one process that is simply the whole batch.
  """
  check_mesh(mesh)

  def put(x):
    x = np.asarray(x)
    sharding = NamedSharding(mesh, batch_spec(x.ndim, rules, mesh))
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules) -> jax.Array:
  """Constrains an activation's sharding by logical axis names.

  A no-op outside a mesh context (`jax.set_mesh`), e.g. on a single device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(logical_axes, rules, mesh.axis_names)
  return jax.lax.with_sharding_constraint(x, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def tree_num_bytes(tree: Any) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
