"""`python -m vllava_jax.generate`: a user's mistakes end in one `error:` line (vllava_jax/cli.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

import vllava_jax
from tests.cli_run import assert_user_error, in_process, subprocess_cli
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from vllava_jax import generate


def write_png_with_icc(path) -> None:
    """A photo as phones save it: PNG with an ICC profile (PyAV 18 crashed on its side data)."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path, format="PNG", icc_profile=icc)


def test_a_photo_given_as_a_video_is_an_error_not_a_segfault(checkpoint, tmp_path):  # noqa: F811
    model, _ = checkpoint
    photo = tmp_path / "photo.mp4"  # a renamed PNG, as found in eval sets
    write_png_with_icc(photo)
    result = subprocess_cli("vllava_jax.generate", "--model", model, "--video", photo, "--prompt", "What?",
                            "--max-new-tokens", "2")
    assert_user_error(result, 1, str(photo), "still image")


@pytest.mark.parametrize("flags, named", [
    (["--temperature", "-0.01"], "--temperature"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--top-p", "0"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--max-new-tokens", "many"], "--max-new-tokens"),
])
def test_bad_flag_values_exit_2_naming_the_flag(checkpoint, capsys, flags, named):  # noqa: F811
    model, clip = checkpoint
    result = in_process(generate.main, ["--model", model, "--video", clip, "--prompt", "Hi", *flags], capsys)
    assert_user_error(result, 2, named)


def test_inputs_are_checked_before_the_model_loads(checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    model, clip = checkpoint
    monkeypatch.setattr(vllava_jax, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    for argv, code, named in [
        (["--model", tmp_path / "nope", "--video", clip], 1, "nope"),
        (["--model", model, "--video", tmp_path / "missing.mp4"], 1, "missing.mp4"),
        (["--model", model, "--image", tmp_path / "missing.jpg"], 1, "missing.jpg"),
        (["--model", model, "--video", clip, "--video", clip, "--prompt", "<video> what?"], 1, "--video"),
    ]:
        prompt = [] if "--prompt" in argv else ["--prompt", "What?"]
        assert_user_error(in_process(generate.main, [*argv, *prompt], capsys), code, named)


def test_a_prompt_with_its_own_placeholder_is_used_as_written(checkpoint, capsys):  # noqa: F811
    model, clip = checkpoint
    result = in_process(generate.main, ["--model", model, "--video", clip, "--prompt", "<video> what happens?",
                                        "--max-new-tokens", "3"], capsys)
    assert result.code == 0, result.err


def test_context_overflow_is_one_line_and_chat_keeps_the_conversation(checkpoint, capsys, monkeypatch):  # noqa: F811
    model, clip = checkpoint
    long = " ".join(["word"] * 1100)  # 4,401 tokens: the checkpoint has 4,096 positions
    result = in_process(generate.main, ["--model", model, "--video", clip, "--prompt", long], capsys)
    assert_user_error(result, 1, "exceeds the context")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"What happens?\n{long}\nAnd then?\n\n"))
    result = in_process(generate.main, ["--model", model, "--video", clip, "--chat", "--max-new-tokens", "2"], capsys)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "this turn was dropped" in assert_error_line(result.err)
    assert result.out.count("ASSISTANT: ") == 3  # the turn after the failed one is still answered


def assert_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_help_shows_defaults_and_exits_0(capsys):
    result = in_process(generate.main, ["--help"], capsys)
    assert result.code == 0
    assert "(default: 256)" in result.out and "--debug" in result.out
