"""Building blocks shared by the towers and the decoder: annotated params, dense, norms, scanned layers.

Attention lives in `vllava_jax.modeling.attention` (chosen per platform).

Every parameter carries logical axis names (`out_sharding` metadata); `vllava_jax.sharding` maps
them onto a mesh. Eager sharding is off per variable: placement happens once, in one place.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax.config import DTypePolicy


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], dtype, init: str = "normal") -> nnx.Param:
    """A parameter annotated with logical axis names; random values only matter for tests and init."""
    assert len(shape) == len(axes), (shape, axes)
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        fan_in = shape[0] if len(shape) > 1 else 1
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def matmul_2d(x: jax.Array, kernel: jax.Array, in_ndim: int = 1) -> jax.Array:
    """x's last `in_ndim` dims contracted with kernel's first, as one (rows, in) @ (in, out) matmul.

    Leading dims folded into one row dim and feature dims into one contracting dim (free
    reshapes): the weight gradient then contracts a single dim, which XLA's CPU dot takes as is;
    with (batch, len) left apart it first writes transposed copies of the activations and of the
    output gradient.
    """
    lead, features, out = x.shape[: x.ndim - in_ndim], x.shape[x.ndim - in_ndim:], kernel.shape[in_ndim:]
    y = x.reshape(-1, math.prod(features)) @ kernel.reshape(math.prod(features), -1)
    return y.reshape(*lead, *out)


class Dense(nnx.Module):
    """y = x @ kernel + bias, where kernel's input and output dims may each be split (e.g. into heads).

    `adapter`, when set (`modeling.lora.attach`), adds its low-rank update to the output.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str | None],
        out_axes: Sequence[str | None],
        *,
        use_bias: bool,
        policy: DTypePolicy,
        rngs: nnx.Rngs,
    ):
        self.in_ndim = len(in_shape)
        self.policy = policy
        self.kernel = param(rngs, (*in_shape, *out_shape), (*in_axes, *out_axes), policy.param_dtype)
        self.bias = param(rngs, tuple(out_shape), tuple(out_axes), policy.param_dtype, "zeros") if use_bias else None
        self.adapter = nnx.data(None)  # a `lora.LoraAdapter` once attached

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.policy.compute_dtype
        kernel = self.kernel[...].astype(dtype)
        y = matmul_2d(x.astype(dtype), kernel, self.in_ndim)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        if self.adapter is not None:
            y = y + self.adapter(x)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm with statistics in float32, like torch's autocast keeps them."""

    def __init__(self, dim: int, axis_name: str, eps: float, policy: DTypePolicy, rngs: nnx.Rngs):
        self.eps = eps
        self.policy = policy
        self.scale = param(rngs, (dim,), (axis_name,), policy.param_dtype, "ones")
        self.bias = param(rngs, (dim,), (axis_name,), policy.param_dtype, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.policy.compute_dtype)


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: normalize in float32, cast back, then scale (transformers' order of casts)."""

    def __init__(self, dim: int, eps: float, policy: DTypePolicy, rngs: nnx.Rngs):
        self.eps = eps
        self.policy = policy
        self.scale = param(rngs, (dim,), ("embed",), policy.param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        dtype = self.policy.compute_dtype
        return self.scale[...].astype(dtype) * y.astype(dtype)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` copies of a layer with a leading `layers` axis on every parameter, for scanning."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(layer_rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(layer_rngs)

    return make(rngs)


# What a rematerialized layer keeps for its backward pass; the rest is recomputed there.
REMAT_POLICIES = {
    # matmul outputs without batch dims (the projections): norms, activations and the attention
    # scores/probabilities (batch x heads x len x len per layer) are recomputed
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,  # only each layer's input
}


def remat_policy(remat: bool | str):
    """None (keep every residual) for False/"none"; True means "dots"."""
    name = {True: "dots", False: "none"}.get(remat, remat)
    if name != "none" and name not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} is not a bool or one of {['none', *REMAT_POLICIES]}")
    return REMAT_POLICIES.get(name)


# XLA on NVIDIA GPUs copies a scanned layer's weights out of their stack (a dynamic-slice fusion)
# before its Triton gemms read them; with these options cuBLAS reads them where they lie (XLA's
# dynamic-slice fusion takes the layer index as an address offset), and no two matmuls sharing an
# input are merged into one (XLA's dot merger concatenates their weights first: the key and value
# projections, 64 MiB per layer of the 7B decoder). A decode step, which is all weight reads, moved
# every weight three times instead of once, and the merged pair once more (the 7B decode loop
# compiled for an H200, benchmarks/gpu_weight_copies.py), so the decode programs pass them.
# Compute-bound programs (prefill, training) keep XLA's defaults, Triton gemms included, until a
# GPU measures both. Other platforms ignore these options.
GPU_WEIGHTS_READ_IN_PLACE = {"xla_gpu_enable_dynamic_slice_fusion": True, "xla_gpu_enable_triton_gemm": False,
                             "xla_gpu_dot_merger_threshold_mb": 0}


def scan_layers(
    layers: nnx.Module,
    carry: jax.Array,
    body: Callable[[nnx.Module, jax.Array, Any], tuple[jax.Array, Any]],
    *,
    xs: Any = None,
    length: int | None = None,
    remat: bool | str = False,
    unroll: bool = False,
) -> tuple[jax.Array, Any]:
    """Run the first `length` stacked layers as one compiled body.

    `body(layer, carry, x) -> (carry, y)` sees its layer's slice `x` of `xs` (e.g. its KV cache);
    the `y`s come back stacked along a leading layers axis. `remat` names a `REMAT_POLICIES` entry.
    `unroll` traces the body once per layer, one after another, instead of as a loop: the same
    computation, with no loop for what the backward pass saves to be stacked into and sliced out of.
    """
    graphdef, state = nnx.split(layers)
    if length is not None:
        state = jax.tree.map(lambda a: a[:length], state)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    policy = remat_policy(remat)
    if policy is not None:
        step = jax.checkpoint(step, policy=policy)
    return jax.lax.scan(step, carry, (state, xs), unroll=unroll)
