"""LLaMA decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU; layers scanned."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax.config import DTypePolicy, TextConfig
from vllava_jax.modeling.layers import Dense, RMSNorm, attention, param, scan_layers, stacked
from vllava_jax.modeling.rope import apply_rotary, inverse_frequencies, rotary_tables


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        e, hd = (cfg.hidden_size,), cfg.head_dim
        common = dict(use_bias=cfg.attention_bias, policy=policy, rngs=rngs)
        self.q = Dense(e, (cfg.num_attention_heads, hd), ("embed",), ("heads", "head_dim"), **common)
        self.k = Dense(e, (cfg.num_key_value_heads, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.v = Dense(e, (cfg.num_key_value_heads, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.o = Dense((cfg.num_attention_heads, hd), e, ("heads", "head_dim"), ("embed",), **common)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array) -> jax.Array:
        q = apply_rotary(self.q(x), cos, sin)
        k = apply_rotary(self.k(x), cos, sin)
        return self.o(attention(q, k, self.v(x), is_causal=True, key_mask=key_mask))


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        e, f = (cfg.hidden_size,), (cfg.intermediate_size,)
        common = dict(use_bias=cfg.mlp_bias, policy=policy, rngs=rngs)
        self.gate = Dense(e, f, ("embed",), ("mlp",), **common)
        self.up = Dense(e, f, ("embed",), ("mlp",), **common)
        self.down = Dense(f, e, ("mlp",), ("embed",), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class LlamaLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
        self.attn = LlamaAttention(cfg, policy, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
        self.mlp = LlamaMLP(cfg, policy, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.input_layernorm(x), cos, sin, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs, remat: bool = False):
        self.cfg = cfg
        self.policy = policy
        self.remat = remat
        self.embed_tokens = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), policy.param_dtype)
        self.layers = stacked(lambda r: LlamaLayer(cfg, policy, r), cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), policy.param_dtype)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens[...].astype(self.policy.compute_dtype)[input_ids]

    def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """(batch, len, embed) inputs -> (batch, len, vocab) logits; causal, padding keys masked."""
        cfg = self.cfg
        inv_freq = inverse_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions)
        cos, sin = rotary_tables(inv_freq, positions, self.policy.compute_dtype)
        key_mask = attention_mask.astype(bool)

        def body(layer: LlamaLayer, h: jax.Array) -> jax.Array:
            return layer(h, cos, sin, key_mask)

        h, _ = scan_layers(self.layers, inputs_embeds.astype(self.policy.compute_dtype), body, remat=self.remat)
        h = self.norm(h)
        head = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return h @ head.astype(h.dtype)
