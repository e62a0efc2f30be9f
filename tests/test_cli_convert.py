"""`python -m vllava_jax.convert`: a user's mistakes end in one `error:` line and never delete their files."""

from __future__ import annotations

import json
import shutil

import pytest

import vllava_jax
from tests import oracle
from tests.cli_run import assert_user_error, in_process, subprocess_cli
from vllava_jax import convert
from vllava_jax.checkpoint import safetensors_io


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("convert_cli") / "hf"
    oracle.save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def ours_dir(hf_dir):
    path = hf_dir.parent / "ours"
    assert convert.main(["--src", str(hf_dir), "--dst", str(path)]) == 0
    return path


def test_force_never_deletes_the_source_or_other_files(tmp_path, hf_dir, capsys):
    parent = tmp_path / "parent"
    src = parent / "src"
    shutil.copytree(hf_dir, src)
    (parent / "notes.txt").write_text("mine")
    before = sorted(p.name for p in src.iterdir())
    result = in_process(convert.main, ["--src", src, "--dst", parent, "--force"], capsys)
    assert_user_error(result, 1, f"--dst {parent}", "source")
    result = in_process(convert.main, ["--src", src, "--dst", src, "--force"], capsys)
    assert_user_error(result, 1, f"--dst {src}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    result = in_process(convert.main, ["--src", src, "--dst", other, "--force"], capsys)
    assert_user_error(result, 1, f"--dst {other}", "thesis.tex")
    assert sorted(p.name for p in src.iterdir()) == before
    assert (parent / "notes.txt").read_text() == "mine" and (other / "thesis.tex").read_text() == "mine"
    assert in_process(convert.main, ["--src", src, "--dst", parent / "out"], capsys).code == 0
    assert in_process(convert.main, ["--src", src, "--dst", parent / "out", "--force"], capsys).code == 0
    assert vllava_jax.load_pretrained(parent / "out").config == vllava_jax.load_pretrained(src).config


def test_dst_under_a_file_names_the_flag(tmp_path, hf_dir, capsys):
    (tmp_path / "file").write_text("x")
    result = in_process(convert.main, ["--src", hf_dir, "--dst", tmp_path / "file" / "out"], capsys)
    assert_user_error(result, 1, "--dst", "is a file")
    assert (tmp_path / "file").read_text() == "x"


def test_relative_and_corrupt_orbax_checkpoints(tmp_path, ours_dir, capsys, monkeypatch):
    monkeypatch.chdir(ours_dir.parent)
    assert in_process(convert.main, ["--src", "ours", "--dst", tmp_path / "hf", "--to", "hf"], capsys).code == 0
    broken = tmp_path / "no_metadata"
    shutil.copytree(ours_dir, broken)
    (broken / "params" / "_METADATA").unlink()
    result = in_process(convert.main, ["--src", broken, "--dst", tmp_path / "out", "--to", "hf"], capsys)
    assert_user_error(result, 1, str(broken / "params"), "not a readable Orbax checkpoint")
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_fails_before_writing(tmp_path, hf_dir):
    src = tmp_path / "hf"
    src.mkdir()
    for f in hf_dir.iterdir():
        data = f.read_bytes()
        (src / f.name).write_bytes(data[: len(data) * 3 // 4] if f.name == "model.safetensors" else data)
    result = subprocess_cli("vllava_jax.convert", "--src", src, "--dst", tmp_path / "out")
    assert_user_error(result, 1, "model.safetensors", "truncated")
    assert "Event loop" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no .out.partial left behind


def test_ctrl_c_is_one_line_and_the_rerun_completes(tmp_path, hf_dir, capsys, monkeypatch):
    read, calls = safetensors_io.SafetensorsReader.read, [0]

    def interrupted_read(self, name):
        calls[0] += 1
        if calls[0] == 30:
            raise KeyboardInterrupt
        return read(self, name)

    monkeypatch.setattr(safetensors_io.SafetensorsReader, "read", interrupted_read)
    result = in_process(convert.main, ["--src", hf_dir, "--dst", tmp_path / "ours"], capsys, resumable=True)
    assert result.code == 130 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert not (tmp_path / "ours").exists()
    monkeypatch.setattr(safetensors_io.SafetensorsReader, "read", read)
    assert in_process(convert.main, ["--src", hf_dir, "--dst", tmp_path / "ours"], capsys).code == 0


def test_config_json_edits_are_named(tmp_path, hf_dir, capsys):
    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    original = json.loads((src / "config.json").read_text())
    edits = [(lambda c: c.pop("image_token_index"), "image_token_index"),
             (lambda c: c["text_config"].update(hidden_size="96"), "text_config.hidden_size"),
             (lambda c: c["vision_config"].update(patch_size=1.5), "vision_config.patch_size")]
    for edit, named in edits:
        config = json.loads(json.dumps(original))
        edit(config)
        (src / "config.json").write_text(json.dumps(config))
        result = in_process(convert.main, ["--src", src, "--dst", tmp_path / "out"], capsys)
        assert_user_error(result, 1, str(src / "config.json"), named)
        assert not (tmp_path / "out").exists()
