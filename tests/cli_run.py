"""Run a CLI as a user does and check how it reports a mistake (vllava_jax/cli.py's contract)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import pytest

from vllava_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def in_process(main, argv, capsys, resumable: bool = False) -> Result:
    """`cli.run(main, argv)` here (no interpreter start-up): its exit code and captured output."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.run(main, [str(a) for a in argv], resumable=resumable)
    captured = capsys.readouterr()
    return Result(info.value.code or 0, captured.out, captured.err)


def subprocess_cli(module: str, *argv, stdin: str | None = None, timeout: float = 300) -> Result:
    """`python -m module argv...` in a fresh process, as a user types it."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop(cli.DEBUG_ENV, None)
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                          input=stdin, env=env, cwd=ROOT, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(result: Result, code: int, *names: str) -> str:
    """Exit `code` (not a signal), exactly one `error:` line naming each of `names`, no traceback."""
    assert result.code >= 0, f"killed by {signal.Signals(-result.code).name}: {result.err[-2000:]}"
    assert result.code == code, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err[-2000:]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]
