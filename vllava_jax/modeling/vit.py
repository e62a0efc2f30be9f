"""CLIP ViT tower, with LanguageBind's optional per-layer temporal attention for videos.

Videos enter with frames folded into the batch, (batch * frames, 3, H, W), frames inner, as
both transformers and the original project fold them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax.config import DTypePolicy, VisionConfig
from vllava_jax.modeling.attention import bidirectional_attention
from vllava_jax.modeling.layers import Dense, LayerNorm, activation, param, scan_layers, stacked
from vllava_jax.sharding import constrain


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention with biased q/k/v/out projections (CLIPAttention)."""

    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        heads = (cfg.num_attention_heads, cfg.head_dim)
        embed = (cfg.hidden_size,)
        split = dict(in_axes=("vision_embed",), out_axes=("heads", "head_dim"), use_bias=True, policy=policy, rngs=rngs)
        self.q = Dense(embed, heads, **split)
        self.k = Dense(embed, heads, **split)
        self.v = Dense(embed, heads, **split)
        self.o = Dense(heads, embed, ("heads", "head_dim"), ("vision_embed",), use_bias=True, policy=policy, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.o(bidirectional_attention(self.q(x), self.k(x), self.v(x)))


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        self.fc1 = Dense((cfg.hidden_size,), (cfg.intermediate_size,), ("vision_embed",), ("vision_mlp",),
                         use_bias=True, policy=policy, rngs=rngs)
        self.fc2 = Dense((cfg.intermediate_size,), (cfg.hidden_size,), ("vision_mlp",), ("vision_embed",),
                         use_bias=True, policy=policy, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class TemporalAttention(nnx.Module):
    """LanguageBind's temporal block: tokens attend across frames at the same patch position."""

    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        self.embedding = param(rngs, (cfg.num_frames, cfg.hidden_size), ("frames", "vision_embed"),
                               policy.param_dtype)
        self.layer_norm = LayerNorm(cfg.hidden_size, "vision_embed", cfg.layer_norm_eps, policy, rngs)
        self.attn = VisionAttention(cfg, policy, rngs)

    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        bt, n, d = x.shape
        # (b t) n d -> (b n) t d
        x = x.reshape(bt // num_frames, num_frames, n, d).transpose(0, 2, 1, 3)
        x = x + self.embedding[...][:num_frames].astype(x.dtype)
        x = x + self.attn(self.layer_norm(x).reshape(-1, num_frames, d)).reshape(x.shape)
        return x.transpose(0, 2, 1, 3).reshape(bt, n, d)


class VisionLayer(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        self.temporal = TemporalAttention(cfg, policy, rngs) if cfg.add_time_attn else None
        self.layer_norm1 = LayerNorm(cfg.hidden_size, "vision_embed", cfg.layer_norm_eps, policy, rngs)
        self.attn = VisionAttention(cfg, policy, rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, "vision_embed", cfg.layer_norm_eps, policy, rngs)
        self.mlp = VisionMLP(cfg, policy, rngs)

    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        if self.temporal is not None:
            x = self.temporal(x, num_frames)
        x = x + self.attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionTower(nnx.Module):
    """Patch embedding, CLS token, learned positions, pre-layernorm, scanned encoder layers.

    The post-layernorm is kept (checkpoints hold it) but Video-LLaVA reads an intermediate hidden
    state, to which it is never applied.
    """

    def __init__(self, cfg: VisionConfig, policy: DTypePolicy, rngs: nnx.Rngs, remat: bool | str = False):
        self.cfg = cfg
        self.policy = policy
        self.remat = remat
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        self.patch_kernel = param(rngs, (p, p, c, d), (None, None, None, "vision_embed"), policy.param_dtype)
        self.class_embedding = param(rngs, (d,), ("vision_embed",), policy.param_dtype)
        self.position_embedding = param(rngs, (cfg.num_positions, d), (None, "vision_embed"), policy.param_dtype)
        self.pre_layernorm = LayerNorm(d, "vision_embed", cfg.layer_norm_eps, policy, rngs)
        self.layers = stacked(lambda r: VisionLayer(cfg, policy, r), cfg.num_hidden_layers, rngs)
        self.post_layernorm = LayerNorm(d, "vision_embed", cfg.layer_norm_eps, policy, rngs)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """(N, C, H, W) pixels -> (N, 1 + patches, D) tokens after pre-layernorm.

        The patch conv (stride = kernel) is a matmul over flattened patches.
        """
        n, c, h, w = pixel_values.shape
        p = self.cfg.patch_size
        dtype = self.policy.compute_dtype
        patches = pixel_values.astype(dtype).reshape(n, c, h // p, p, w // p, p)
        patches = patches.transpose(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)
        kernel = self.patch_kernel[...].astype(dtype).reshape(p * p * c, -1)
        x = patches @ kernel
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dtype), (n, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(dtype)
        return self.pre_layernorm(x)

    def hidden_states(self, pixel_values: jax.Array, indices: tuple[int, ...], num_frames: int = 1) -> list[jax.Array]:
        """Hidden states at `indices` (0 = embeddings, i = after layer i, negatives count from the end).

        Only the layers up to the deepest requested index run.
        """
        total = self.cfg.num_hidden_layers + 1
        wanted = [i % total for i in indices]
        depth = max(wanted)
        x = self.embed(pixel_values)
        collect = len(set(wanted) - {0, depth}) > 0

        def body(layer: VisionLayer, h: jax.Array, _) -> tuple[jax.Array, jax.Array | None]:
            h = constrain(layer(h, num_frames), ("batch", "length", "activation_embed"))
            return h, (h if collect else None)

        last, every = scan_layers(self.layers, x, body, length=depth, remat=self.remat)
        if collect:
            every = jnp.concatenate([x[None], every], axis=0)
            return [every[i] for i in wanted]
        return [x if i == 0 else last for i in wanted]
