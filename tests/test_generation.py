"""KV-cached generation against transformers' `generate(do_sample=False)` on tiny random models."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
import torch
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from tests import oracle
from vllava_jax import generation
from vllava_jax.modeling.kv_cache import KVCache
from vllava_jax.modeling.video_llava import positions_from_mask

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("generation")
    oracle.save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return vllava_jax.load_pretrained(checkpoint)


def reference_generate(checkpoint, ids, mask, images, videos, new_tokens, eos=EOS):
    """transformers' greedy tokens, and per step the smallest top-2 logit margin over the batch."""
    ref = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    kwargs = oracle.reference_inputs(ref, ids, mask, images, videos)
    with torch.no_grad():
        out = ref.generate(**kwargs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                           pad_token_id=PAD, output_scores=True, return_dict_in_generate=True)
    margins = [float((s.topk(2).values[:, 0] - s.topk(2).values[:, 1]).min()) for s in out.scores]
    return out.sequences.numpy(), margins


def assert_same_tokens(ours, ref, margins, prompt_len):
    """Equal up to the first step where the reference's top-2 margin is too small to call."""
    decided = next((i for i, m in enumerate(margins) if m < 1e-4), len(margins))
    assert decided >= len(margins) // 2, f"reference too close to call from step {decided}"
    np.testing.assert_array_equal(ours[:, : prompt_len + decided], ref[:, : prompt_len + decided])
    if decided == len(margins):
        assert ours.shape == ref.shape


def left_pad(rows):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


@pytest.mark.parametrize("kind", ["text", "image", "video"])
def test_greedy_matches_transformers(checkpoint, model, rng, kind):
    pieces = {"text": [6], "image": [3, ("image", 4), 5], "video": [2, ("video", 15), 3]}[kind]
    ids = oracle.make_ids(rng, pieces)[None]
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32) if kind == "image" else None
    videos = rng.standard_normal((1, 3, 3, 28, 28)).astype(np.float32) if kind == "video" else None
    ref, margins = reference_generate(checkpoint, ids, np.ones_like(ids), images, videos, 12, eos=[])
    ours = model.generate(ids, pixel_values_images=images, pixel_values_videos=videos, max_new_tokens=12,
                          eos_token_id=[], pad_token_id=PAD)
    assert_same_tokens(ours, ref, margins, ids.shape[1])


def test_left_padded_mixed_batch_matches_transformers_and_single_rows(checkpoint, model, rng):
    rows = [oracle.make_ids(rng, [2, ("video", 15), 4]), oracle.make_ids(rng, [3, ("image", 4), 2]),
            oracle.make_ids(rng, [5])]
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    videos = rng.standard_normal((1, 3, 3, 28, 28)).astype(np.float32)
    ids, mask = left_pad(rows)
    # stop row 0 early: its third greedy token becomes EOS, so the others must go on and row 0 pads
    probe = model.generate(rows[0][None], pixel_values_videos=videos, max_new_tokens=3, eos_token_id=[])
    eos = int(probe[0, -1])
    ref, margins = reference_generate(checkpoint, ids, mask, images, videos, 10, eos=eos)
    ours = model.generate(ids, mask, images, videos, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
    assert_same_tokens(ours, ref, margins, ids.shape[1])
    assert ours[0, ids.shape[1] + 2] == eos and (ours[0, ids.shape[1] + 3:] == PAD).all()

    for i, row in enumerate(rows):
        alone = model.generate(row[None], pixel_values_images=images if i == 1 else None,
                               pixel_values_videos=videos if i == 0 else None, max_new_tokens=10,
                               eos_token_id=eos, pad_token_id=PAD)
        new = alone[0, len(row):]
        np.testing.assert_array_equal(ours[i, ids.shape[1]: ids.shape[1] + len(new)], new)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_stream_yields_what_generate_returns(model, rng, chunk):
    """Token for token, in chunks of any size, including the stop at an EOS chosen mid-chunk."""
    ids = oracle.make_ids(rng, [3, ("image", 4), 5])[None]
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    sampling = generation.SamplingConfig(max_new_tokens=8, eos_token_ids=(), pad_token_id=PAD)
    full = generation.generate(model, ids, None, images, None, sampling=sampling)
    streamed = [t[0] for t in generation.stream(model, ids, None, images, None, sampling=sampling, chunk=chunk)]
    np.testing.assert_array_equal(np.asarray(streamed), full[0, ids.shape[1]:])
    eos = int(full[0, ids.shape[1] + 4])
    stopping = dataclasses.replace(sampling, eos_token_ids=(eos,))
    stopped = generation.generate(model, ids, None, images, None, sampling=stopping)
    streamed = [t[0] for t in generation.stream(model, ids, None, images, None, sampling=stopping, chunk=chunk)]
    assert stopped.shape[1] < full.shape[1] and streamed[-1] == eos
    np.testing.assert_array_equal(np.asarray(streamed), stopped[0, ids.shape[1]:])


def test_sampling_follows_key_and_filters():
    logits = jax.numpy.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32)))
    greedy = generation.SamplingConfig(temperature=0.0)
    assert (np.asarray(generation.choose_tokens(logits, jax.random.key(0), greedy)) == 0).all()
    top2 = generation.SamplingConfig(temperature=1.0, top_k=2)
    tokens = np.asarray(generation.choose_tokens(logits, jax.random.key(1), top2))
    assert set(tokens.tolist()) == {0, 1} and abs((tokens == 0).mean() - 0.5 / 0.8) < 0.03
    nucleus = generation.SamplingConfig(temperature=1.0, top_p=0.7)  # keeps 0.5 + 0.3
    tokens = np.asarray(generation.choose_tokens(logits, jax.random.key(2), nucleus))
    assert set(tokens.tolist()) == {0, 1}
    again = np.asarray(generation.choose_tokens(logits, jax.random.key(2), nucleus))
    np.testing.assert_array_equal(tokens, again)


def test_sampled_generation_is_reproducible(model, rng):
    ids = oracle.make_ids(rng, [6])[None]
    a = model.generate(ids, max_new_tokens=6, temperature=0.8, top_p=0.9, key=jax.random.key(5), eos_token_id=[])
    b = model.generate(ids, max_new_tokens=6, temperature=0.8, top_p=0.9, key=jax.random.key(5), eos_token_id=[])
    np.testing.assert_array_equal(a, b)


def test_bad_prompts_are_refused(model, rng):
    with pytest.raises(vllava_jax.InputError, match="empty prompt"):
        model.generate(np.zeros((1, 0), np.int64))
    long = oracle.make_ids(rng, [500])[None]
    with pytest.raises(vllava_jax.InputError, match="500 tokens .* 520 exceeds the context of 512"):
        model.generate(long, max_new_tokens=20)
    with pytest.raises(vllava_jax.InputError, match="image placeholder tokens"):
        model.generate(oracle.make_ids(rng, [2, ("image", 4)])[None])
    with pytest.raises(vllava_jax.InputError, match="0 image placeholder tokens .* 1 image"):
        model.generate(oracle.make_ids(rng, [4])[None], pixel_values_images=np.zeros((1, 3, 28, 28), np.float32))
    ids, mask = left_pad([oracle.make_ids(rng, [3]), oracle.make_ids(rng, [5])])
    with pytest.raises(vllava_jax.InputError, match="left padding"):
        model.generate(ids[:, ::-1], mask[:, ::-1])


def top_level_arrays(hlo: str) -> list[tuple[str, str, int]]:
    """(name, opcode, elements) of every array an HLO module materializes: the instructions of its
    entry, loop and branch computations, not those inside fusions (which live in registers)."""
    fused = set(re.findall(r"calls=%([\w.\-]+)", hlo))
    found, inside_fusion = [], False
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            inside_fusion = header.group(1) in fused
            continue
        instruction = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]\{[^}]*\} ([\w\-]+)\(", line)
        if instruction and not inside_fusion:
            name, dims, opcode = instruction.groups()
            found.append((name, opcode, int(np.prod([int(d) for d in dims.split(",") if d]))))
    return found


def test_decode_updates_the_cache_in_place(model, rng):
    """The decode program aliases the donated cache to its output and writes no array the size of
    the whole cache except by an in-place dynamic-update-slice: no copy of the cache per token
    (reading the written cache made XLA copy all of it before every layer's write)."""
    sampling = generation.SamplingConfig(max_new_tokens=8, eos_token_ids=(), pad_token_id=PAD)
    ids, mask, _ = generation.prepare_prompt(model, oracle.make_ids(rng, [20])[None].repeat(2, 0), None, None, None,
                                             sampling, 64)
    decoding = generation.prefill(model, ids, mask, None, None, sampling=sampling, key=jax.random.key(0))
    compiled = generation.decode_loop.lower(model.graphdef, model.state, decoding, np.int32(8), sampling).compile()
    cache_bytes = decoding.cache.keys.nbytes + decoding.cache.values.nbytes
    assert compiled.memory_analysis().alias_size_in_bytes >= cache_bytes
    whole = decoding.cache.keys.size
    arrays = top_level_arrays(compiled.as_text())
    assert any(n == whole and "dynamic-update-slice" in name for name, _, n in arrays)  # the parser sees the write
    written = [(name, op) for name, op, n in arrays if n == whole
               and op not in ("parameter", "get-tuple-element", "bitcast") and "dynamic-update-slice" not in name]
    assert not written, f"whole-cache arrays written per token: {written}"


def test_prompt_from_slot_zero_attends_like_the_cache(model, rng):
    """A prompt written from slot 0 attends with the decoder's fused causal attention over its own
    tokens (the blocked kernel on CPU); from a traced slot 0, with XLA's attention over every cache
    slot under the (len x slots) mask. Left-padded rows: the same hidden states and cache either way."""
    sampling = generation.SamplingConfig(max_new_tokens=8, eos_token_ids=(), pad_token_id=PAD)
    ids, mask = left_pad([oracle.make_ids(rng, [n]) for n in (23, 9)])
    lm = model.module.language_model
    embeds = lm.embed(jax.numpy.asarray(ids))
    positions = positions_from_mask(jax.numpy.asarray(mask))
    empty = KVCache.empty(lm.cfg, 2, ids.shape[1] + sampling.max_new_tokens, embeds.dtype)
    fused = jax.jit(lambda e: lm.cached(e, positions, mask, empty, 0))(embeds)
    masked = jax.jit(lambda e, slot: lm.cached(e, positions, mask, empty, slot))(embeds, np.int32(0))
    real = mask.astype(bool)
    np.testing.assert_allclose(fused[0], masked[0], rtol=1e-5, atol=1e-5)
    # keys (layers, batch, kv_heads, slots, head_dim), values with the slots last: compared where a token was written
    for ours, theirs, order in ((fused[1].keys, masked[1].keys, (1, 3, 0, 2, 4)),
                                (fused[1].values, masked[1].values, (1, 4, 0, 2, 3))):
        ours, theirs = (np.asarray(x).transpose(order)[:, : ids.shape[1]][real] for x in (ours, theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused[1].valid, masked[1].valid)


def test_prefill_lays_each_prompt_from_the_first_column(model, rng):
    """Left-padded prompts reach the decoder re-laid to the right (cuDNN's per-row lengths count
    from a row's start): the cache holds each row's tokens in its first columns, in order."""
    sampling = generation.SamplingConfig(max_new_tokens=4, eos_token_ids=(), pad_token_id=PAD)
    ids, mask = left_pad([oracle.make_ids(rng, [n]) for n in (23, 9)])
    decoding = generation.prefill(model, ids, mask, None, None, sampling=sampling, key=jax.random.key(0))
    tokens = mask.sum(1)
    expected = np.arange(decoding.cache.valid.shape[1])[None, :] < tokens[:, None]
    np.testing.assert_array_equal(decoding.cache.valid, expected)
