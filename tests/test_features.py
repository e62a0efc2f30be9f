"""`vllava_jax.features.FeatureCache`: keyed by file content, one tower call per new medium, LRU
within its byte budget, and prefill from cached features giving the tokens prefill from pixels gives
(the pixel path is held to transformers in test_generation.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from tests import oracle
from vllava_jax import generation
from vllava_jax.errors import InputError
from vllava_jax.features import FeatureCache


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("features")
    oracle.save_tiny_model(path)
    return vllava_jax.load_pretrained(path), VideoLlavaForConditionalGeneration.from_pretrained(path)


def test_features_in_place_of_pixels_and_keys_by_content(model, tmp_path, rng):
    ours, reference = model
    per_image = oracle.tokens_per_image(reference)
    size = reference.config.vision_config.image_size
    pixels = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    for name, index in (("a.npy", 0), ("b.npy", 1)):
        np.save(tmp_path / name, pixels[index])
    shutil.copy(tmp_path / "a.npy", tmp_path / "a_copy.npy")
    cache = FeatureCache(ours)
    keys = [cache.key("image", str(tmp_path / n)) for n in ("a.npy", "b.npy", "a_copy.npy")]
    assert keys[0] == keys[2] != keys[1]                        # content, not name
    assert cache.bytes_key("image", (tmp_path / "a.npy").read_bytes()) == keys[0]  # an upload of the same bytes
    assert cache.bytes_key("video", (tmp_path / "a.npy").read_bytes()) != keys[0]
    cache.add("image", keys[:2], pixels)
    assert cache.tower_runs == 2 and keys[2] in cache

    ids = np.stack([oracle.make_ids(rng, [3, ("image", per_image), 4]) for _ in range(3)])
    sampling = generation.SamplingConfig(max_new_tokens=4, eos_token_ids=(), pad_token_id=0)
    from_pixels = generation.generate(ours, ids, pixel_values_images=pixels[[0, 1, 0]], sampling=sampling)
    from_cache = generation.generate(ours, ids, pixel_values_images=cache.batch([keys[0], keys[1], keys[2]]),
                                     sampling=sampling)
    np.testing.assert_array_equal(from_cache, from_pixels)
    with pytest.raises(InputError, match="placeholder"):
        generation.generate(ours, ids, pixel_values_images=cache.batch(keys[:2]), sampling=sampling)


def test_least_recently_used_goes_first(model, rng):
    ours, reference = model
    size = reference.config.vision_config.image_size
    pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    probe = FeatureCache(ours)
    probe.add("image", ["x"], pixels)
    cache = FeatureCache(ours, max_bytes=2 * probe.bytes)
    cache.add("image", ["a"], pixels)
    cache.add("image", ["b"], pixels)
    assert "a" in cache                                         # a lookup counts as a use: b is now oldest
    cache.add("image", ["c"], pixels)
    assert list(cache.entries) == ["a", "c"] and cache.bytes == 2 * probe.bytes
