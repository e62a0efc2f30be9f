"""Bad input fails with one clear error naming what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vllava_jax
from tests import oracle


@pytest.fixture(scope="module")
def model_and_ref(tmp_path_factory):
    path = tmp_path_factory.mktemp("errors")
    ref = oracle.save_tiny_model(path)
    return vllava_jax.load_pretrained(path), ref


def test_placeholder_count_must_match_images(model_and_ref, rng):
    model, ref = model_and_ref
    ids = oracle.make_ids(rng, [2, ("image", oracle.tokens_per_image(ref) - 1), 2])[None]
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    with pytest.raises(vllava_jax.InputError, match=r"3 image placeholder tokens .* 1 image\(s\) x 4 tokens = 4"):
        model(ids, pixel_values_images=images)


def test_placeholders_without_pixels(model_and_ref, rng):
    model, ref = model_and_ref
    ids = oracle.make_ids(rng, [2, ("video", oracle.tokens_per_video(ref, 2))])[None]
    with pytest.raises(vllava_jax.InputError, match="video placeholder tokens .* 0 video"):
        model(ids)


def test_channels_last_pixels_are_named(model_and_ref, rng):
    model, ref = model_and_ref
    ids = oracle.make_ids(rng, [("image", oracle.tokens_per_image(ref))])[None]
    with pytest.raises(vllava_jax.InputError, match=r"\(1, 28, 28, 3\), which looks channels-last"):
        model(ids, pixel_values_images=np.zeros((1, 28, 28, 3), np.float32))


def test_wrong_pixel_size(model_and_ref, rng):
    model, ref = model_and_ref
    ids = oracle.make_ids(rng, [("video", oracle.tokens_per_video(ref, 2))])[None]
    with pytest.raises(vllava_jax.InputError, match=r"pixel_values_videos has shape \(1, 2, 3, 32, 32\).*H=W=28"):
        model(ids, pixel_values_videos=np.zeros((1, 2, 3, 32, 32), np.float32))


def test_ids_outside_vocabulary(model_and_ref):
    model, _ = model_and_ref
    with pytest.raises(vllava_jax.InputError, match=r"outside the vocabulary \[0, 120\): \[500\]"):
        model(np.array([[1, 500]]))


def test_checkpoint_with_missing_and_misshaped_tensors_lists_them(tmp_path):
    oracle.save_tiny_model(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    del tensors["image_tower.post_layernorm.bias"]
    tensors["multi_modal_projector.linear_1.weight"] = np.zeros((5, 5), np.float32)
    tensors["video_tower.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(vllava_jax.CheckpointError) as info:
        vllava_jax.load_pretrained(tmp_path)
    message = str(info.value)
    assert "2 missing tensor(s)" in message and "language_model.layers.1.mlp.up_proj.weight" in message
    assert "image_tower.post_layernorm.bias" in message
    assert "multi_modal_projector.linear_1.weight: (5, 5), expected (48, 32)" in message
    assert "video_tower.extra.weight" in message


def test_truncated_safetensors_file(tmp_path):
    oracle.save_tiny_model(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(vllava_jax.CheckpointError, match="model.safetensors"):
        vllava_jax.load_pretrained(tmp_path)


def test_dir_without_weights(tmp_path):
    oracle.save_tiny_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(vllava_jax.CheckpointError, match=r"no \*\.safetensors"):
        vllava_jax.load_pretrained(tmp_path)


def test_sharded_checkpoint_loads(tmp_path, rng):
    ref = oracle.save_tiny_model(tmp_path)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    ids = oracle.make_ids(rng, [6])[None]
    a = vllava_jax.load_pretrained(tmp_path)(ids).logits
    b = vllava_jax.load_pretrained(tmp_path / "sharded")(ids).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_malformed_run_config_is_a_config_error_naming_it(tmp_path):
    from vllava_jax.train.run_config import RUN_CONFIG, check_resume

    (tmp_path / RUN_CONFIG).write_text('{"stage": "full",')
    with pytest.raises(vllava_jax.errors.ConfigError, match=rf"{RUN_CONFIG}: not valid JSON"):
        check_resume(tmp_path, {"stage": "full"})
