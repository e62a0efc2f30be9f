"""`python -m vllava_jax.convert` round trips: transformers dirs (both key layouts) -> ours -> transformers."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from tests import oracle
from tests.cli_run import assert_user_error, in_process
from vllava_jax import convert
from vllava_jax.checkpoint.detect import detect
from vllava_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny transformers checkpoint (as transformers 5.24 saves it) and the torch model."""
    path = tmp_path_factory.mktemp("tiny") / "hf"
    model = oracle.save_tiny_model(path)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return path, model


def inputs(rng, model):
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    videos = rng.standard_normal((1, 2, 3, 28, 28)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("image", oracle.tokens_per_image(model)), 2,
                                ("video", oracle.tokens_per_video(model, 2)), 4])[None]
    return ids, images, videos


def assert_close(ours, ref):
    ours = np.asarray(ours)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max(), np.abs(ours - ref).max()


def run(*args) -> int:
    return convert.main([str(a) for a in args])


def test_transformers_to_ours_matches_transformers(tiny, tmp_path, rng):
    path, model = tiny
    assert run("--src", path, "--dst", tmp_path / "ours") == 0
    assert detect(tmp_path / "ours") == "ours"
    assert (tmp_path / "ours" / "tokenizer_config.json").exists()
    ids, images, videos = inputs(rng, model)
    ours = vllava_jax.load_pretrained(tmp_path / "ours")(ids, pixel_values_images=images, pixel_values_videos=videos)
    assert_close(ours.logits, oracle.reference_logits(model, ids, images=images, videos=videos))


def test_bfloat16_conversion_equals_bfloat16_load(tiny, tmp_path, rng):
    path, model = tiny
    assert run("--src", path, "--dst", tmp_path / "ours", "--dtype", "bfloat16") == 0
    restored = vllava_jax.load_pretrained(tmp_path / "ours", dtype="bfloat16")
    assert {str(x.dtype) for x in jax_leaves(restored)} == {"bfloat16"}
    ids, images, videos = inputs(rng, model)
    direct = vllava_jax.load_pretrained(path, dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(restored(ids, pixel_values_images=images, pixel_values_videos=videos).logits),
                                  np.asarray(direct(ids, pixel_values_images=images, pixel_values_videos=videos).logits))


def jax_leaves(model):
    return jax.tree.leaves(model.state)


def _hub_layout(src, dst):
    """What transformers 4.x wrote (the released Video-LLaVA-7B-hf): vision_model.*, rope_theta."""
    tensors = {k.replace("image_tower.", "image_tower.vision_model.", 1).replace("video_tower.", "video_tower.vision_model.", 1): v
               for k, v in load_file(src / "model.safetensors").items()}
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["rope_theta"] = config["text_config"].pop("rope_parameters")["rope_theta"]
    return tensors, config


def _memory_layout(src, dst):
    """The names current transformers keeps in memory: model.*, model.language_model.layers.*, lm_head.weight."""
    def rename(k):
        k = k.replace("language_model.model.", "language_model.").replace("language_model.lm_head.", "lm_head.")
        return k if k.startswith("lm_head.") else "model." + k

    return {rename(k): v for k, v in load_file(src / "model.safetensors").items()}, json.loads((src / "config.json").read_text())


@pytest.mark.parametrize("layout", [_hub_layout, _memory_layout])
def test_both_transformers_layouts_on_disk(tiny, tmp_path, rng, layout):
    path, model = tiny
    tensors, config = layout(path, tmp_path)
    assert any(k.startswith(("image_tower.vision_model.", "model.language_model.layers.")) for k in tensors)
    (tmp_path / "src").mkdir()
    save_file(tensors, tmp_path / "src" / "model.safetensors")
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    assert run("--src", tmp_path / "src", "--dst", tmp_path / "ours") == 0
    ids, images, videos = inputs(rng, model)
    ours = vllava_jax.load_pretrained(tmp_path / "ours")(ids, pixel_values_images=images, pixel_values_videos=videos)
    assert_close(ours.logits, oracle.reference_logits(model, ids, images=images, videos=videos))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ours_to_transformers_loads_with_no_missing_keys(tiny, tmp_path, rng, dtype):
    path, model = tiny
    assert run("--src", path, "--dst", tmp_path / "ours", "--dtype", dtype) == 0
    assert run("--src", tmp_path / "ours", "--dst", tmp_path / "hf", "--to", "hf", "--max-shard-size", "30KB") == 0
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (tmp_path / "hf" / "tokenizer_config.json").exists()
    reference, info = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, images, videos = inputs(rng, model)
    ours = vllava_jax.load_pretrained(tmp_path / "ours", dtype=dtype)
    ref = oracle.reference_logits(reference.float().eval(), ids, images=images, videos=videos)
    if dtype == "float32":
        assert_close(ours(ids, pixel_values_images=images, pixel_values_videos=videos).logits, ref)
    again = vllava_jax.load_pretrained(tmp_path / "hf", dtype=dtype)
    for a, b in zip(jax_leaves(ours), jax_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ours_restores_onto_a_mesh(tiny, tmp_path):
    path, _ = tiny
    assert run("--src", path, "--dst", tmp_path / "ours") == 0
    model = vllava_jax.load_pretrained(tmp_path / "ours", mesh=make_mesh())
    leaf = model.state["language_model"]["layers"]["mlp"]["up"]["kernel"][...]
    assert leaf.sharding.mesh.axis_names == ("data", "fsdp", "tensor")


def test_existing_destination_needs_force(tiny, tmp_path, capsys):
    path, _ = tiny
    (tmp_path / "ours").mkdir()
    assert_user_error(in_process(convert.main, ["--src", path, "--dst", tmp_path / "ours"], capsys), 1,
                      "exists; pass --force")
    assert run("--src", path, "--dst", tmp_path / "ours", "--force") == 0
    assert detect(tmp_path / "ours") == "ours"


def test_help_explains_every_flag():
    text = convert.parser().format_help()
    for flag in ("--src", "--dst", "--to", "--dtype", "--max-shard-size", "--drop-temporal", "--force"):
        assert flag in text
    assert convert.parse_size("5GB") == 5 * 10**9 and convert.parse_size("20KB") == 20_000
