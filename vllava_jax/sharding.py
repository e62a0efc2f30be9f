"""Device meshes and the one table that maps logical parameter axes onto them.

Modules name logical axes only (`embed`, `heads`, ...); this file is the only place that names
mesh axes (`data`, `fsdp`, `tensor`). A dimension that does not divide evenly over its mesh axis
is replicated instead of failing, so one rules table serves every model size.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("pixel_batch", "data"),  # image/video buffers: fewer entries than rows, split between hosts
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


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES) -> PartitionSpec:
    """Mesh placement of one array; raises on a logical name the rules do not know."""
    table = dict(rules)
    spec, used = [], set()
    for name, size in zip(names, shape):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to the rules table")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0:
            spec.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
    """A NamedSharding for every variable of an NNX state, from its `out_sharding` names."""

    def one(variable):
        names = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
        return variable.replace(NamedSharding(mesh, logical_to_spec(names, variable.shape, mesh, rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    return jax.device_put(state, state_shardings(state, mesh, rules))


_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh) -> Iterator[None]:
    """While tracing under this context, `constrain` pins activations onto `mesh` by the rules table."""
    token = _ACTIVATION_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVATION_MESH.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pin an activation's placement by logical names; a no-op outside `activation_sharding`.

    Without it XLA may keep FSDP-sharded weights in place and replicate the activations instead.
    """
    mesh = _ACTIVATION_MESH.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh)))
