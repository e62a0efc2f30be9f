"""The `mlp2x_gelu` projector shared by images and videos: linear, GELU, linear."""

from __future__ import annotations

import jax
from flax import nnx

from vllava_jax.config import DTypePolicy
from vllava_jax.modeling.layers import Dense, activation


class Projector(nnx.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str, use_bias: bool, policy: DTypePolicy, rngs: nnx.Rngs):
        self.linear_1 = Dense((in_dim,), (out_dim,), ("vision_embed",), ("mlp",), use_bias=use_bias,
                              policy=policy, rngs=rngs)
        self.act = activation(act)
        self.linear_2 = Dense((out_dim,), (out_dim,), ("mlp",), ("embed",), use_bias=use_bias, policy=policy,
                              rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(features)))
