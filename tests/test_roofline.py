"""`roofline.decode_step_bytes` against transformers' own parameter count and our cache's size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import vllava_jax
from vllava_jax.modeling.kv_cache import KVCache
from vllava_jax.train import roofline


@pytest.mark.parametrize("name", ["gqa_default", "tied_biases_linear_rope"])
def test_decode_step_bytes_are_the_decoders_parameters_but_the_embedding_table_and_the_filled_cache(
        tiny_checkpoints, name):
    path, reference = tiny_checkpoints(name)
    embed = reference.model.language_model.embed_tokens.weight
    tied = reference.lm_head.weight is embed
    # transformers' decoder and LM head, a tied table counted once
    decoder = {p.data_ptr(): p for module in (reference.model.language_model, reference.lm_head)
               for p in module.parameters()}
    params = sum(p.numel() for p in decoder.values()) - (0 if tied else embed.numel())
    ours = vllava_jax.load_pretrained(path)
    text = ours.config.text_config
    batch, slots, filled = 3, 16, 6.5
    cache = jax.eval_shape(lambda: KVCache.empty(text, batch, slots, jnp.bfloat16))
    cache_bytes = sum(x.size * x.dtype.itemsize for x in (cache.keys, cache.values))
    expected = 4 * params + cache_bytes * filled / slots  # float32 parameters, bfloat16 cache
    assert roofline.decode_step_bytes(ours.state["language_model"], text, batch, filled, jnp.bfloat16) == expected
