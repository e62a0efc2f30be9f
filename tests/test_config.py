"""Configs: reading transformers' config.json, the 7B config, and its exact parameter count."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import VideoLlavaConfig as HFVideoLlavaConfig
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from configs import video_llava_7b
from vllava_jax.config import DTypePolicy
from vllava_jax.modeling.video_llava import VideoLlavaModel


def test_7b_parameter_count_equals_transformers():
    raw = video_llava_7b.get_config().model.to_dict()
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(raw)
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(config, DTypePolicy(), nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    with torch.device("meta"):
        reference = VideoLlavaForConditionalGeneration(HFVideoLlavaConfig(**raw))
    theirs = sum(p.numel() for p in reference.parameters())
    assert ours == theirs
    assert 7_300_000_000 < ours < 7_400_000_000
    assert config.image_seq_length == 256 and config.video_seq_length(8) == 2056


def test_config_round_trips_through_transformers(tiny_checkpoints):
    path, _ = tiny_checkpoints("llama3_rope")
    config = vllava_jax.VideoLlavaConfig.from_json(path / "config.json")
    assert config.text_config.rope.rope_type == "llama3"
    again = vllava_jax.VideoLlavaConfig.from_hf_dict(config.to_hf_dict())
    assert again == config
    hf = HFVideoLlavaConfig(**config.to_hf_dict())
    assert hf.text_config.rope_parameters["factor"] == 8.0
    assert hf.vision_config.patch_size == config.vision_config.patch_size


def test_legacy_rope_scaling_is_read():
    raw = video_llava_7b.get_config().model.to_dict()
    raw["text_config"].update(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 4.0})
    rope = vllava_jax.VideoLlavaConfig.from_hf_dict(raw).text_config.rope
    assert (rope.rope_type, rope.theta, rope.factor) == ("linear", 5e5, 4.0)


def test_unknown_model_type_names_file_and_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    with pytest.raises(vllava_jax.ConfigError, match=r"config\.json.*'llava_next'"):
        vllava_jax.load_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["video_llava_7b_stage1", "video_llava_7b_stage2", "train_tiny"])
def test_training_configs_describe_their_stage(name):
    import importlib

    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.run_config import check_config

    config = importlib.import_module(f"configs.{name}").get_config()
    check_config(config)  # a valid `trainable` list among the rest
    model = build_model_config(config)
    if name.startswith("video_llava_7b"):
        assert model.text_config.num_hidden_layers == 32 and config.max_length == 3072
        assert config.data.kind == "annotations" and len(config.data.annotations) == len(config.data.media_roots)
