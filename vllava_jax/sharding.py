"""Device meshes and the one table that maps logical parameter axes onto them.

Modules name logical axes only (`embed`, `heads`, ...); this file is the only place that names
mesh axes (`data`, `fsdp`, `tensor`). A dimension that does not divide evenly over its mesh axis
is replicated instead of failing, so one rules table serves every model size; `state_shardings`
warns about each such parameter dimension, and `check_sufficiently_sharded` fails when too many
parameter bytes end up replicated that way.

The mesh reaches activations the way it reaches attention (`modeling/attention.py`): the caller
runs its jitted function under `jax.set_mesh(mesh)` (`mesh_context`), and `constrain` reads the
current mesh while tracing.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import ContextManager, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vllava_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
MODEL_AXES = ("fsdp", "tensor")  # the axes that split parameters; data replicates them by design
# MaxText's default tolerance (`assert_params_sufficiently_sharded`)
MAX_REPLICATED_FRACTION = 0.02

# logical axis -> mesh axis (or axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("vision_embed", None),  # the towers are frozen and small next to the decoder: replicate them
    ("vision_mlp", "tensor"),
    ("frames", None),
    # activations: rows over the batch axes, features whole (FSDP gathers weights, not activations)
    ("length", None),
    ("activation_embed", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} does not use the "
                         f"{len(devices)} devices there are")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


class Misfit(NamedTuple):
    """A dimension the rules split over mesh `axes` that its `size` does not divide: replicated instead."""

    dim: int
    name: str
    size: int
    axes: tuple[str, ...]
    ways: int  # the product of those axes' sizes


def place(names: Sequence[str | None], shape: Sequence[int], mesh, rules=DEFAULT_RULES
          ) -> tuple[PartitionSpec, list[Misfit]]:
    """Mesh placement of one array (`mesh` concrete or abstract) and the dimensions left replicated
    because they do not divide; raises on a logical name the rules do not know."""
    table = dict(rules)
    spec, used, misfits = [], set(), []
    for dim, (name, size) in enumerate(zip(names, shape)):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to the rules table")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        ways = math.prod(mesh.shape[a] for a in axes)
        if axes and size % ways == 0:
            spec.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            spec.append(None)
            if axes and ways > 1:
                misfits.append(Misfit(dim, name, size, axes, ways))
    return PartitionSpec(*spec), misfits


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules=DEFAULT_RULES) -> PartitionSpec:
    """Mesh placement of one array; raises on a logical name the rules do not know."""
    return place(names, shape, mesh, rules)[0]


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...]:
    return variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)


class ReplicatedDimensionWarning(UserWarning):
    """A parameter dimension does not divide its mesh axis and is replicated over it."""


def describe(path: str, shape: Sequence[int], misfit: Misfit) -> str:
    return (f"{path} {tuple(shape)}: dimension {misfit.dim} ({misfit.name!r}, size {misfit.size}) does not divide "
            f"mesh axis {' x '.join(misfit.axes)} of size {misfit.ways}")


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
    """A NamedSharding for every variable of an NNX state, from its `out_sharding` names; warns
    (once per parameter and dimension) about each dimension replicated because it does not divide."""

    for path, variable in nnx.to_flat_state(state):
        for misfit in place(logical_names(variable), variable.shape, mesh, rules)[1]:
            # the same text is shown once (Python's default warning filter)
            warnings.warn(f"replicated: {describe(path_name(path), variable.shape, misfit)}",
                          ReplicatedDimensionWarning, stacklevel=2)

    def one(variable):
        return variable.replace(NamedSharding(mesh, logical_to_spec(logical_names(variable), variable.shape, mesh,
                                                                    rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def path_name(path) -> str:
    """`language_model/layers/attn/q/kernel` from an NNX state path."""
    return "/".join(map(str, path))


def shard_state(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    return jax.device_put(state, state_shardings(state, mesh, rules))


def check_sufficiently_sharded(state: nnx.State, mesh, rules=DEFAULT_RULES,
                               max_replicated_fraction: float = MAX_REPLICATED_FRACTION) -> None:
    """Fail when more than `max_replicated_fraction` of the parameter bytes a device holds are
    copies the rules meant to split over fsdp x tensor (MaxText's `assert_params_sufficiently_sharded`).

    The measure is against what the rules ask, not against fsdp x tensor: dimensions the rules
    replicate on purpose (the towers' `vision_embed`, `layers`, `head_dim`) and pure data-parallel
    meshes (fsdp = tensor = 1) replicate nothing by mistake. A leaf's excess is what a device holds
    of it minus what it would hold were every dimension the rules split divisible.
    """
    held, excess = 0.0, []
    for path, variable in nnx.to_flat_state(state):
        if not isinstance(variable, nnx.Param):
            continue
        spec, misfits = place(logical_names(variable), variable.shape, mesh, rules)
        split = math.prod(mesh.shape[a] for entry in spec for a in ((entry,) if isinstance(entry, str) else entry or ())
                          if a in MODEL_AXES)
        lost = math.prod(mesh.shape[a] for m in misfits for a in m.axes if a in MODEL_AXES)
        nbytes = math.prod(variable.shape) * variable.get_value().dtype.itemsize / split
        held += nbytes
        if lost > 1:
            excess.append((nbytes * (1 - 1 / lost), path_name(path), variable.shape, misfits))
    fraction = sum(e[0] for e in excess) / held if held else 0.0
    if fraction > max_replicated_fraction:
        worst = sorted(excess, key=lambda e: e[0], reverse=True)[:3]
        named = "; ".join(f"{describe(path, shape, m)} ({lost_bytes / 2 ** 20:.3g} MiB per device)"
                          for lost_bytes, path, shape, misfits in worst for m in misfits[:1])
        raise ConfigError(f"{fraction:.1%} of the parameter bytes each device holds are replicated over fsdp x "
                          f"tensor, more than max_replicated_fraction={max_replicated_fraction:g} allows; the "
                          f"largest: {named}. Choose mesh sizes that divide these dimensions, or raise "
                          "max_replicated_fraction")


def mesh_context(mesh: Mesh | None) -> ContextManager:
    """`jax.set_mesh(mesh)`: what a jitted call runs under so that `constrain` and attention see
    the mesh while tracing; nothing for a model on one device (`mesh` None)."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pin an activation's placement by logical names on the current mesh (`jax.set_mesh`); a
    no-op without one, or on a mesh that is not ours (no data/fsdp/tensor axes).

    Without it XLA may keep FSDP-sharded weights in place and replicate the activations instead.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
