"""The one way every command-line tool reports a user's mistake.

    from vllava_jax import cli

    def parser() -> cli.ArgumentParser:          # argparse.ArgumentParser whose errors raise UsageError
        ...

    def main(argv=None) -> int | None: ...       # raises VllavaError for bad input

    if __name__ == "__main__":
        cli.run(main, resumable=True)

`run` calls `main` and turns what a user can cause into one line on stderr and an exit code:

- `UsageError` (a bad flag or flag value; `ArgumentParser.error` raises it): `error: <msg>`, exit 2;
- any other `VllavaError` (a missing file, a bad checkpoint, a corrupt video...): `error: <msg>`, exit 1;
- Ctrl-C: `interrupted; rerun the same command to resume` for tools that resume (`resumable=True`),
  else `interrupted`, exit 130.

A traceback is printed only when asked for, with `--debug` on the command line or `VLLAVA_DEBUG=1`
in the environment; anything else (a bug of ours) keeps Python's traceback. `--debug` is taken out of
the arguments before `main` sees them, so tools need not declare it (`ArgumentParser` lists it in
`--help`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, NoReturn, Sequence

from etils import epath

from vllava_jax.errors import UsageError, VllavaError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "VLLAVA_DEBUG"
EXIT_BAD_INPUT = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help, `--debug` listed, and errors raised as `UsageError`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help=f"on an error, print the traceback too "
                          f"(or set {DEBUG_ENV}=1)")

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        parsed.__dict__.pop("debug", None)  # `run` reads it from argv; callers never see it
        return parsed, rest

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default."""


def parse_config_flags(parse: Callable[[], object], read_config: Callable[[], object], prog: str) -> None:
    """`parse()` (absl parsing flags that include an ml_collections `--config` file) then
    `read_config()` (the config, or None when not given; a file that failed to load stands in as an
    object that raises when first used), their mistakes raised as one `UsageError`: a flag absl
    refuses, a config file that does not load (missing, not Python), a file without a usable
    `get_config` or a `--config.key=value` override that does not fit it."""
    from absl import flags

    try:
        parse()
        config = read_config()
        if config is not None:
            config.keys()
    except flags.Error as e:
        raise UsageError(f"{e} (see {prog} --help)") from None
    except (OSError, SyntaxError) as e:
        raise UsageError(f"--config does not load: {' '.join(str(e).split())}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"--config has no usable get_config, or a --config.key=value override does not fit "
                         f"it ({type(e).__name__}: {e})") from None


def make_output_dir(path: epath.PathLike, flag: str) -> epath.Path:
    """Create an output dir (and its parents), or fail naming `flag` when the path cannot be one.

    A local path comes back absolute (Orbax takes only absolute ones); a remote one (gs://) as given.
    """
    if "://" in str(path):
        path = epath.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = epath.Path(os.path.abspath(path))
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{flag} {path}: {blocker} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UsageError(f"{flag} {path}: permission denied; pick a directory you can write") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable; pick a directory you can write")
    return path


def debugging(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
        resumable: bool = False) -> NoReturn:
    """Run a CLI's `main(argv)` and exit: its return code (0 for None), or as the module docstring says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted; rerun the same command to resume" if resumable else "interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except VllavaError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_ARGUMENTS if isinstance(e, UsageError) else EXIT_BAD_INPUT
    sys.stdout.flush()
    sys.exit(code or 0)
