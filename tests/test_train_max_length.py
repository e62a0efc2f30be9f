"""The trainer refuses a max_length that cannot hold one medium of each kind its data reads."""

from __future__ import annotations

import pytest

from configs import video_llava_7b_stage1, video_llava_7b_stage2
from vllava_jax.errors import ConfigError
from vllava_jax.train.data import check_max_length, make_data
from vllava_jax.train.build import build_model_config


@pytest.mark.parametrize("recipe", [video_llava_7b_stage1, video_llava_7b_stage2])
def test_the_7b_recipes_hold_one_video(recipe):
    config = recipe.get_config()
    model_config = build_model_config(config)
    assert model_config.video_seq_length(8) == 2056
    check_max_length(config, model_config)
    assert config.max_length == 3072  # the original's tokenizer_model_max_length


def test_a_max_length_without_room_for_a_video_is_refused_before_any_data_is_read():
    config = video_llava_7b_stage2.get_config()
    config.max_length = 2048
    with pytest.raises(ConfigError, match=r"max_length 2048 cannot hold one video \(2056 visual tokens\)"):
        make_data(config, build_model_config(config))


def test_synthetic_batches_need_room_for_an_image_only():
    config = video_llava_7b_stage2.get_config()
    config.data.kind = "synthetic"
    config.max_length = 300
    check_max_length(config, build_model_config(config))
    config.max_length = 200
    with pytest.raises(ConfigError, match="cannot hold one image"):
        check_max_length(config, build_model_config(config))
