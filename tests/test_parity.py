"""Logit parity with transformers' VideoLlavaForConditionalGeneration on tiny random models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vllava_jax
from tests import oracle

TOLERANCE = 1e-4  # of the logits' scale (max |logit|)


def assert_close(ours, ref, mask=None):
    ours = np.asarray(ours, np.float32)
    if mask is not None:
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err < TOLERANCE * scale, f"max abs diff {err:.3g} vs logit scale {scale:.3g}"


def pixels(rng, model, n, frames=None):
    size = model.config.vision_config.image_size
    shape = (n, 3, size, size) if frames is None else (n, frames, 3, size, size)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", list(oracle.TINY_CONFIGS))
@pytest.mark.parametrize("inputs", ["text", "image", "video", "image_and_video"])
def test_logits_match_transformers(tiny_checkpoints, rng, name, inputs):
    path, ref_model = tiny_checkpoints(name)
    model = vllava_jax.load_pretrained(path)
    per_image, per_video = oracle.tokens_per_image(ref_model), oracle.tokens_per_video(ref_model, 3)
    images = pixels(rng, ref_model, 2) if "image" in inputs else None
    videos = pixels(rng, ref_model, 1, frames=3) if "video" in inputs else None
    pieces = {
        "text": [7],
        "image": [3, ("image", per_image), 4, ("image", per_image), 2],
        "video": [2, ("video", per_video), 5],
        "image_and_video": [2, ("video", per_video), 3, ("image", per_image), 1, ("image", per_image), 3],
    }[inputs]
    ids = oracle.make_ids(rng, pieces)[None]
    ref = oracle.reference_logits(ref_model, ids, images=images, videos=videos)
    ours = model(ids, pixel_values_images=images, pixel_values_videos=videos).logits
    assert ours.shape == ref.shape
    assert_close(ours, ref)


@pytest.mark.parametrize("name", ["gqa_default", "dynamic_rope"])
def test_left_padded_batch_matches_unpadded_rows(tiny_checkpoints, rng, name):
    path, ref_model = tiny_checkpoints(name)
    model = vllava_jax.load_pretrained(path)
    per_image, per_video = oracle.tokens_per_image(ref_model), oracle.tokens_per_video(ref_model, 3)
    rows = [oracle.make_ids(rng, [2, ("video", per_video), 4]), oracle.make_ids(rng, [3, ("image", per_image), 2]),
            oracle.make_ids(rng, [5])]
    images, videos = pixels(rng, ref_model, 1), pixels(rng, ref_model, 1, frames=3)
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    ours = np.asarray(model(ids, mask, pixel_values_images=images, pixel_values_videos=videos).logits)

    # transformers' forward numbers positions 0..L-1 unless told; generate() derives them from the mask.
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    ref = oracle.reference_logits(ref_model, ids, mask, images, videos, positions)
    assert_close(ours, ref, mask)
    # the training batch's per-row media (data_pipelines/batching.py): row 0's video, row 1's image
    per_row_images = np.zeros((len(rows), 2, *images.shape[1:]), np.float32)
    per_row_videos = np.zeros((len(rows), 1, *videos.shape[1:]), np.float32)
    per_row_images[1, 0], per_row_videos[0, 0] = images[0], videos[0]
    assert_close(model.module(jnp.asarray(ids), jnp.asarray(mask), per_row_images, per_row_videos), ref, mask)
    if name == "dynamic_rope":
        return  # dynamic NTK scales by the longest row in the batch, so rows alone differ in transformers too
    for i, row in enumerate(rows):
        single = oracle.reference_logits(ref_model, row[None], images=images if i == 1 else None,
                                         videos=videos if i == 0 else None)
        assert_close(ours[i, width - len(row):], single[0])


def test_right_padding_matches(tiny_checkpoints, rng):
    path, ref_model = tiny_checkpoints("gqa_default")
    model = vllava_jax.load_pretrained(path)
    ids = oracle.make_ids(rng, [9])[None].repeat(2, 0)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ours = np.asarray(model(ids, mask).logits)
    assert_close(ours[1, :6], oracle.reference_logits(ref_model, ids[1:, :6])[0])


@pytest.mark.parametrize("name", ["gqa_default", "mha_full_layer_last"])
def test_vision_tower_hidden_states_layer_by_layer(tiny_checkpoints, rng, name):
    path, ref_model = tiny_checkpoints(name)
    model = vllava_jax.load_pretrained(path)
    images = pixels(rng, ref_model, 2)
    with torch.no_grad(), jax.default_matmul_precision("highest"):
        for tower in ("image_tower", "video_tower"):
            ref = getattr(ref_model.model, tower)(torch.as_tensor(images), output_hidden_states=True).hidden_states
            ours = getattr(model.module, tower).hidden_states(images, tuple(range(len(ref))))
            assert len(ours) == len(ref) == ref_model.config.vision_config.num_hidden_layers + 1
            for layer, (o, r) in enumerate(zip(ours, ref)):
                err = np.abs(np.asarray(o) - r.numpy()).max()
                assert err < 1e-4 * np.abs(r.numpy()).max(), f"{tower} hidden state {layer}: {err}"


def test_bfloat16_stays_near_float32(tiny_checkpoints, rng):
    path, ref_model = tiny_checkpoints("gqa_default")
    per_image = oracle.tokens_per_image(ref_model)
    ids = oracle.make_ids(rng, [3, ("image", per_image), 6])[None]
    images = pixels(rng, ref_model, 1)
    f32 = np.asarray(vllava_jax.load_pretrained(path)(ids, pixel_values_images=images).logits)
    bf16_model = vllava_jax.load_pretrained(path, dtype="bfloat16")
    assert all(x.dtype == np.dtype("bfloat16") for x in __import__("jax").tree.leaves(bf16_model.state))
    bf16 = np.asarray(bf16_model(ids, pixel_values_images=images).logits, np.float32)
    scale = np.abs(f32).max()
    assert np.abs(bf16 - f32).max() < 0.05 * scale
    assert (bf16.argmax(-1) == f32.argmax(-1)).mean() > 0.9


def test_remat_changes_memory_not_numbers(tiny_checkpoints, rng):
    path, ref_model = tiny_checkpoints("gqa_default")
    ids = oracle.make_ids(rng, [3, ("image", oracle.tokens_per_image(ref_model)), 6])[None]
    images = pixels(rng, ref_model, 1)
    plain = vllava_jax.load_pretrained(path)
    remat = vllava_jax.load_pretrained(path, remat=True)
    np.testing.assert_allclose(np.asarray(remat(ids, pixel_values_images=images).logits),
                               np.asarray(plain(ids, pixel_values_images=images).logits), rtol=1e-6, atol=1e-6)

    def loss(state, model):
        from flax import nnx

        logits = nnx.merge(model.graphdef, state)(jax.numpy.asarray(ids), jax.numpy.ones_like(ids), images)
        return logits.astype("float32").std()

    grads = [jax.grad(loss)(m.state, m) for m in (plain, remat)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_unrolled_decoder_layers_change_the_program_not_numbers(tiny_checkpoints, rng, monkeypatch):
    """The decoder's training forward unrolled (as NVIDIA GPUs compile it; here by the override),
    with remat dots, against the scanned one: the same logits and gradients, and two loops fewer."""
    from flax import nnx

    path, ref_model = tiny_checkpoints("gqa_default")
    ids = jnp.asarray(oracle.make_ids(rng, [3, ("image", oracle.tokens_per_image(ref_model)), 6])[None])
    images = pixels(rng, ref_model, 1)
    scanned, unrolled = vllava_jax.load_pretrained(path), vllava_jax.load_pretrained(path, remat="dots")

    def loss(state, model):
        return nnx.merge(model.graphdef, state)(ids, jnp.ones_like(ids), images).astype("float32").std()

    def loops_logits_grads(model):
        grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
        loops = grad.lower(model.state, model).compile().as_text().count(" while(")
        return loops, np.asarray(model(ids, pixel_values_images=images).logits), grad(model.state, model)[1]

    scanned_loops, scanned_logits, scanned_grads = loops_logits_grads(scanned)
    monkeypatch.setenv("VLLAVA_DECODER_LAYERS", "unrolled")
    unrolled_loops, unrolled_logits, unrolled_grads = loops_logits_grads(unrolled)
    assert unrolled_loops == scanned_loops - 2  # the decoder's forward loop and its backward loop
    np.testing.assert_allclose(unrolled_logits, scanned_logits, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(unrolled_grads), jax.tree.leaves(scanned_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_decoder_layers_unroll_on_nvidia_gpus_unless_overridden(monkeypatch):
    from vllava_jax.errors import ConfigError
    from vllava_jax.modeling.llama import unrolls_training_layers

    assert [unrolls_training_layers(p) for p in ("gpu", "cuda", "tpu", "cpu")] == [True, True, False, False]
    monkeypatch.setenv("VLLAVA_DECODER_LAYERS", "scanned")
    assert not unrolls_training_layers("gpu")
    monkeypatch.setenv("VLLAVA_DECODER_LAYERS", "unrolled")
    assert unrolls_training_layers("tpu")
    monkeypatch.setenv("VLLAVA_DECODER_LAYERS", "unroll")
    with pytest.raises(ConfigError, match="VLLAVA_DECODER_LAYERS='unroll'"):
        unrolls_training_layers("gpu")


def test_packed_rows_match_separate_rows(tiny_checkpoints, rng):
    """Two samples packed in one row with segment ids give each sample's own logits."""
    path, ref_model = tiny_checkpoints("gqa_default")
    model = vllava_jax.load_pretrained(path)
    a = oracle.make_ids(rng, [3, ("image", oracle.tokens_per_image(ref_model)), 4])
    b = oracle.make_ids(rng, [6])
    images = pixels(rng, ref_model, 1)
    packed = np.concatenate([a, b, [0, 0]])[None]
    segments = np.concatenate([np.full(len(a), 1), np.full(len(b), 2), [0, 0]])[None]
    positions = np.concatenate([np.arange(len(a)), np.arange(len(b)), [0, 0]])[None]
    with jax.default_matmul_precision("highest"):
        logits = model.module(jax.numpy.asarray(packed), jax.numpy.asarray(segments > 0), jax.numpy.asarray(images),
                              None, jax.numpy.asarray(positions), jax.numpy.asarray(segments))
    logits = np.asarray(logits)[0]
    assert_close(logits[: len(a)], oracle.reference_logits(ref_model, a[None], images=images)[0])
    assert_close(logits[len(a): len(a) + len(b)], oracle.reference_logits(ref_model, b[None])[0])
