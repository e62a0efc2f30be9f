"""`python -m data_pipelines.build_tfds`: a wrong --media-root or a photo posing as a video is said
in one line instead of building a set whose media are all empty, or crashing."""

from __future__ import annotations

import json
import shutil

from data_pipelines import build_tfds
from data_pipelines.tfds_builder import TfdsSource
from tests.cli_run import assert_user_error, in_process, subprocess_cli
from tests.test_cli_generate import write_png_with_icc
from tests.test_data_tfds import videos  # noqa: F401  (fixture)


def argv(annotations, media_root, data_dir, *extra):
    return ["--annotations", annotations, "--media-root", media_root, "--data-dir", data_dir, *extra]


def test_wrong_media_root_fails_and_the_corrected_build_succeeds(videos, tmp_path, capsys, caplog):  # noqa: F811
    result = in_process(build_tfds.main, argv(videos / "train.json", tmp_path / "nope", tmp_path / "out"), capsys)
    assert_user_error(result, 1, "--media-root", str(tmp_path / "nope"))
    assert not (tmp_path / "out").exists()
    result = in_process(build_tfds.main, argv(videos / "train.json", videos, tmp_path / "out"), capsys)
    assert result.code == 0 and "1 of 4 media" in caplog.text  # media/nope.mp4: a warning, the rest builds
    assert len(TfdsSource(tmp_path / "out")) == 4


def test_a_photo_posing_as_a_video_is_stored_encoded_not_a_crash(videos, tmp_path):  # noqa: F811
    root = tmp_path / "set"
    shutil.copytree(videos / "media", root / "media")
    write_png_with_icc(root / "media" / "photo.mp4")
    turns = json.loads((videos / "train.json").read_text())[0]["conversations"]
    (root / "train.json").write_text(json.dumps([{"id": n, "video": f"media/{n}.mp4", "conversations": turns}
                                                 for n in ("0", "photo")]))
    result = subprocess_cli("data_pipelines.build_tfds", *argv(root / "train.json", root, tmp_path / "out",
                                                               "--video-frames", "8"))
    assert result.code == 0, result.err[-2000:]
    assert "still image" in result.err and "Traceback" not in result.err
    assert TfdsSource(tmp_path / "out")[1]["frames"] is None  # kept encoded: training skips it, counted
