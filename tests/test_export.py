"""Our weights written as a transformers checkpoint load in transformers with the same logits."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from tests import oracle
from vllava_jax.checkpoint.write import save_hf


def test_random_model_round_trips_through_transformers(tmp_path, rng):
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config().to_dict())
    model = vllava_jax.VideoLlava.random(config, seed=3)
    save_hf(model, tmp_path / "hf")
    reference, info = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reference.eval()
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("image", config.image_seq_length), 5])[None]
    ours = np.asarray(model(ids, pixel_values_images=images).logits)
    ref = oracle.reference_logits(reference, ids, images=images)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    again = vllava_jax.load_pretrained(tmp_path / "hf")(ids, pixel_values_images=images).logits
    np.testing.assert_array_equal(np.asarray(again), ours)


def test_export_refuses_to_overwrite(tmp_path):
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config().to_dict())
    (tmp_path / "hf").mkdir()
    with pytest.raises(vllava_jax.CheckpointError, match="exists"):
        save_hf(vllava_jax.VideoLlava.random(config), tmp_path / "hf")
