"""JSON files a user hands us (configs, annotations, adapters, tokenizer files), read so that a
missing or malformed one is reported as the package's own error naming the file, never a traceback."""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from vllava_jax.errors import VllavaError


def parse_json(text: str, where: str, error: type[VllavaError]) -> Any:
    """`text` decoded; invalid JSON raises `error` naming `where` (a file, or a file and line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e})") from None


def read_json(path: epath.PathLike, error: type[VllavaError], missing: str = "no such file") -> Any:
    """The JSON document in `path`; a missing file raises `error` as "<path>: <missing>"."""
    path = epath.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    return parse_json(text, str(path), error)
