"""The one way to build a train state and its jitted step, so that the step compiles once.

A jitted function compiles again whenever an argument's placement, dtype or weak type differs from
the call before. A state built ad hoc (`TrainState(jnp.int32(0), params, jax.jit(opt.init)(params))`)
holds uncommitted arrays on the first call, while the step returns committed ones: the second call
compiled again. `create_train_state` places every leaf
as the step returns it, and `jit_train_step` pins those placements as the step's input and output
shardings, so call 1, call 2 and every later call share one program.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vllava_jax.sharding import state_shardings
from vllava_jax.train.step import TrainState, train_step


def place_on_mesh(tree, mesh: Mesh):
    """Each leaf committed to `mesh`: one already placed on it stays, any other is replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def target(x):
        sharding = getattr(x, "sharding", None)
        return sharding if isinstance(sharding, NamedSharding) and sharding.mesh == mesh else replicated

    return jax.device_put(tree, jax.tree.map(target, tree))


def shardings_of(tree):
    """The placement of every leaf of a placed tree (the form jit's in/out shardings take)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def train_state_shardings(trainable: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Where each leaf of the train state lives on `mesh`: parameters by their logical axes
    (`sharding.state_shardings`), each optimizer moment with its parameter, scalars replicated.
    `trainable` may be abstract (`nnx.eval_shape`)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = state_shardings(trainable, mesh)
    by_path = {_dict_keys(path): sharding for path, sharding in jax.tree_util.tree_flatten_with_path(params)[0]}

    def moment(path, x):
        # A moment sits like the parameter whose path ends its own: parameter groups
        # (`optax.multi_transform`, LoRA's projector rate) nest moments under a label, where
        # `optax.tree_map_params` cannot follow them.
        keys = _dict_keys(path)
        found = [by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path]
        return found[0] if found and x.ndim else replicated

    opt_state = jax.tree_util.tree_map_with_path(moment, jax.eval_shape(optimizer.init, trainable))
    return TrainState(replicated, params, opt_state)


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def create_train_state(trainable: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Step 0 of training `trainable` with `optimizer`, every leaf committed to its
    `train_state_shardings` placement (moments created there, never whole on one device); the
    step counter int32, never weakly typed."""
    shardings = train_state_shardings(trainable, optimizer, mesh)
    params = jax.device_put(trainable, shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params, opt_state)


def abstract_train_state(trainable: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """`create_train_state`'s result as shapes, dtypes and placements only (ahead-of-time compilation)."""
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, jax.eval_shape(optimizer.init, trainable))
    return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes,
                        train_state_shardings(trainable, optimizer, mesh))


def jit_train_step(graphdef, optimizer: optax.GradientTransformation, state: TrainState, frozen: nnx.State,
                   batch_sharding: Any) -> Callable[[TrainState, nnx.State, Any], tuple[TrainState, dict]]:
    """`train_step` jitted as `step(state, frozen, batches) -> (state, metrics)`, the state donated.

    `state` (from `create_train_state`) and `frozen` (placed, e.g. by `place_on_mesh`) give the
    input and output placements; `batch_sharding` those of the batches (one sharding for every
    leaf, or a tree of them). Gradients are pinned to the parameters' placements.
    """
    state_sharding, frozen_sharding = shardings_of(state), shardings_of(frozen)
    step = functools.partial(train_step, graphdef, optimizer, param_shardings=state_sharding.params)
    platform = next(iter(jax.tree.leaves(state_sharding)[0].device_set)).platform
    return jax.jit(step, in_shardings=(state_sharding, frozen_sharding, batch_sharding),
                   out_shardings=(state_sharding, None), donate_argnums=0,
                   compiler_options=TPU_COMPILER_OPTIONS if platform == "tpu" else None)


# XLA's TPU partitioner may run an FSDP-split decoder's matmuls as windowed einsums (activation
# blocks passed around the ring) instead of gathering each layer's weights: it did for stage 2 on
# v5p-64, at twice the model FLOPs and three times the HBM bytes (benchmarks/BENCHMARKS.md); with
# these off it gathers the weights, as on the larger slices.
TPU_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                        "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
