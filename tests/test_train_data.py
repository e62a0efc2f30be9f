"""The trainer's data config: annotation files and TFDS ArrayRecord dirs give the same batches."""

from __future__ import annotations

import numpy as np
import pytest

from configs import train_tiny
from data_pipelines import build_tfds
from tests.cli_run import assert_user_error, in_process
from tests.test_data_labels import data_checkpoint  # noqa: F401  (fixture)
from tests.test_data_pipeline import data  # noqa: F401  (fixture)
from vllava_jax.errors import ConfigError
from vllava_jax.train.data import make_data


def _config(checkpoint, **data_fields):
    config = train_tiny.get_config()
    config.batch_size, config.max_length = 4, 160
    config.data.update(dict(kind="annotations", tokenizer=str(checkpoint)) | data_fields)
    return config


def _batches(config, count=2):
    batches = make_data(config, None)
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize("video_frames", [0, 8])
def test_tfds_dirs_feed_the_trainer_the_batches_the_json_gives(data, data_checkpoint, tmp_path,  # noqa: F811
                                                                video_frames):
    argv = ["--annotations", str(data / "train.json"), "--media-root", str(data), "--data-dir", str(tmp_path)]
    assert build_tfds.main(argv + ["--video-frames", str(video_frames)]) == 0
    from_json = _batches(_config(data_checkpoint, annotations=[str(data / "train.json")], media_roots=[str(data)]))
    from_tfds = _batches(_config(data_checkpoint, tfds_dirs=[str(tmp_path)]))
    for a, b in zip(from_json, from_tfds):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_build_cli_refuses_to_overwrite(data, tmp_path, capsys):  # noqa: F811
    argv = ["--annotations", str(data / "train.json"), "--media-root", str(data), "--data-dir", str(tmp_path)]
    assert build_tfds.main(argv) == 0
    assert_user_error(in_process(build_tfds.main, argv, capsys), 1, "already built", "--overwrite")


def test_data_config_errors_name_the_fields(data, data_checkpoint):  # noqa: F811
    with pytest.raises(ConfigError, match="data.annotations or data.tfds_dirs"):
        make_data(_config(data_checkpoint), None)
    with pytest.raises(ConfigError, match="data.weights has 2 entries for 1 sources"):
        make_data(_config(data_checkpoint, annotations=[str(data / "train.json")], media_roots=[str(data)],
                          weights=[1.0, 2.0]), None)
