"""vllava_jax/cli.py, the one way every CLI reports a user's mistake, and the demo's arguments."""

from __future__ import annotations

import pytest

from tests.cli_run import assert_user_error, in_process
from vllava_jax import cli, demo
from vllava_jax.errors import ConfigError


def failing(argv):
    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    raise ConfigError(f"config.json: bad count {args.count}")


def test_bad_input_exits_1_with_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    assert_user_error(in_process(failing, ["--count", "3"], capsys), 1, "config.json: bad count 3")
    result = in_process(failing, ["--count", "3", "--debug"], capsys)
    assert result.code == 1 and "Traceback" in result.err and "error: config.json" in result.err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert "Traceback" in in_process(failing, [], capsys).err


def test_bad_arguments_exit_2_naming_the_flag(capsys):
    assert_user_error(in_process(failing, ["--count", "many"], capsys), 2, "--count", "tool --help")
    assert_user_error(in_process(failing, ["--cuont", "3"], capsys), 2, "--cuont")


def test_ctrl_c_is_one_line_exit_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    result = in_process(interrupted, [], capsys)
    assert (result.code, result.err) == (130, "interrupted\n")
    result = in_process(interrupted, [], capsys, resumable=True)
    assert (result.code, result.err) == (130, "interrupted; rerun the same command to resume\n")


def test_a_bug_keeps_its_traceback(capsys):
    def buggy(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        cli.run(buggy, [])


def test_demo_arguments(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert_user_error(in_process(demo.main, ["--workdir", tmp_path / "file"], capsys), 2, "--workdir", "file")
    assert_user_error(in_process(demo.main, ["--workdir", tmp_path / "d", "--stage1-steps", "0"], capsys), 2,
                      "--stage1-steps")
    assert (tmp_path / "file").read_text() == "x"
