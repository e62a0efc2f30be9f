"""LLaMA decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU; layers scanned
(unrolled in the training forward on NVIDIA GPUs: `LlamaDecoder.hidden_states`).

Two entry points share one layer body: `__call__` runs a whole sequence (training, scoring), and
`cached` writes the new tokens' keys and values into a preallocated KV cache at a slot offset and
attends over every valid slot (generation: one prefill, then one token per step, static shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax.config import DTypePolicy, TextConfig
from vllava_jax.modeling import kv_cache
from vllava_jax.modeling.attention import (NVIDIA_PLATFORMS, causal_attention, compile_platform, environment_override,
                                           masked_attention)
from vllava_jax.modeling.kv_cache import KVCache, SharedKV
from vllava_jax.modeling.layers import Dense, RMSNorm, matmul_2d, param, scan_layers, stacked
from vllava_jax.modeling.rope import apply_rotary, inverse_frequencies, rotary_tables
from vllava_jax.sharding import constrain

ACTIVATION = ("batch", "length", "activation_embed")
LAYERS_OVERRIDE_ENV = "VLLAVA_DECODER_LAYERS"


def unrolls_training_layers(platform: str) -> bool:
    """Whether the decoder's training forward (`LlamaDecoder.hidden_states`) compiled for
    `platform` unrolls its layers: on NVIDIA GPUs, unless the VLLAVA_DECODER_LAYERS environment
    variable ("scanned" or "unrolled", read when a step is traced) says otherwise."""
    forced = environment_override(LAYERS_OVERRIDE_ENV, ("scanned", "unrolled"))
    return forced == "unrolled" if forced else platform in NVIDIA_PLATFORMS


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs):
        e, hd = (cfg.hidden_size,), cfg.head_dim
        common = dict(use_bias=cfg.attention_bias, policy=policy, rngs=rngs)
        self.q = Dense(e, (cfg.num_attention_heads, hd), ("embed",), ("heads", "head_dim"), **common)
        self.k = Dense(e, (cfg.num_key_value_heads, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.v = Dense(e, (cfg.num_key_value_heads, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.o = Dense((cfg.num_attention_heads, hd), e, ("heads", "head_dim"), ("embed",), **common)

    def __call__(self, x, cos, sin, mask, cache=None, slot=None, layer=None):
        """Without `cache`: causal attention over `x`, `mask` being segment ids (batch, len; 0 = padding).

        With `cache` = (keys, values) of every layer: write x's keys/values at (`layer`, `slot`)
        in place, then attend either with the full `mask` (batch, 1, len, slots) over this layer's
        slots, or, where `mask` is segment ids (batch, len), causally over x alone: x was written
        from slot 0, so the slots it may see are its own (`LlamaDecoder.cached`).
        """
        q, k, v = self.project(x, cos, sin)
        if cache is None:
            return self.o(causal_attention(q, k, v, mask)), None
        keys, values = kv_cache.write(cache, (k[None], v[None]), layer, slot)
        if mask.ndim == 2:
            return self.o(causal_attention(q, k, v, mask)), (keys, values)
        out = masked_attention(q, keys[layer].swapaxes(1, 2), values[layer].transpose(0, 3, 1, 2), mask)
        return self.o(out), (keys, values)

    def project(self, x, cos, sin):
        """Queries and keys (rotated) and values of `x`, (batch, len, heads or kv_heads, head_dim)."""
        return apply_rotary(self.q(x), cos, sin), apply_rotary(self.k(x), cos, sin), self.v(x)

    def one_token(self, x, cos, sin, keys, values, earlier, shared=None):
        """Decoding: x (batch, 1, embed) attends to itself and to this layer's cached `keys`/`values`
        (`kv_cache.attend_one_token`'s layout) where `earlier` (batch, slots), and to this layer's
        `shared` entries (`kv_cache.attend_one_token`); returns the output and x's (k, v), for the
        caller to write into the cache."""
        q, k, v = self.project(x, cos, sin)
        return self.o(kv_cache.attend_one_token(q, k, v, keys, values, earlier, shared)), (k, v)


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

    def __call__(self, x, cos, sin, mask, cache=None, slot=None, layer=None):
        h, cache = self.attn(self.input_layernorm(x), cos, sin, mask, cache, slot, layer)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache

    def one_token(self, x, cos, sin, keys, values, earlier, shared=None):
        """`LlamaAttention.one_token`, then the MLP: the layer's output and x's (k, v)."""
        h, new = self.attn.one_token(self.input_layernorm(x), cos, sin, keys, values, earlier, shared)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), new


class LlamaDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, policy: DTypePolicy, rngs: nnx.Rngs, remat: bool | str = False):
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

    def logits(self, hidden: jax.Array) -> jax.Array:
        h = self.norm(hidden)
        head = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return matmul_2d(h, head.astype(h.dtype))

    def _rotary(self, positions: jax.Array):
        cfg = self.cfg
        inv_freq = inverse_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions)
        return rotary_tables(inv_freq, positions, self.policy.compute_dtype)

    def hidden_states(
        self,
        inputs_embeds: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """(batch, len, embed) inputs -> the last layer's output, before the final norm (`logits` applies
        it); causal, padding keys masked.

        With `segment_ids` (batch, len; 0 = padding), several packed samples share a row and a
        token attends only within its own segment; `positions` then restart per segment.

        Compiled for NVIDIA GPUs (the mesh's platform, as attention decides) the layers are
        unrolled, elsewhere scanned (`unrolls_training_layers`). In a scan, XLA's GPU backend
        copies each tensor the backward pass keeps into a stack of all layers' and, in the
        backward loop, out of it again before its Triton gemms read it, and each layer's float32
        weights out of theirs: at `benchmarks.accelerator`'s stage-2 shapes 203 of the 423 GB a
        step moves without remat, 75 of 317 GB with `dots` (BENCHMARKS.md). Unrolled, nothing is
        stacked, and compiling takes longer (twice as long at 32 layers). CPU and TPU keep the
        scan: on a v6e-64 pod unrolling cut the modelled bytes by a fifth but took 3.7 GiB more
        per chip and compiled for minutes.
        """
        cos, sin = self._rotary(positions)
        segments = attention_mask if segment_ids is None else segment_ids  # unpacked: one segment, 0 on padding

        def body(layer: LlamaLayer, h: jax.Array, _):
            return constrain(layer(h, cos, sin, segments)[0], ACTIVATION), None

        h = constrain(inputs_embeds.astype(self.policy.compute_dtype), ACTIVATION)
        unroll = unrolls_training_layers(compile_platform())
        h, _ = scan_layers(self.layers, h, body, remat=self.remat, unroll=unroll)
        return h

    def cached(
        self, inputs_embeds: jax.Array, positions: jax.Array, token_mask: jax.Array, cache: KVCache,
        slot: int | jax.Array, *, columns: jax.Array | None = None, shared: SharedKV | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Run `len` new tokens written at cache slots [slot, slot + len); returns each row's hidden
        state at its last token (the last column where `token_mask` is 1).

        `token_mask` (batch, len) says which new tokens are real (left padding in a prompt is not).
        A token attends to every valid slot up to its own. Written from slot 0 (the int: a prompt),
        those are the new tokens before it, and attention is the decoder's fused causal attention
        over them (`attention.causal_attention`, `token_mask` as segment ids), never an array over
        (len x slots); from any other slot, XLA's attention over the cache. One token per row
        (decoding) may read only the slots `columns` (an index array: those holding the rows'
        tokens, so a step's reads follow what is cached, not the cache's size) and may attend to
        `shared` entries too.
        """
        length = inputs_embeds.shape[1]
        cos, sin = self._rotary(positions)
        h = inputs_embeds.astype(self.policy.compute_dtype)
        if length == 1:
            return self._one_token(h, cos, sin, token_mask, cache, slot, columns, shared)
        if columns is not None or shared is not None:
            raise ValueError("columns and shared are for one token per row (decoding)")
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool), (0, slot))
        if isinstance(slot, int) and slot == 0:
            mask = token_mask.astype(jnp.int32)
        else:
            slots = jnp.arange(valid.shape[1])
            causal = slots[None, :] <= (slot + jnp.arange(length))[:, None]
            mask = (valid[:, None, :] & causal[None])[:, None]

        def body(layer: LlamaLayer, carry, index):
            h, kv = carry
            return layer(h, cos, sin, mask, kv, slot, index), None

        # Several tokens (a prompt): the cache rides in the scan carry and every layer writes its
        # slice in place before attending over it.
        (h, (keys, values)), _ = scan_layers(self.layers, (h, (cache.keys, cache.values)), body,
                                             xs=jnp.arange(self.cfg.num_hidden_layers))
        last = length - 1 - jnp.argmax(token_mask[:, ::-1] > 0, axis=1)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0], KVCache(keys, values, valid)

    def _one_token(self, h, cos, sin, token_mask, cache: KVCache, slot, columns=None, shared=None
                   ) -> tuple[jax.Array, KVCache]:
        """`cached` for one token per row (decoding): every layer reads its cache as it came in
        (the slots valid so far are the earlier tokens) and the new keys and values of all layers
        are written after the last layer, so each write follows every read of what it overwrites
        and XLA updates the cache in place with no copy (`kv_cache.attend_one_token`).

        The cache may hold more rows than the batch: the batch is its first rows, and the rows
        past it are neither read nor written (the serving engine steps only the rows in use).
        With `columns`, each layer reads only those slots of its rows; with `shared`, each layer's
        entries join the attention (`kv_cache.attend_one_token`)."""
        batch = h.shape[0]
        earlier = cache.valid[:batch] if columns is None else jnp.take(cache.valid[:batch], columns, axis=1)

        stacks = tuple(kv_cache.keep_layout(c) for c in (cache.keys, cache.values))

        def body(layer: LlamaLayer, h, index):
            keys, values = (kv_cache.keep_layout(jax.lax.dynamic_index_in_dim(c, index, keepdims=False)[:batch])
                            for c in stacks)
            if columns is not None:  # the slots axis: keys' third, values' last
                keys, values = jnp.take(keys, columns, axis=2), jnp.take(values, columns, axis=3)
            common = None
            if shared is not None:
                entries, width = shared.visible.shape[1:]
                layer_keys, layer_values = (jax.lax.dynamic_index_in_dim(c, index, keepdims=False)[:entries]
                                            for c in (shared.keys, shared.values))
                common = (layer_keys[:, :, :width], layer_values[..., :width], shared.visible)
            return layer.one_token(h, cos, sin, keys, values, earlier, common)

        h, new = scan_layers(self.layers, h, body, xs=jnp.arange(self.cfg.num_hidden_layers))
        keys, values = kv_cache.write(stacks, new, 0, slot)
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool), (0, slot))
        return h[:, -1], KVCache(keys, values, valid)
